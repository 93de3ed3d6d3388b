"""Elastic precision (the EQ-Net idea): the selector picks a (subnet, precision) pair, not a subnet.

For each precision a target lists, the best subnet is selected under that precision's own latency
table; each candidate is then compiled at its precision and the artifact's accuracy is measured for
real (validation split: it decides; test split: it is reported). A precision that loses more than
the target's `max_accuracy_drop_pp` against the same subnet in fp32 torch is rejected; of the rest,
the most accurate artifact wins (then the faster one).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.backends import get_backend
from deploy.errors import NoFeasibleSubnetError
from deploy.export import hub
from deploy.export.check import artifact_metric
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import LatencyTable, safety_margin_pct
from deploy.search.select import Constraints, Selection, select

if TYPE_CHECKING:
    from collections.abc import Mapping

    from deploy.accuracy.model import AccuracyModel
    from deploy.families.base import Supernet
    from deploy.latency.drift import Correction
    from deploy.models.checkpoint import CheckpointInfo
    from deploy.search.space import SubnetConfig
    from deploy.targets import Target
    from deploy.tasks.base import Task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrecisionOption:
    precision: str
    table: LatencyTable | None
    margin_pct: float
    selection: Selection | None
    artifact_val: float | None = None  # the compiled artifact's own accuracy at this precision
    artifact_test: float | None = None
    rejected: str | None = None

    direction: str = "higher"
    percent: bool = True

    @property
    def drop_pp(self) -> float | None:
        """How much worse the artifact scores than the torch subnet (pp for a percentage; <0: better)."""
        if self.artifact_val is None or self.selection is None:
            return None
        sign = 1.0 if self.direction == "higher" else -1.0
        return sign * (self.selection.choice.accuracy - self.artifact_val) * (100 if self.percent else 1)

    def to_json(self) -> dict[str, Any]:
        c = self.selection.choice if self.selection else None
        return {
            "precision": self.precision,
            "subnet": None if c is None else c.config.id,
            "predicted_ms": None if c is None else c.latency_ms,
            "torch_val_accuracy": None if c is None else c.accuracy,
            "artifact_val_accuracy": self.artifact_val,
            "artifact_test_accuracy": self.artifact_test,
            "accuracy_drop_pp": self.drop_pp,
            "table_method": None if self.table is None else self.table.provenance.method,
            "rejected": self.rejected,
        }


def select_at(
    target: Target, supernet: Supernet, accuracy: AccuracyModel, correction: Correction | None = None
) -> PrecisionOption:
    """The best subnet under `target`'s budget, with the latency table of the target's precision; `correction`
    (deploy/latency/drift.py) rescales its predictions where the device's speed moved since the table."""
    table = LatencyTable.load(target.table_path, target.name)
    table.require_calibration()  # raw block sums would pick another subnet with no word
    predictor = LatencyPredictor(table, correction.factor if correction is not None else 1.0)
    predictor.require(supernet.all_blocks())
    margin = safety_margin_pct(table, supernet.family)
    validation = table.validation_for(supernet.family)
    if (correction is None or not correction.checked) and validation and validation.uncorrected_p90_abs_pct_error:
        margin = max(margin, validation.uncorrected_p90_abs_pct_error)  # no drift check: the table's own error
    if margin >= 100:  # no budget survives it: say why instead of selecting under a negative budget
        raise NoFeasibleSubnetError(
            f"{target.name}: the {target.table_file} table's validated error for {supernet.family} is {margin:.0f}% "
            "without a drift check, so no subnet can be promised within the budget; deploy with measuring on (the "
            "drift check corrects for this machine) or rebuild the table here "
            f"(`make latency-tables TARGET={target.name}`)"
        )
    constraints = Constraints(budget_ms=target.budget_ms, margin_pct=margin, max_params=target.max_params)

    def latency(config: SubnetConfig) -> tuple[float, float]:
        p = predictor.predict(supernet.blocks(config), supernet.family)
        return p.ms, p.std_ms

    metric = accuracy.oracle.task.metric
    selection = select(
        supernet.space(),
        latency,
        accuracy.surrogate,
        constraints,
        params=supernet.param_count,
        exact_accuracy=accuracy.exact,
        known_accuracy=accuracy.known,
        direction=metric.direction,
    )
    return PrecisionOption(
        target.precision, table, margin, selection, direction=metric.direction, percent=metric.percent
    )


