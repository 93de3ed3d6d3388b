"""Out-of-sample check of a table: random whole subnets measured end to end against the prediction.

Each subnet is measured twice in the same interleaved run (the repeatability floor: an error below it
cannot be seen on this machine), and its blocks are re-measured beside it, so the report separates
the predictor's own error (same-window) from the drift since the table was built (stored table).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import NothingToValidateError
from deploy.executors.base import Executor
from deploy.executors.local import LocalExecutor
from deploy.families.base import Supernet
from deploy.io import atomic_write_json
from deploy.latency.build import block_identity, null_measurable, subnet_identity
from deploy.latency.drift import current_correction
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import LatencyTable, Validation, now_iso
from deploy.progress import Progress, ProgressTask
from deploy.search.space import SubnetConfig
from deploy.targets import Target

VALIDATION_SEED = 12345


@dataclass(frozen=True)
class SampleRow:
    subnet_id: str
    config: dict[str, Any]
    predicted_ms: float
    measured_ms: float
    measured_again_ms: float
    measured_cv: float
    pct_error: float  # (predicted − measured) / measured · 100, stored table
    same_window_pct_error: float  # blocks re-measured beside the subnet
    block_sum_pct_error: float = 0.0  # the table's raw block sum, no calibration (fused runtimes: far off)
    corrected_predicted_ms: float | None = None  # what a deploy predicts: × the drift correction (drift.py)
    corrected_pct_error: float | None = None


@dataclass(frozen=True)
class ValidationReport:
    target: str
    samples: int
    seed: int
    date: str
    host: str
    median_abs_pct_error: float
    within_5pct: float
    within_10pct: float
    p90_abs_pct_error: float
    worst_pct_error: float
    same_window_median_abs_pct_error: float
    repeatability_pct: float
    drift_pct: float  # median over blocks of (now − table) / table: how the machine's speed moved
    block_sum_median_pct_error: float = 0.0  # signed: what the whole-subnet calibration corrects
    rows: tuple[SampleRow, ...] = field(default=())
    # The headline figures above are for the predictions a deploy would make (drift-corrected, drift.py);
    # the table's own, uncorrected, are here beside them, with the correction and the check behind it.
    uncorrected: dict[str, float] = field(default_factory=dict)
    correction: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [asdict(r) for r in self.rows]
        return data

    def to_validation(self) -> Validation:
        return Validation(
            date=self.date,
            n_samples=self.samples,
            seed=self.seed,
            median_abs_pct_error=self.median_abs_pct_error,
            within_5pct=self.within_5pct,
            within_10pct=self.within_10pct,
            p90_abs_pct_error=self.p90_abs_pct_error,
            worst_pct_error=self.worst_pct_error,
            same_window_median_abs_pct_error=self.same_window_median_abs_pct_error,
            repeatability_pct=self.repeatability_pct,
            drift_pct=self.drift_pct,
            block_sum_median_pct_error=self.block_sum_median_pct_error,
            host=self.host,
            correction_factor=self.correction.get("factor", 1.0),
            uncorrected_median_abs_pct_error=self.uncorrected.get("median_abs_pct_error"),
            uncorrected_p90_abs_pct_error=self.uncorrected.get("p90_abs_pct_error"),
        )


def validation_configs(supernet: Supernet, table: LatencyTable, n: int, seed: int) -> list[SubnetConfig]:
    """n distinct random subnets that the calibration was not fitted on (an LM sample's id is `<subnet>:<regime>@n`)."""
    fitted = {s.subnet_id.split(":")[0] for s in (table.calibration.samples if table.calibration else [])}
    return unseen_configs(supernet, fitted, n, seed)


def unseen_configs(supernet: Supernet, seen: set[str], n: int, seed: int) -> list[SubnetConfig]:
    """n distinct random subnets whose ids are not in `seen`."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, SubnetConfig] = {}
    for _ in range(50 * n):  # bounded: a tiny space may run out of unseen subnets
        if len(chosen) >= n:
            break
        config = supernet.sample(rng)
        if config.id not in seen:
            chosen.setdefault(config.id, config)
    return list(chosen.values())


def summarize(errors: Sequence[float]) -> dict[str, float]:
    err = np.abs(np.asarray(errors, dtype=float))
    return {
        "median_abs_pct_error": float(np.median(err)),
        "within_5pct": float(np.mean(err <= 5.0)),
        "within_10pct": float(np.mean(err <= 10.0)),
        "p90_abs_pct_error": float(np.percentile(err, 90)),
        "worst_pct_error": float(err.max()),
    }


# Over ~80 lines: the measuring loop and the report's figures share one window's state (split, they
# would pass it around).
def validate_table(
    target: Target,
    supernet: Supernet,
    *,
    samples: int,
    seed: int = VALIDATION_SEED,
    cache_dir: Path | None = None,
    json_path: Path | None = None,
    write_back: bool = True,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> ValidationReport:
    """Measure `samples` unseen subnets and their blocks in one window, on one device of the target (with
    the Ray executor: in that device's actor, wherever the cluster runs it)."""
    table = LatencyTable.load(target.table_path, target.name)
    table.require_calibration()
    predictor = LatencyPredictor(table)
    predictor.require(supernet.all_blocks())
    session = (executor or LocalExecutor()).session(target, cache_dir)
    # drift (deploy/latency/drift.py): the check a deploy makes first; its correction is what a deploy predicts with
    correction = current_correction(target, table, supernet, session=session, cache_dir=cache_dir)
    configs = validation_configs(supernet, table, samples, seed)
    if len(configs) < 2:
        raise NothingToValidateError(
            f"{supernet.variant} has {len(configs)} subnet(s) the calibration of {target.name} did not use "
            f"({supernet.space().size()} in its space); lower measurement.calibration_subnets in "
            f"targets/{target.name}.yaml and rebuild, or validate on a larger variant"
        )
    keys = sorted({k for c in configs for k in supernet.blocks(c)})

    task = ProgressTask(progress, "validation", len(configs) + len(keys), description="exporting subnets and blocks")
    subnet_items = []
    for config in configs:
        subnet_items.append(
            session.compile(
                supernet.extract(config),
                supernet.example_inputs(),
                subnet_identity(supernet, config),
                supernet.input_names(),
            )
        )
        task.advance()
    block_items = []
    for key in keys:
        module, example = supernet.measurable_block(key)
        block_items.append(session.compile(module, example, block_identity(key)))
        task.advance()
    task.describe("measuring subnets (twice each) and blocks interleaved")
    # Each subnet appears twice: two independent measurements in one run give the repeatability.
    *stats, null = session.measure(subnet_items + subnet_items + block_items + [null_measurable(session)])

    n = len(configs)
    first, second, window = stats[:n], stats[n : 2 * n], dict(zip(keys, stats[2 * n :], strict=True))
    cal = table.calibration
    rows = []
    for config, a, b in zip(configs, first, second, strict=True):
        blocks = supernet.blocks(config)
        predicted = predictor.predict(blocks, supernet.family).ms
        window_sum = sum(window[k].median_ms for k in blocks)
        # Same window: the blocks and the per-call overhead as they are now (the overhead is the machine's).
        same_window = cal.apply(window_sum, len(blocks), supernet.family, null.median_ms) if cal else window_sum
        measured = float(np.median([a.median_ms, b.median_ms]))
        raw_sum = predictor.block_sum(blocks)
        corrected = predicted * correction.factor
        rows.append(
            SampleRow(
                subnet_id=config.id,
                config=config.to_json(),
                predicted_ms=predicted,
                measured_ms=a.median_ms,
                measured_again_ms=b.median_ms,
                measured_cv=a.cv,
                pct_error=(predicted - measured) / measured * 100,
                same_window_pct_error=(same_window - measured) / measured * 100,
                block_sum_pct_error=(raw_sum - measured) / measured * 100,
                corrected_predicted_ms=corrected,
                corrected_pct_error=(corrected - measured) / measured * 100,
            )
        )
    repeat = [
        abs(r.measured_ms - r.measured_again_ms) / ((r.measured_ms + r.measured_again_ms) / 2) * 100 for r in rows
    ]
    summary = summarize([r.corrected_pct_error for r in rows])  # type: ignore[misc]
    stored = predictor.table.index()
    drift = float(np.median([(window[k].median_ms - stored[k].median_ms) / stored[k].median_ms for k in keys]) * 100)
    report = ValidationReport(
        target=target.name,
        samples=n,
        seed=seed,
        date=now_iso(),
        host=session.runner.describe(),
        same_window_median_abs_pct_error=summarize([r.same_window_pct_error for r in rows])["median_abs_pct_error"],
        repeatability_pct=float(np.median(repeat)),
        drift_pct=drift,
        block_sum_median_pct_error=float(np.median([r.block_sum_pct_error for r in rows])),
        rows=tuple(rows),
        uncorrected=summarize([r.pct_error for r in rows]),
        correction=correction.to_json(),
        **summary,
    )
    if json_path is not None:
        atomic_write_json(json_path, report.to_json())
    if write_back:  # per family; the default model's figures are also the table's headline
        table.validations[supernet.family] = report.to_validation()
        if supernet.variant == target.model:
            table.validation = report.to_validation()
        table.save(target.table_write_path)
    return report
