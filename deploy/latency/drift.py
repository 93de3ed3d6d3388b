"""Drift: notice that the device's speed moved since its table was measured, and correct for it.

A table measured on one VM predicted every subnet 16-27% too low on the next one, while its blocks,
measured in the same window as the subnets, predicted them within 2% (TOOLCHAIN.md, 2026-12-02). So
whatever can measure on the target first times a few of the table's own blocks (seconds) and compares:

- **Drift check** (`check_drift`): 4 reference blocks spread over the table's latencies, interleaved
  with the one-op null model the calibration uses, in two passes seconds apart (a burst of load that
  covers one pass shows as poor repeatability, not as drift). A block's ratio is its figure
  now over the table's, both net of the per-call overhead (now: the null model; the table's: its
  calibration's); the drift factor is the median ratio. A TRANSFERRED table's entries are scaled to fit
  whole subnets, so its baseline is the blocks the transfer timed on the device (`device_baseline`). It is *beyond* when
  |factor − 1| > max(the table's error for the family, 2 × this check's repeatability), the error
  being its validation's same-window median error (else the calibration fit's): a move the table's
  own error or the measurement's noise could explain is left alone. Beyond, predictions are multiplied
  by the factor: `Prediction.correction`, never a change to the table file.
- **Observations** (`record_observation`): every end-to-end measurement of a deployed artifact (deploy
  and bench) is appended, with its provenance, to `<cache>/observations/<table>.jsonl`.
- **Refit on observations** (`observed_scale`): when the recent observations of a table (same table
  and calibration, same family, the last OBSERVATION_MAX_AGE_S, made with no drift correction applied)
  disagree with their predictions beyond the table's error, the calibration's overall scale is refitted
  on them: s = median of measured / table prediction, and later deploys multiply by it too. An
  observation made while a drift correction was applied judges that correction, not the table: a check
  misled by a slow spell would otherwise leave a "refit" that the next deploy, its blocks back at speed,
  applies alone (docs/targets-and-tables.md). One parameter
  only: a calibration's shape needs its window of 12-36 subnets measured beside their blocks, while
  what moves between windows here is the whole-subnet/block ratio as a whole (docs/targets-and-tables.md,
  "What limits the predictions").
  Shipped tables are never rewritten; `tables build --recalibrate` in a quiet window fixes the table.
- **Over budget** (`settle_measurement`): a deploy whose measured artifact exceeds the budget re-selects
  once with the correction the measurement implies (measured / table prediction), or stops with
  MeasuredOverBudgetError giving both numbers. Never a loop, never a silent ship.
- **Builds** (`BuildDriftGuard`): between blocks of a long `tables build`, every BUILD_CHECK_EVERY blocks,
  the reference blocks are timed again; if they moved beyond twice their repeatability (at least
  BUILD_MIN_DRIFT_PCT), the blocks measured since the last good check are measured again.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from deploy import workspace
from deploy.errors import BackendUnavailableError, ConfigFileError, MeasuredOverBudgetError, RunnerError
from deploy.io import read_bytes
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import LatencyTable, now_iso

if TYPE_CHECKING:
    from deploy.families.base import BlockKey, Supernet
    from deploy.latency.session import MeasureSession
    from deploy.latency.stats import LatencyStats
    from deploy.packaging.manifest import Manifest
    from deploy.search.select import Candidate
    from deploy.targets import Target

log = logging.getLogger(__name__)

REFERENCE_BLOCKS = 4
DRIFT_PASS_GAP_S = 2.0  # between the drift check's two passes over its reference blocks
OBSERVATION_MAX_AGE_S = 2 * 3600.0  # this VM's whole/block ratio moved within tens of minutes (docs/)
MAX_CLOCK_SKEW_S = 300.0  # an observation dated later than now by more is refused: it would never age out
BUILD_CHECK_EVERY = 12  # blocks between two checks of a build (~15% more measuring with 3 reference blocks)
BUILD_REFERENCE_BLOCKS = 3
BUILD_MIN_DRIFT_PCT = 3.0  # a build check never calls a move below this "drift" (round noise here: 1-4%)
BUILD_MAX_REDO = 1  # a segment is measured again at most this often; then the new speed is accepted


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


def table_error_pct(table: LatencyTable, family: str | None = None) -> float:
    """The error of the table's shape at the device's current speed, in %: the same-window error of its
    validation (blocks re-timed beside the subnets), else the error a prediction is expected to have.

    Not the validation's overall median: one taken while the device ran at another speed holds that drift, and
    as the threshold of the drift check it would hide the very drift the check is for (docs/targets-and-tables.md,
    "What limits the predictions")."""
    validation = table.validation_for(family)
    if validation is not None and validation.same_window_median_abs_pct_error > 0:
        return validation.same_window_median_abs_pct_error
    return LatencyPredictor(table).relative_error(family) * 100


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


@contextmanager
def _without_gate_warnings() -> Iterator[None]:
    """The check states its own repeatability; the precision gate's warning per pass would say it again."""
    logger = logging.getLogger("deploy.latency.measure")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def check_drift(
    session: MeasureSession,
    table: LatencyTable,
    supernet: Supernet,
    *,
    n_blocks: int = REFERENCE_BLOCKS,
) -> DriftCheck:
    """Time `n_blocks` reference blocks and the null model on the session's device, interleaved, in two passes
    `DRIFT_PASS_GAP_S` apart (their agreement is the check's repeatability)."""
    from deploy.latency.build import block_identity, null_measurable

    baseline, table_overhead = device_baseline(table, supernet.all_blocks())
    keys = reference_blocks(baseline, n_blocks)
    if not keys:
        what = "blocks measured on its device" if table.provenance.method == "transferred" else "blocks"
        raise RunnerError(f"the {table.provenance.target} table holds none of {supernet.variant}'s {what}")
    items = []
    for key in keys:
        module, example = supernet.measurable_block(key)
        items.append(session.compile(module, example, block_identity(key)))
    # Two passes apart in time, not one interleaved call: a burst of load lasting the seconds of one pass
    # (seen here: reference blocks 21% slow while the subnets measured right after matched the table) shows
    # as poor repeatability, which raises the threshold, instead of as a drift every prediction is scaled by.
    with _without_gate_warnings():
        *first, null = session.measure([*items, null_measurable(session)])
        time.sleep(DRIFT_PASS_GAP_S)
        *second, null_again = session.measure([*items, null_measurable(session)])
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


