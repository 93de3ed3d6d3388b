"""Drift: notice that the device's speed moved since its table was measured, and correct for it.

A table's blocks, measured in the same window as whole subnets, predict them closely even when the
device as a whole has changed speed since (docs/targets-and-tables.md, "What limits the predictions"). So
whatever can measure on the target first times a few of the table's own blocks (seconds) and compares:

- **Drift check** (`check_drift`): REFERENCE_BLOCKS blocks spread over the table's latencies, interleaved
  with the one-op null model the calibration uses, in two passes seconds apart (a burst of load that
  covers one pass shows as poor repeatability, not as drift). A block's ratio is its figure
  now over the table's, both net of the per-call overhead (now: the null model; the table's: its
  calibration's); the drift factor is the median ratio. A TRANSFERRED table's entries are scaled to fit
  whole subnets, so its baseline is the blocks the transfer timed on the device (`device_baseline`). It is
  *beyond* when |factor − 1| > max(the table's error for the family, 2 × this check's repeatability), the
  error being its validation's same-window median error (else the calibration fit's;
  `deploy.latency.predictor.table_error_pct`): a move the table's own error or the measurement's noise
  could explain is left alone. Beyond, predictions are multiplied by the factor:
  `Prediction.correction`, never a change to the table file.
- **Correction** (`current_correction`, `deploy_corrections`): the drift factor × the calibration's scale
  refitted on recent observations of deployed artifacts (deploy/latency/observations.py).

What uses them: a deploy settles its measured artifact (deploy/flows/settle.py), a bench gates on the
corrected prediction (deploy/flows/bench_drift.py), a long build re-times reference blocks between its
blocks (deploy/latency/build_guard.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.backends import get_backend
from deploy.errors import BackendUnavailableError, RunnerError
from deploy.latency.build import block_identity, null_measurable
from deploy.latency.observations import ObservedScale, observed_scale
from deploy.latency.predictor import table_error_pct
from deploy.latency.session import MeasureSession
from deploy.latency.table import LatencyTable, now_iso

if TYPE_CHECKING:
    from deploy.families.base import BlockKey, Supernet
    from deploy.targets import Target

log = logging.getLogger(__name__)

REFERENCE_BLOCKS = 4
DRIFT_PASS_GAP_S = 2.0  # between the drift check's two passes over its reference blocks


# --- the drift check --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceBlock:
    block: str
    table_ms: float
    measured_ms: float
    measured_again_ms: float
    ratio: float  # (mean of the two − overhead now) / (table − table's overhead)


@dataclass(frozen=True)
class DriftCheck:
    """Reference blocks timed now against the table's entries (see the module docstring)."""

    target: str
    precision: str
    date: str
    where: str
    blocks: tuple[ReferenceBlock, ...]
    factor: float  # median ratio now / table
    repeatability_pct: float  # median |a − b| / mean of each block over the check's two passes, seconds apart
    table_error_pct: float  # the table's shape error for the family (validation's same-window, else expected)
    threshold_pct: float  # max(table_error_pct, 2 × repeatability_pct)
    call_overhead_ms: float  # the null model now
    table_call_overhead_ms: float

    @property
    def drift_pct(self) -> float:
        return (self.factor - 1) * 100

    @property
    def beyond(self) -> bool:
        return abs(self.drift_pct) > self.threshold_pct

    @property
    def applied_factor(self) -> float:
        return self.factor if self.beyond else 1.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(drift_pct=self.drift_pct, beyond=self.beyond, applied_factor=self.applied_factor)
        return data

    def message(self) -> str:
        head = (
            f"drift check on {self.where}: {len(self.blocks)} reference blocks ran {self.drift_pct:+.1f}% vs the "
            f"{self.target} table"
            + (f" ({self.precision})" if self.precision else "")
            + f" (table error {self.table_error_pct:.1f}%, repeatability {self.repeatability_pct:.1f}%)"
        )
        if self.beyond:
            return f"{head}: beyond {self.threshold_pct:.1f}%, so predictions are rescaled ×{self.factor:.3f}"
        return f"{head}: within {self.threshold_pct:.1f}%, predictions as the table says"


def device_baseline(table: LatencyTable, keys: Sequence[BlockKey]) -> tuple[dict[BlockKey, float], float]:
    """The blocks of `keys` the table knows as measured on its device, and that device's per-call overhead.

    A measured (or estimated) table: its entries and its calibration's overhead. A TRANSFERRED one: the
    blocks the transfer timed on the device and its null model there; its entries are source figures
    scaled to fit whole subnets, not what a block measures on the device, so they are no baseline."""
    record = table.provenance.transfer
    if table.provenance.method == "transferred" and record is not None:
        by_name = {str(k): k for k in keys}
        measured = {by_name[b.block]: b.measured_ms for b in record.blocks if b.block in by_name}
        return measured, record.call_overhead_ms
    index = table.index()
    overhead = table.calibration.call_overhead_ms if table.calibration is not None else 0.0
    return {k: index[k].median_ms for k in keys if k in index}, overhead


