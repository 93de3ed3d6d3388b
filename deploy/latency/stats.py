"""What a latency measurement is (LatencyStats), how it is taken (MeasureProtocol), and the statistics of timed
runs (`stats_from_rounds`), whether they were timed here (deploy/latency/measure.py) or reported by a device."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from deploy.errors import MeasurementError

INPUT_SEED = 0  # the inputs artifacts are timed on: latency does not depend on their values
OUTLIER_IQR_FACTOR = 3.0  # runs above Q3 + this x IQR of all runs are dropped (see outlier_fence)
MIN_RUNS_TO_TRIM = 8


@dataclass(frozen=True)
class MeasureProtocol:
    """How one latency is measured: warm-up, then `rounds` rounds of >= min_runs runs and >= min_time_s.

    The statistic is the median over all timed runs; the spread of the round medians (CV) says how
    repeatable it was. While the median is less precise than `cv_max` (round CV / √rounds, the relative
    standard error), every item gets `rounds` more rounds, pooled, up to `max_retries` times.
    """

    warmup_runs: int = 20
    min_runs: int = 20
    min_time_s: float = 0.02
    rounds: int = 20
    cv_max: float = 0.02
    max_retries: int = 2
    cooldown_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    n_runs: int
    round_medians_ms: tuple[float, ...] = field(default=())
    cv: float = 0.0  # coefficient of variation of the round medians (repeatability across rounds)
    where: str = ""  # runner and host that measured it
    trimmed: int = 0  # of the n_runs timed runs, how many were dropped as outliers (above Q3 + 3·IQR)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["round_medians_ms"] = list(self.round_medians_ms)
        return data


def seeded_inputs(specs: Mapping[str, tuple[tuple[int, ...], np.dtype]]) -> dict[str, np.ndarray]:
    """Latency does not depend on the values: seeded normal floats, zeros for integer inputs (a valid token id)."""
    rng = np.random.default_rng(INPUT_SEED)
    return {
        name: rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
        for name, (shape, dtype) in specs.items()
    }


def outlier_fence(runs_ms: np.ndarray) -> float:
    """Upper fence for per-run timings: Q3 + OUTLIER_IQR_FACTOR·IQR, or +inf when it cannot be told.

    A preempted run on a shared VM can take 100x the median; one such run moves the mean, std and p90
    of a few hundred runs. With fewer than MIN_RUNS_TO_TRIM runs the quartiles mean little, and with
    IQR 0 (identical or clock-quantised timings) there is no scale to call anything an outlier.
    """
    if len(runs_ms) < MIN_RUNS_TO_TRIM:
        return math.inf
    q1, q3 = np.percentile(runs_ms, [25, 75])
    iqr = float(q3 - q1)
    return float(q3) + OUTLIER_IQR_FACTOR * iqr if iqr > 0 else math.inf


def stats_from_rounds(rounds_ms: Sequence[Sequence[float]], where: str = "") -> LatencyStats:
    """Statistics of per-run timings grouped by round (also for timings a remote benchmark reported).

    Runs above the outlier fence of all runs (Q3 + 3·IQR) are dropped before the median, p90, mean,
    std and the round medians are computed; `trimmed` says how many. A round that loses all its runs
    has no median and is left out of round_medians_ms (and so of the CV). n_runs counts every timed
    run, trimmed ones included.
    """
    rounds = [np.asarray(r, dtype=np.float64) for r in rounds_ms if len(r)]
    if not rounds:
        raise MeasurementError(f"no timed runs to summarise{f' from {where}' if where else ''}")
    all_runs = np.concatenate(rounds)
    fence = outlier_fence(all_runs)
    kept_rounds = [kept for kept in (r[r <= fence] for r in rounds) if len(kept)]
    runs = np.concatenate(kept_rounds)  # never empty: the fence is >= Q3, so at least one run is kept
    medians = np.array([np.median(r) for r in kept_rounds])
    cv = float(np.std(medians, ddof=1) / np.mean(medians)) if len(medians) > 1 and np.mean(medians) else 0.0
    return LatencyStats(
        median_ms=round(float(np.median(runs)), 6),
        p90_ms=round(float(np.percentile(runs, 90)), 6),
        mean_ms=round(float(np.mean(runs)), 6),
        std_ms=round(float(np.std(runs, ddof=1)) if len(runs) > 1 else 0.0, 6),
        n_runs=len(all_runs),
        round_medians_ms=tuple(round(float(m), 6) for m in medians),
        cv=round(cv, 6),
        where=where,
        trimmed=len(all_runs) - len(runs),
    )


def relative_standard_error(stats: LatencyStats) -> float:
    """How precisely the median is known: the round medians' CV over √rounds."""
    return stats.cv / math.sqrt(max(len(stats.round_medians_ms), 1))