# --- observations and the refit on them -------------------------------------------------------------


class Observation(BaseModel):
    """One end-to-end measurement of a deployed artifact, with where it came from (one line of the file).

    Its figures become the next deploys' correction (`observed_scale`): one with a `problem` is neither
    recorded nor read back."""

    model_config = ConfigDict(extra="ignore")

    date: str
    source: Literal["deploy", "bench"]
    target: str
    precision: str
    table: str  # the table file's name
    table_identity: str  # its provenance date | calibration fitted_at: observations of another table do not count
    model: str
    family: str | None = None
    subnet_id: str
    artifact_sha256: str = ""
    table_prediction_ms: float
    drift_factor: float = 1.0  # the drift check's correction applied at the time (1: none)
    corrected_prediction_ms: float  # what the deploy or bench predicted (all corrections)
    measured_ms: float
    measured_p90_ms: float | None = None
    measured_cv: float = 0.0
    n_runs: int = 0
    where: str = ""
    host_pid: int = 0

    @property
    def ratio(self) -> float:
        """measured / table prediction: what the calibration's scale is refitted on (made with no drift
        correction applied; see `observed_scale`). NaN, never a division by zero, where the prediction is not
        a positive number."""
        if not self.table_prediction_ms > 0:
            return float("nan")
        return self.measured_ms / self.table_prediction_ms

    def problem(self, now: datetime) -> str | None:
        """Why this observation must not correct anything (None: it may). Checked here rather than as field
        constraints so that a deploy that measured something odd still finishes: it just records nothing."""
        figures = {
            "table_prediction_ms": self.table_prediction_ms,
            "corrected_prediction_ms": self.corrected_prediction_ms,
            "measured_ms": self.measured_ms,
            "measured_p90_ms": self.measured_p90_ms,
            "drift_factor": self.drift_factor,
        }
        for name, value in figures.items():
            if value is not None and not (math.isfinite(value) and value > 0):
                return f"{name} {value} is not a positive finite number"
        try:
            when = datetime.fromisoformat(self.date)
        except ValueError:
            return f"date {self.date!r} is not an ISO date and time"
        if when.tzinfo is None:  # its age could not be told
            return f"date {self.date!r} has no time zone"
        if (when - now).total_seconds() > MAX_CLOCK_SKEW_S:  # it would never grow old enough to drop out
            return f"date {self.date} is later than now"
        return None