def reference_blocks(baseline: Mapping[BlockKey, float], n: int = REFERENCE_BLOCKS) -> list[BlockKey]:
    """n of the baseline's blocks, spread evenly over their latencies (smallest to largest)."""
    held = sorted(baseline, key=lambda k: (baseline[k], str(k)))
    if len(held) <= n:
        return held
    picks = np.linspace(0, len(held) - 1, n).round().astype(int)
    return [held[i] for i in dict.fromkeys(int(i) for i in picks)]


def _net(ms: float, overhead: float) -> float:
    net = ms - overhead
    return net if net > 0.05 * ms else ms  # an overhead near the block's own time: compare raw figures


def check_drift(
    session: MeasureSession,
    table: LatencyTable,
    supernet: Supernet,
    *,
    n_blocks: int = REFERENCE_BLOCKS,
    keys: Sequence[BlockKey] | None = None,
) -> DriftCheck:
    """Time `n_blocks` reference blocks and the null model on the session's device, interleaved, in two passes
    `DRIFT_PASS_GAP_S` apart (their agreement is the check's repeatability). The blocks are drawn from `keys`
    (default: every block the supernet can produce; a language model's table holds its blocks per length)."""
    baseline, table_overhead = device_baseline(table, keys if keys is not None else supernet.all_blocks())
    keys = reference_blocks(baseline, n_blocks)
    if not keys:
        what = "blocks measured on its device" if table.provenance.method == "transferred" else "blocks"
        raise RunnerError(f"the {table.provenance.target} table holds none of {supernet.variant}'s {what}")
    items = []
    for key in keys:
        module, example = supernet.measurable_block(key)
        items.append(session.compile(module, example, block_identity(key)))
    # Two passes apart in time, not one interleaved call: a burst of load lasting the seconds of one pass
    # (docs/targets-and-tables.md, "What limits the predictions") shows as poor repeatability, which raises
    # the threshold, instead of as a drift every prediction is scaled by. The check states its repeatability
    # itself, so the precision gate's warning per pass would say it twice (warn_noisy=False).
    *first, null = session.measure([*items, null_measurable(session)], warn_noisy=False)
    time.sleep(DRIFT_PASS_GAP_S)
    *second, null_again = session.measure([*items, null_measurable(session)], warn_noisy=False)
    null_ms = (null.median_ms + null_again.median_ms) / 2
    overhead = null_ms if table_overhead > 0 else 0.0  # a table of raw figures is compared raw
    blocks = []
    for key, a, b in zip(keys, first, second, strict=True):
        now = (a.median_ms + b.median_ms) / 2
        ratio = _net(now, overhead) / _net(baseline[key], table_overhead)
        blocks.append(ReferenceBlock(str(key), baseline[key], a.median_ms, b.median_ms, ratio))
    repeat = [abs(r.measured_ms - r.measured_again_ms) / ((r.measured_ms + r.measured_again_ms) / 2) for r in blocks]
    error = table_error_pct(table, supernet.family)
    repeatability = float(np.median(repeat) * 100)
    return DriftCheck(
        target=table.provenance.target,
        precision=table.provenance.precision,
        date=now_iso(),
        where=null.where or session.runner.describe(),
        blocks=tuple(blocks),
        factor=float(np.median([r.ratio for r in blocks])),
        repeatability_pct=repeatability,
        table_error_pct=error,
        threshold_pct=max(error, 2 * repeatability),
        call_overhead_ms=null_ms,
        table_call_overhead_ms=table_overhead,
    )


# --- the correction a deploy applies ----------------------------------------------------------------


@dataclass(frozen=True)
class Correction:
    """What multiplies a table's predictions on this device now: drift × observed scale, or (after a deploy
    measured its artifact over budget) the factor that measurement implies."""

    drift: DriftCheck | None = None
    skipped: str | None = None  # why no drift check ran
    observed: ObservedScale | None = None
    measured_factor: float | None = None  # measured / table prediction of the artifact that missed the budget

    @property
    def drift_factor(self) -> float:
        return self.drift.applied_factor if self.drift is not None else 1.0

    @property
    def factor(self) -> float:
        if self.measured_factor is not None:
            return self.measured_factor
        return self.drift_factor * (self.observed.applied_scale if self.observed is not None else 1.0)

    @property
    def checked(self) -> bool:
        return self.drift is not None or self.measured_factor is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "factor": self.factor,
            "drift_factor": self.drift_factor,
            "drift_check": None if self.drift is None else self.drift.to_json(),
            "drift_check_skipped": self.skipped,
            "observed_scale": None if self.observed is None else self.observed.to_json(),
            "measured_factor": self.measured_factor,
        }


