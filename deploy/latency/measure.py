"""Taking a latency: warm-up, several timed rounds, statistics over runs and spread across rounds.

These machines are shared and noisy (TOOLCHAIN.md: the same model measured back to back gave medians
of 1.02, 1.89 and 1.04 ms), so a measurement is several rounds whose medians must agree (CV gate, with
retries), and things that are compared are measured interleaved: round r runs every item's batch in
turn, so a burst of load hits all of them rather than one.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from deploy.errors import MeasurementError
from deploy.latency.stats import LatencyStats, MeasureProtocol

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MAX_RUNS_PER_ROUND = 1_000_000
OUTLIER_IQR_FACTOR = 3.0  # runs above Q3 + this x IQR of all runs are dropped (see outlier_fence)
MIN_RUNS_TO_TRIM = 8


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


def _call_checked(name: str, call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:
        raise MeasurementError(f"measuring '{name}' failed: {exc}; run it once on its own to debug") from exc


def _batch(
    name: str, call: Callable[[], object], min_runs: int, min_time_ns: int, self_timed: bool = False
) -> list[float]:
    """One round of one item: at least min_runs runs and min_time_ns, each timed alone (ms).

    A self-timed call returns its own duration in ms from the device's clock (CUDA events), which
    is what counts then; the host clock still bounds the round's length."""
    clock = time.perf_counter_ns
    times: list[int] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection inside a run is not the model's latency
    try:
        start = clock()
        for _ in range(MAX_RUNS_PER_ROUND):  # bounded: min_time_s on a sub-µs call stops here
            t0 = clock()
            device_ms = _call_checked(name, call)
            t1 = clock()
            times.append(int(float(device_ms) * 1e6) if self_timed else t1 - t0)  # type: ignore[arg-type]
            if len(times) >= min_runs and t1 - start >= min_time_ns:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return [t / 1e6 for t in times]


def _check(protocol: MeasureProtocol) -> None:
    if protocol.rounds < 1 or protocol.min_runs < 1 or protocol.warmup_runs < 0 or protocol.max_retries < 0:
        raise MeasurementError(
            f"invalid measurement protocol {protocol.to_json()}: rounds and min_runs must be >= 1, "
            "warmup_runs and max_retries >= 0; fix the target's measurement section"
        )


def relative_standard_error(stats: LatencyStats) -> float:
    """How precisely the median is known: the round medians' CV over √rounds."""
    return stats.cv / math.sqrt(max(len(stats.round_medians_ms), 1))


def measure_interleaved(
    calls: Mapping[str, Callable[[], object]],
    protocol: MeasureProtocol,
    on_progress: Progress | None = None,
    seed: int = 0,
    where: str = "",
    self_timed: bool = False,
) -> dict[str, LatencyStats]:
    """Measure every call in the same time window: each round runs every call's batch, in shuffled order.

    The speed of these machines swings by tens of percent within seconds, so what is compared must
    share its time window: many short rounds, every item in each. While some item's median is not
    precise enough (round CV / √rounds > protocol.cv_max), ALL items get another `rounds` rounds,
    pooled with the earlier ones (re-measuring only the noisy ones would put them in another window),
    up to protocol.max_retries times. With `self_timed`, each call returns its own duration in ms
    (a device clock), as a backend's `device_timed_call` does.
    """
    _check(protocol)
    names = list(calls)
    if not names:
        return {}
    progress = on_progress or (lambda _msg: None)
    rng = random.Random(seed)
    min_time_ns = int(protocol.min_time_s * 1e9)
    for name in names:
        for _ in range(protocol.warmup_runs):
            _call_checked(name, calls[name])

    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    stats: dict[str, LatencyStats] = {}
    noisy: list[str] = []
    for attempt in range(protocol.max_retries + 1):
        for r in range(protocol.rounds):
            if protocol.cooldown_s > 0 and (attempt or r):
                time.sleep(protocol.cooldown_s)
            order = list(names)
            rng.shuffle(order)
            tag = f" (retry {attempt}/{protocol.max_retries})" if attempt else ""
            for i, name in enumerate(order, 1):
                progress(f"round {r + 1}/{protocol.rounds}{tag}: {name} [{i}/{len(order)}]")
                samples[name].append(_batch(name, calls[name], protocol.min_runs, min_time_ns, self_timed))
        stats = {name: stats_from_rounds(samples[name], where) for name in names}
        noisy = [name for name in names if relative_standard_error(stats[name]) > protocol.cv_max]
        if not noisy:
            break
        if attempt < protocol.max_retries:
            progress(f"{len(noisy)} item(s) above the precision gate; measuring all {len(names)} again")
    for name in noisy:
        log.debug(
            "'%s' stayed noisy after %d retries: median known to ±%.1f%% (round CV %.1f%%), gate %.1f%%",
            name, protocol.max_retries, 100 * relative_standard_error(stats[name]), 100 * stats[name].cv,
            100 * protocol.cv_max,
        )  # fmt: skip
    if noisy:
        worst = max(noisy, key=lambda n: relative_standard_error(stats[n]))
        log.warning(
            "%d of %d measured items stayed above the ±%.1f%% precision gate after %d retries (worst '%s', ±%.1f%%); "
            "their medians are kept with that spread. A quieter machine, or more rounds in the target's "
            "measurement protocol, tightens them",
            len(noisy), len(names), 100 * protocol.cv_max, protocol.max_retries, worst,
            100 * relative_standard_error(stats[worst]),
        )  # fmt: skip
    return stats


def measure(
    call: Callable[[], object],
    protocol: MeasureProtocol,
    on_progress: Progress | None = None,
    where: str = "",
) -> LatencyStats:
    """Latency of one zero-argument call under the protocol (see measure_interleaved)."""
    return measure_interleaved({"call": call}, protocol, on_progress=on_progress, where=where)["call"]