def table_identity(table: LatencyTable) -> str:
    cal = table.calibration
    return f"{table.provenance.date}|{cal.fitted_at if cal is not None else ''}"


def observations_path(target: Target, cache_dir: Path | None = None) -> Path:
    """`<cache>/observations/<table file stem>.jsonl`: per target and precision."""
    return (cache_dir or workspace.cache_dir()) / "observations" / f"{target.table_path.stem}.jsonl"


def record_observation(observation: Observation, path: Path) -> Path:
    """Append one line (a single O_APPEND write: lines of concurrent writers do not interleave); an observation
    that is not usable is left out, with a warning."""
    problem = observation.problem(datetime.now(UTC))
    if problem is not None:
        log.warning("not recorded in %s: an observation whose %s would correct later deploys wrongly", path, problem)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (observation.model_dump_json() + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    return path


def load_observations(path: Path, now: datetime | None = None) -> list[Observation]:
    """Every usable line of the file. The file is our cache, not a contract: a line that is damaged or has a
    `problem` (Observation.problem) is skipped, and one warning counts them: no deploy is corrected by it."""
    now = now or datetime.now(UTC)
    if not path.exists():
        return []
    try:
        raw = read_bytes(path, "observations")
    except ConfigFileError as exc:  # unreadable, a pipe, or grown past the bound: a cache, so said and skipped
        log.warning("%s; no observation of it is used", exc)
        return []
    out, skipped, first = [], 0, ""
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obs = Observation.model_validate(json.loads(line))
        except ValidationError as exc:
            why = f"field '{'.'.join(str(p) for p in exc.errors()[0]['loc']) or '(top level)'}'"
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested without end
            why = "not JSON"
        else:
            why = obs.problem(now)
            if why is None:
                out.append(obs)
                continue
        skipped += 1
        first = first or f"line {number}: {why}"
    if skipped:
        log.warning(
            "%s: skipped %d of %d lines that are not usable observations (first: %s); they correct nothing",
            path, skipped, skipped + len(out), first,
        )  # fmt: skip
    return out


def _age_s(date: str, now: datetime) -> float:
    try:
        return (now - datetime.fromisoformat(date)).total_seconds()
    except (ValueError, TypeError):  # not a date, or one without its zone: too old to count
        return float("inf")


@dataclass(frozen=True)
class ObservedScale:
    """The calibration's scale refitted on recent observations (see the module docstring)."""

    scale: float
    n_observations: int
    threshold_pct: float  # the table's expected error: within it, the observations agree with the table
    path: str
    max_age_s: float = OBSERVATION_MAX_AGE_S

    @property
    def applied(self) -> bool:
        return abs(self.scale - 1) * 100 > self.threshold_pct

    @property
    def applied_scale(self) -> float:
        return self.scale if self.applied else 1.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "applied": self.applied}


def observed_scale(
    target: Target,
    table: LatencyTable,
    family: str | None,
    *,
    cache_dir: Path | None = None,
    now: datetime | None = None,
) -> ObservedScale | None:
    """The refit from this table's recent observations of `family`, or None when there are none."""
    path = observations_path(target, cache_dir)
    now = now or datetime.now(UTC)
    ident = table_identity(table)
    recent = [
        o
        for o in load_observations(path, now)
        if o.table_identity == ident
        and o.family == family
        and o.drift_factor == 1.0  # under a drift correction it judged that correction (module docstring)
        and _age_s(o.date, now) <= OBSERVATION_MAX_AGE_S
    ]
    if not recent:
        return None
    scale = float(np.median([o.ratio for o in recent]))
    return ObservedScale(scale, len(recent), table_error_pct(table, family), str(path))


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


def _session_or_reason(target: Target, cache_dir: Path | None) -> tuple[MeasureSession | None, str | None]:
    from deploy.backends import get_backend
    from deploy.latency.session import MeasureSession

    reason = get_backend(target.backend).runs_here()
    if reason and target.runner.kind == "local":
        return None, f"{target.backend} does not run on this machine ({reason.rstrip('.')})"
    try:
        session = MeasureSession.open(target, cache_dir)
        if target.runner.kind != "local":
            session.runner.describe()  # ssh and adb: reach the device now, or say why not
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
        session, reason = _session_or_reason(target, cache_dir)
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


