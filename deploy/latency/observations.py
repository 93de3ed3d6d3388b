"""Observations of deployed artifacts, and the calibration's scale refitted on them.

- **Observations** (`record_observation`): every end-to-end measurement of a deployed artifact (deploy and
  bench) is appended, with its provenance, to `<cache>/observations/<table>.jsonl`.
- **Refit** (`observed_scale`): when the recent observations of a table (same table and calibration, same
  family, the last OBSERVATION_MAX_AGE_S, made with no drift correction applied) disagree with their
  predictions beyond the table's error, the calibration's overall scale is refitted on them: s = median of
  measured / table prediction, and later deploys multiply by it too (`deploy.latency.drift.Correction`).
  An observation made while a drift correction was applied judges that correction, not the table: a check
  misled by a slow spell would otherwise leave a "refit" that the next deploy, its blocks back at speed,
  applies alone. One parameter only: a calibration's shape needs its window of subnets measured beside
  their blocks, while what moves between windows is the whole-subnet/block ratio as a whole
  (docs/targets-and-tables.md, "What limits the predictions"). Shipped tables are never rewritten;
  `tables build --recalibrate` in a quiet window fixes the table.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from deploy import workspace
from deploy.errors import ConfigFileError
from deploy.io import read_bytes
from deploy.latency.predictor import table_error_pct
from deploy.latency.table import LatencyTable, now_iso

if TYPE_CHECKING:
    from deploy.latency.stats import LatencyStats
    from deploy.targets import Target

log = logging.getLogger(__name__)

# The whole-subnet/block ratio moves within tens of minutes (docs/targets-and-tables.md, "What limits the predictions").
OBSERVATION_MAX_AGE_S = 2 * 3600.0
MAX_CLOCK_SKEW_S = 300.0  # an observation dated later than now by more is refused: it would never age out


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


def observation_of(
    target: Target,
    table: LatencyTable,
    measured: LatencyStats,
    *,
    source: Literal["deploy", "bench"],
    model: str,
    family: str | None,
    subnet_id: str,
    artifact_sha256: str,
    table_prediction_ms: float,
    drift_factor: float,
    corrected_prediction_ms: float,
) -> Observation:
    """The observation of `measured`, made now by this process, with the target's and the table's provenance."""
    return Observation(
        date=now_iso(),
        source=source,
        target=target.name,
        precision=target.precision,
        table=target.table_path.name,
        table_identity=table_identity(table),
        model=model,
        family=family,
        subnet_id=subnet_id,
        artifact_sha256=artifact_sha256,
        table_prediction_ms=table_prediction_ms,
        drift_factor=drift_factor,
        corrected_prediction_ms=corrected_prediction_ms,
        measured_ms=measured.median_ms,
        measured_p90_ms=measured.p90_ms,
        measured_cv=measured.cv,
        n_runs=measured.n_runs,
        where=measured.where,
        host_pid=os.getpid(),
    )


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