def session_or_reason(target: Target, cache_dir: Path | None) -> tuple[MeasureSession | None, str | None]:
    """A session on the target's device, or (None, why it cannot measure there now)."""
    reason = get_backend(target.backend).runs_here()
    if reason and target.runner.measures_in_process:
        return None, f"{target.backend} does not run on this machine ({reason.rstrip('.')})"
    try:
        session = MeasureSession.open(target, cache_dir)
        if not target.runner.measures_in_process:
            session.runner.describe()  # a device elsewhere (ssh, adb): reach it now, or say why not
        return session, None
    except (BackendUnavailableError, RunnerError) as exc:
        return None, str(exc).rstrip(".")


def current_correction(
    target: Target,
    table: LatencyTable,
    supernet: Supernet,
    *,
    measure: bool = True,
    session: MeasureSession | None = None,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = log.info,
    observations: bool = True,
) -> Correction:
    """The drift check on the target's device (where it can measure) and the refit on recent observations."""
    observed = observed_scale(target, table, supernet.family, cache_dir=cache_dir) if observations else None
    if observed is not None and observed.applied:
        say(
            f"{observed.n_observations} recent measurement(s) of deployed {target.name} artifacts ran "
            f"×{observed.scale:.3f} their predictions (beyond the table's {observed.threshold_pct:.1f}%): "
            f"the calibration's scale is refitted on them ({observed.path})"
        )
    if not measure:
        return Correction(skipped="--no-measure", observed=observed)
    reason = None
    if session is None:
        session, reason = session_or_reason(target, cache_dir)
    if session is None:
        say(f"no drift check for {target.name}: {reason}")
        return Correction(skipped=reason, observed=observed)
    try:
        drift = check_drift(session, table, supernet)
    except RunnerError as exc:
        say(f"no drift check for {target.name}: {exc}")
        return Correction(skipped=str(exc), observed=observed)
    say(drift.message())
    return Correction(drift=drift, observed=observed)


def deploy_corrections(
    target: Target,
    supernet: Supernet,
    *,
    measure: bool,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = log.info,
) -> dict[str, Correction]:
    """One Correction per precision the target lists (each precision has its own table)."""
    out: dict[str, Correction] = {}
    unreachable = None
    for p in target.search_precisions:
        at = target.at_precision(p)
        table = LatencyTable.load(at.table_path, at.name)
        if p == target.search_precisions[0]:
            say_why_not(at, table, supernet.family, say)
        if unreachable is not None:  # the device, not the precision: say it once
            out[p] = Correction(skipped=unreachable, observed=observed_scale(at, table, supernet.family))
            continue
        out[p] = current_correction(at, table, supernet, measure=measure, cache_dir=cache_dir, say=say)
        if measure and out[p].drift is None:
            unreachable = out[p].skipped
    return out


def say_why_not(target: Target, table: LatencyTable, family: str | None, say: Callable[[str], None]) -> None:
    """Say plainly when the table's validated error is more than twice the repeatability of its validation run:
    then its calibration, not the measuring, limits every prediction of it, and the deploy cannot be closer."""
    v = table.validation_for(family)
    if v is None or v.source != "tables validate" or v.median_abs_pct_error <= 2 * v.repeatability_pct:
        return
    if v.same_window_median_abs_pct_error <= 2 * v.repeatability_pct:
        say(
            f"note: the {target.table_path.name} table was validated at {v.median_abs_pct_error:.1f}% median error "
            f"({v.date}, {v.host}) while the device ran {v.drift_pct:+.1f}% off the table's speed; re-timed in the "
            f"same window its predictions held within {v.same_window_median_abs_pct_error:.1f}%, so the speed, not "
            f"the calibration, was off: the drift check below corrects the speed"
        )
        return
    say(
        f"note: the {target.table_path.name} table was validated at {v.median_abs_pct_error:.1f}% median error, more "
        f"than twice that run's repeatability ({v.repeatability_pct:.1f}%, {v.date}): its calibration no longer "
        f"matches whole subnets on {v.host}; this deploy corrects what the drift check and recent measurements "
        f"show, and `elastic-deploy tables build --target {target.name} --recalibrate` in a quiet window fixes it"
    )