# --- after the deploy measured its artifact ---------------------------------------------------------


class Reselect(Exception):  # control flow inside the pipeline, never shown to a user
    """The measured artifact missed the budget: select once more with the correction it implies."""

    def __init__(self, corrections: Mapping[str, Correction], first: dict[str, Any]) -> None:
        super().__init__(first["message"])
        self.corrections = dict(corrections)
        self.first = first


def settle_measurement(
    *,
    target: Target,
    table: LatencyTable,
    supernet: Supernet,
    model: str,
    choice: Candidate,
    correction: Correction | None,
    corrections: Mapping[str, Correction],
    measured: LatencyStats | None,
    not_measured: str | None,
    artifact_sha256: str,
    retry: Reselect | None,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = log.info,
    source: Literal["deploy", "bench"] = "deploy",
) -> dict[str, Any]:
    """Record the measurement, refit on it where it disagrees, and refuse to ship over budget.

    Returns the manifest's "drift" block; raises Reselect (first time) or MeasuredOverBudgetError."""
    correction = correction or Correction(skipped="no correction computed")
    table_ms = LatencyPredictor(table).predict(supernet.blocks(choice.config), supernet.family).ms
    block: dict[str, Any] = {
        "table_prediction_ms": table_ms,
        "drift_factor": correction.drift_factor,
        "correction_factor": correction.factor,
        "corrected_prediction_ms": choice.latency_ms,
        "measured_ms": None if measured is None else measured.median_ms,
        "correction": correction.to_json(),
        "reselected": None if retry is None else {k: v for k, v in retry.first.items() if k != "message"},
        "observation": None,
        "refit": None,
        "not_measured_reason": not_measured,
    }
    if measured is None:
        return block
    obs = Observation(
        date=now_iso(),
        source=source,
        target=target.name,
        precision=target.precision,
        table=target.table_path.name,
        table_identity=table_identity(table),
        model=model,
        family=supernet.family,
        subnet_id=choice.config.id,
        artifact_sha256=artifact_sha256,
        table_prediction_ms=table_ms,
        drift_factor=correction.drift_factor,
        corrected_prediction_ms=choice.latency_ms,
        measured_ms=measured.median_ms,
        measured_p90_ms=measured.p90_ms,
        measured_cv=measured.cv,
        n_runs=measured.n_runs,
        where=measured.where,
        host_pid=os.getpid(),
    )
    path = record_observation(obs, observations_path(target, cache_dir))
    block["observation"] = {"path": str(path), **obs.model_dump()}
    error = table_error_pct(table, supernet.family)
    off = (measured.median_ms - choice.latency_ms) / choice.latency_ms * 100
    if abs(off) > error and correction.drift_factor != 1.0:  # judges that correction: no refit (observed_scale)
        table_off = (measured.median_ms - table_ms) / table_ms * 100
        source = "the first artifact's measurement" if correction.measured_factor is not None else "the drift check"
        say(
            f"measured {measured.median_ms:.3f} ms vs predicted {choice.latency_ms:.3f} ms ({off:+.1f}%): the "
            f"×{correction.factor:.3f} from {source} did not hold for this artifact (the table alone predicted "
            f"{table_ms:.3f} ms, {table_off:+.1f}%); recorded in {path}; made under a drift correction, it refits "
            f"nothing"
        )
    elif abs(off) > error:
        refit = observed_scale(target, table, supernet.family, cache_dir=cache_dir)
        block["refit"] = None if refit is None else refit.to_json()
        if refit is not None:
            say(
                f"measured {measured.median_ms:.3f} ms vs predicted {choice.latency_ms:.3f} ms ({off:+.1f}%, beyond "
                f"the table's {error:.1f}%): recorded in {path}; the calibration's scale refitted on "
                f"{refit.n_observations} recent observation(s) is ×{refit.scale:.3f}, which the next deploys of "
                f"{target.name} apply (`tables build --target {target.name} --recalibrate` fixes the table itself)"
            )
    if measured.median_ms <= target.budget_ms:
        return block
    implied = measured.median_ms / table_ms
    both = (
        f"{target.name}: the artifact of subnet {choice.config.id} measured {measured.median_ms:.3f} ms on "
        f"{measured.where}, over the budget of {target.budget_ms} ms (predicted {choice.latency_ms:.3f} ms)"
    )
    if retry is not None:
        raise MeasuredOverBudgetError(
            f"{both}, after re-selecting once with the correction the first measurement implied "
            f"({retry.first['subnet']} measured {retry.first['measured_ms']:.3f} ms); nothing was written: measure "
            f"the table again in a quiet window (`make latency-tables TARGET={target.name}`) or raise budget_ms"
        )
    say(f"{both}: re-selecting once with the correction this measurement implies (×{implied:.3f} the table)")
    corrected = dict(corrections)
    corrected[target.precision] = Correction(
        drift=correction.drift, skipped=correction.skipped, observed=correction.observed, measured_factor=implied
    )
    raise Reselect(
        corrected,
        {
            "message": both,
            "subnet": choice.config.id,
            "measured_ms": measured.median_ms,
            "predicted_ms": choice.latency_ms,
            "table_prediction_ms": table_ms,
            "correction": implied,
        },
    )


