"""What a latency measurement is (LatencyStats) and how it is taken (MeasureProtocol)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

INPUT_SEED = 0  # the inputs artifacts are timed on: latency does not depend on their values


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
