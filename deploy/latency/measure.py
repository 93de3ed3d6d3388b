"""Taking a latency in this process: warm-up, several timed rounds, then the statistics of deploy/latency/stats.py.

A shared machine's speed swings between back-to-back measurements of the same model (docs/targets-and-tables.md,
"What limits the predictions"), so a measurement is several rounds whose medians must agree (CV gate, with
retries), and things that are compared are measured interleaved: round r runs every item's batch in
turn, so a burst of load hits all of them rather than one.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from collections.abc import Callable, Mapping

from deploy.errors import MeasurementError
from deploy.latency.stats import LatencyStats, MeasureProtocol, relative_standard_error, stats_from_rounds

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MAX_RUNS_PER_ROUND = 1_000_000


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


def measure_interleaved(
    calls: Mapping[str, Callable[[], object]],
    protocol: MeasureProtocol,
    on_progress: Progress | None = None,
    seed: int = 0,
    where: str = "",
    self_timed: bool = False,
    warn_noisy: bool = True,
) -> dict[str, LatencyStats]:
    """Measure every call in the same time window: each round runs every call's batch, in shuffled order.

    The speed of these machines swings by tens of percent within seconds, so what is compared must
    share its time window: many short rounds, every item in each. While some item's median is not
    precise enough (round CV / √rounds > protocol.cv_max), ALL items get another `rounds` rounds,
    pooled with the earlier ones (re-measuring only the noisy ones would put them in another window),
    up to protocol.max_retries times. With `self_timed`, each call returns its own duration in ms
    (a device clock), as a backend's `device_timed_call` does. Items still above the gate then are kept and
    warned about, unless `warn_noisy` is False: a caller that states the spread itself (the drift check).
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
    if noisy and warn_noisy:
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
    warn_noisy: bool = True,
) -> LatencyStats:
    """Latency of one zero-argument call under the protocol (see measure_interleaved)."""
    return measure_interleaved(
        {"call": call}, protocol, on_progress=on_progress, where=where, warn_noisy=warn_noisy
    )["call"]