def reselect_failed(retry: Reselect, exc: Exception, budget_ms: float) -> MeasuredOverBudgetError:
    """The one-line error when re-selecting with the measured correction finds nothing that fits."""
    f = retry.first
    return MeasuredOverBudgetError(
        f"{f['message']}; re-selecting with the correction it implies (×{f['correction']:.3f} the table) "
        f"found nothing under {budget_ms} ms ({str(exc).rstrip('.')}); nothing was written"
    )


# --- long builds ------------------------------------------------------------------------------------


@dataclass
class BuildDriftGuard:
    """Re-time reference blocks between the blocks of a build; re-measure a segment measured while they moved.

    `measure(keys)` measures the keys interleaved, each twice (2·len(keys) stats, in that order);
    `remeasure(key)` measures one block again the way the build does. `after(key)` is called once per
    block measured and returns the re-measured blocks (key → stats) the build must store.
    """

    refs: Sequence[BlockKey]
    measure: Callable[[Sequence[BlockKey]], list[LatencyStats]]
    remeasure: Callable[[BlockKey], LatencyStats]
    every: int = BUILD_CHECK_EVERY
    say: Callable[[str], None] = log.warning
    baseline: list[float] | None = None
    baseline_repeat_pct: float = 0.0
    since: list[BlockKey] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def _time(self) -> tuple[list[float], float]:
        stats = self.measure(self.refs)
        n = len(self.refs)
        pairs = list(zip(stats[:n], stats[n:], strict=True))
        medians = [(a.median_ms + b.median_ms) / 2 for a, b in pairs]
        repeat = float(
            np.median([abs(a.median_ms - b.median_ms) / m for (a, b), m in zip(pairs, medians, strict=True)])
        )
        return medians, repeat * 100

    def _moved(self) -> tuple[float, float]:
        """(move %, threshold %) of the reference blocks now against the baseline."""
        assert self.baseline is not None
        medians, repeat = self._time()
        move = (float(np.median(np.array(medians) / np.array(self.baseline))) - 1) * 100
        threshold = max(2 * max(repeat, self.baseline_repeat_pct), BUILD_MIN_DRIFT_PCT)
        self.history.append({"date": now_iso(), "move_pct": move, "threshold_pct": threshold, "medians_ms": medians})
        return move, threshold

    def after(self, key: BlockKey) -> dict[BlockKey, LatencyStats]:
        if self.baseline is None:
            self.baseline, self.baseline_repeat_pct = self._time()
        self.since.append(key)
        if len(self.since) < self.every:
            return {}
        redone: dict[BlockKey, LatencyStats] = {}
        move, threshold = self._moved()
        for attempt in range(BUILD_MAX_REDO + 1):
            if abs(move) <= threshold:
                break
            if attempt == BUILD_MAX_REDO:
                self.say(
                    f"reference blocks still {move:+.1f}% off their start after re-measuring {len(self.since)} "
                    f"blocks: the device's speed changed and stayed (throttling?); keeping the new figures "
                    f"(the calibration window re-measures every block beside the subnets anyway)"
                )
                self.baseline = self._time()[0]
                break
            self.say(
                f"reference blocks moved {move:+.1f}% (beyond {threshold:.1f}%, twice their repeatability) "
                f"while {len(self.since)} blocks were measured: measuring those again"
            )
            redone.update({k: self.remeasure(k) for k in self.since})
            move, threshold = self._moved()
        self.since = []
        return redone