def measure_option(
    option: PrecisionOption,
    target: Target,
    supernet: Supernet,
    ckpt: CheckpointInfo,
    task: Task,
    calibration: Any,
    cache_dir: Path | None,
) -> PrecisionOption:
    """Compile the option's subnet at its precision and measure the artifact's val and test metric."""
    assert option.selection is not None
    backend = get_backend(target.backend)
    config = option.selection.choice.config
    entry = hub.export_subnet(supernet, config, ckpt.sha256, cache_dir)
    with tempfile.TemporaryDirectory(prefix="precision-") as tmp:
        artifact = backend.compile(entry, target.at_precision(option.precision), Path(tmp), calibration=calibration)
        val = artifact_metric(backend, artifact, task, task.split("val"))
        test = artifact_metric(backend, artifact, task, task.split("test"))
    measured = replace(option, artifact_val=val, artifact_test=test)
    drop = measured.drop_pp or 0.0
    rejected = (
        f"loses {drop:.2f} {task.metric.unit} of val {task.metric.name} > max_accuracy_drop_pp "
        f"{target.max_accuracy_drop_pp}"
        if drop > target.max_accuracy_drop_pp
        else None
    )
    return replace(measured, rejected=rejected)


def choose_precision(
    target: Target,
    supernet: Supernet,
    ckpt: CheckpointInfo,
    accuracy: AccuracyModel,
    calibration: Any,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = log.info,
    corrections: Mapping[str, Correction] | None = None,
) -> tuple[PrecisionOption, list[PrecisionOption]]:
    """(chosen option, every option considered). A single-precision target selects as before. `corrections`:
    per precision, the drift correction of its table's predictions (deploy/latency/drift.py)."""
    precisions = target.search_precisions
    corrections = corrections or {}
    if len(precisions) == 1:
        option = select_at(target, supernet, accuracy, corrections.get(target.precision))
        return option, [option]
    options: list[PrecisionOption] = []
    for p in precisions:
        try:
            option = select_at(target.at_precision(p), supernet, accuracy, corrections.get(p))
        except NoFeasibleSubnetError as exc:
            options.append(PrecisionOption(p, None, 0.0, None, rejected=f"no subnet fits: {exc}"))
            continue
        reason = get_backend(target.backend).runs_here()
        if reason is None:
            option = measure_option(option, target, supernet, ckpt, accuracy.oracle.task, calibration, cache_dir)
        options.append(option)
        c = option.selection.choice  # type: ignore[union-attr]
        fmt = accuracy.oracle.task.metric.format
        say(
            f"  {p:>12}: {c.config.id} predicted {c.latency_ms:.3f} ms, torch val {fmt(c.accuracy)}"
            + (
                f", artifact val {fmt(option.artifact_val)} ({-option.drop_pp:+.2f} {accuracy.oracle.task.metric.unit})"
                if option.drop_pp is not None and option.artifact_val is not None
                else ""
            )
            + (f" — rejected: {option.rejected}" if option.rejected else "")
        )
    usable = [o for o in options if o.rejected is None and o.selection is not None]
    if not usable:
        raise NoFeasibleSubnetError(
            f"no precision of {target.name} is usable: "
            + "; ".join(f"{o.precision}: {o.rejected}" for o in options)
            + f". Raise budget_ms or max_accuracy_drop_pp in targets/{target.name}.yaml"
        )

    sign = accuracy.oracle.task.metric.sign

    def score(o: PrecisionOption) -> tuple[float, float]:
        acc = o.artifact_val if o.artifact_val is not None else o.selection.choice.accuracy  # type: ignore[union-attr]
        return (sign * acc, -o.selection.choice.latency_ms)  # type: ignore[union-attr]

    return max(usable, key=score), options