def build_drift_guard(
    executor_name: str,
    session: MeasureSession,
    blocks: Sequence[BlockKey],
    todo: Sequence[BlockKey],
    compile_block: Callable[[BlockKey], Any],
    every: int | None = None,
) -> BuildDriftGuard | None:
    """The guard of a local build with more than `every` blocks to measure (None otherwise: a Ray executor
    spreads blocks over devices, which one set of reference blocks on one device cannot vouch for)."""
    every = every or BUILD_CHECK_EVERY
    if executor_name != "local" or len(todo) <= every:
        return None
    ordered = sorted(blocks)
    picks = np.linspace(0, len(ordered) - 1, min(BUILD_REFERENCE_BLOCKS, len(ordered))).round().astype(int)
    refs = [ordered[i] for i in dict.fromkeys(int(i) for i in picks)]
    items = {k: compile_block(k) for k in refs}

    def measure(keys: Sequence[BlockKey]) -> list[LatencyStats]:
        return session.measure([items[k] for k in keys] * 2)

    def remeasure(key: BlockKey) -> LatencyStats:
        return session.measure([compile_block(key)])[0]

    return BuildDriftGuard(refs, measure, remeasure, every)


# --- bench ------------------------------------------------------------------------------------------


@dataclass
class BenchDrift:
    """The drift check of a bench and what it makes of the deployed subnet's prediction.

    The bench gates on the table's prediction × the drift factor measured now, not × the observed scale:
    the observations include earlier benches of this very artifact, which would make the gate circular."""

    target: Target
    table: LatencyTable
    supernet: Supernet
    subnet_id: str
    table_ms: float
    correction: Correction

    @property
    def corrected_ms(self) -> float:
        return self.table_ms * self.correction.drift_factor

    def to_json(self) -> dict[str, Any]:
        return {
            "table_prediction_ms": self.table_ms,
            "drift_factor": self.correction.drift_factor,
            "corrected_prediction_ms": self.corrected_ms,
            "correction": self.correction.to_json(),
        }

    def observe(self, measured: LatencyStats, artifact_sha256: str, cache_dir: Path | None = None) -> Path:
        obs = Observation(
            date=now_iso(),
            source="bench",
            target=self.target.name,
            precision=self.target.precision,
            table=self.target.table_path.name,
            table_identity=table_identity(self.table),
            model=self.supernet.variant,
            family=self.supernet.family,
            subnet_id=self.subnet_id,
            artifact_sha256=artifact_sha256,
            table_prediction_ms=self.table_ms,
            drift_factor=self.correction.drift_factor,
            corrected_prediction_ms=self.corrected_ms,
            measured_ms=measured.median_ms,
            measured_p90_ms=measured.p90_ms,
            measured_cv=measured.cv,
            n_runs=measured.n_runs,
            where=measured.where,
            host_pid=os.getpid(),
        )
        return record_observation(obs, observations_path(self.target, cache_dir))


def bench_drift(
    target: Target,
    manifest: Manifest,
    *,
    session_for: Callable[[Target], MeasureSession],
    say: Callable[[str], None] = log.info,
) -> BenchDrift | None:
    """The drift check before a bench measures the deployed artifact; None (said why) where it cannot run."""
    from deploy.errors import DeployError
    from deploy.models import build
    from deploy.search.space import SubnetConfig

    try:
        at = target.at_precision(manifest.precision)
        table = LatencyTable.load(at.table_path, at.name)
        supernet = build(manifest.model)  # latency does not depend on the weights
        config = SubnetConfig.from_json(manifest.subnet.config)
        table_ms = LatencyPredictor(table).predict(supernet.blocks(config), supernet.family).ms
    except (DeployError, KeyError, ValueError) as exc:
        say(f"no drift check: {str(exc).rstrip('.') or type(exc).__name__}")
        return None
    try:
        session = session_for(at)
    except (BackendUnavailableError, RunnerError) as exc:
        say(f"no drift check for {at.name}: {str(exc).rstrip('.')}")
        return BenchDrift(at, table, supernet, config.id, table_ms, Correction(skipped=str(exc)))
    correction = current_correction(at, table, supernet, session=session, say=say, observations=False)
    return BenchDrift(at, table, supernet, config.id, table_ms, correction)
