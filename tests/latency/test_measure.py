"""Taking a latency in this process: interleaved rounds, retries while noisy, and the gate's warning."""

from __future__ import annotations

import itertools
import logging
import time

import pytest

from deploy.errors import MeasurementError
from deploy.latency.measure import measure, measure_interleaved
from deploy.latency.stats import MeasureProtocol, relative_standard_error

FAST = MeasureProtocol(warmup_runs=2, min_runs=10, min_time_s=0.01, rounds=3, cv_max=0.5, max_retries=0)


def sleeper(ms: float):
    return lambda: time.sleep(ms / 1000)


def test_measure_sleep_1ms_has_median_between_1_and_3_ms():
    stats = measure(sleeper(1.0), FAST, where="test")
    assert 1.0 <= stats.median_ms <= 3.0
    assert stats.median_ms <= stats.p90_ms
    assert stats.n_runs >= FAST.rounds * FAST.min_runs and len(stats.round_medians_ms) == FAST.rounds
    assert stats.cv >= 0 and stats.where == "test"


def test_measure_runs_at_least_min_time_per_round():
    calls = itertools.count()
    protocol = MeasureProtocol(warmup_runs=0, min_runs=1, min_time_s=0.02, rounds=2, max_retries=0)
    stats = measure(lambda: next(calls), protocol)
    assert stats.n_runs > 2 * 100  # a no-op runs far more than once in 20 ms
    assert stats.n_runs == next(calls)


def test_measure_interleaved_returns_every_key_and_alternates_items():
    log: list[str] = []
    calls = {name: (lambda name=name: (log.append(name), time.sleep(0.0002))) for name in ("a", "b", "c")}
    protocol = MeasureProtocol(warmup_runs=1, min_runs=5, min_time_s=0.0, rounds=4, cv_max=10.0)
    messages: list[str] = []
    stats = measure_interleaved(calls, protocol, on_progress=messages.append)
    assert list(stats) == ["a", "b", "c"]
    assert all(s.n_runs == 20 for s in stats.values())
    timed = log[3:]  # after one warm-up run each
    last_a, first_b = max(i for i, n in enumerate(timed) if n == "a"), timed.index("b")
    assert first_b < last_a  # b was measured between a's rounds, not after all of them
    assert len(messages) == 12 and messages[0].startswith("round 1/4")


def test_measure_retries_pool_rounds_of_every_item_until_precise():
    # Round 2 of the first attempt is 6x slower: the median's standard error is too large, so every
    # item gets more rounds (pooled), which brings it under the gate.
    n = itertools.count()

    def noisy() -> None:
        i = next(n)
        time.sleep(0.006 if 5 <= i < 10 else 0.001)

    protocol = MeasureProtocol(warmup_runs=0, min_runs=5, min_time_s=0.0, rounds=3, cv_max=0.5, max_retries=2)
    messages: list[str] = []
    result = measure_interleaved(
        {"noisy": noisy, "steady": lambda: time.sleep(0.001)}, protocol, on_progress=messages.append
    )
    assert any("measuring all 2 again" in m for m in messages)
    # Pooled, the slow round is 5 of 30 runs: all above Q3 + 3·IQR, so trimmed, and the round drops out.
    assert len(result["steady"].round_medians_ms) == 6
    assert len(result["noisy"].round_medians_ms) == 5 and result["noisy"].trimmed >= 5
    assert result["noisy"].n_runs == 30
    assert relative_standard_error(result["noisy"]) <= 0.5
    assert result["noisy"].median_ms < 3.0


def test_measure_gives_up_after_max_retries_with_all_rounds_pooled():
    n = itertools.count()

    def always_noisy() -> None:
        time.sleep(0.004 if (next(n) // 3) % 2 else 0.0005)  # alternate slow and fast rounds

    protocol = MeasureProtocol(warmup_runs=0, min_runs=3, min_time_s=0, rounds=2, cv_max=0.01, max_retries=2)
    stats = measure(always_noisy, protocol)
    assert next(n) == 3 * 2 * 3  # (1 + max_retries) attempts of rounds x min_runs
    assert len(stats.round_medians_ms) == 6 and relative_standard_error(stats) > 0.01


def test_measure_wraps_a_failing_call_in_measurement_error():
    def boom() -> None:
        raise RuntimeError("kaput")

    with pytest.raises(MeasurementError, match="kaput"):
        measure(boom, FAST)


NEVER_PRECISE = MeasureProtocol(warmup_runs=0, min_runs=3, min_time_s=0, rounds=2, cv_max=0.0, max_retries=0)


def _alternating() -> object:
    n = itertools.count()
    return lambda: time.sleep(0.002 if (next(n) // 3) % 2 else 0.0005)  # a slow round, then a fast one


def test_measure_interleaved_warns_once_when_items_stay_above_the_precision_gate(caplog):
    with caplog.at_level(logging.WARNING, logger="deploy.latency.measure"):
        measure_interleaved({"a": _alternating()}, NEVER_PRECISE)
    assert [r.getMessage() for r in caplog.records if "precision gate" in r.getMessage()]


def test_measure_interleaved_warns_nothing_and_leaves_the_logger_alone_when_warn_noisy_false(caplog):
    logger, seen, tick = logging.getLogger("deploy.latency.measure"), [], _alternating()

    def call() -> None:
        seen.append(logger.getEffectiveLevel())
        tick()

    with caplog.at_level(logging.WARNING, logger="deploy.latency.measure"):
        stats = measure(call, NEVER_PRECISE, warn_noisy=False)
    assert stats.n_runs == 6 and not [r for r in caplog.records if "precision gate" in r.getMessage()]
    assert set(seen) == {logging.WARNING}  # no process-wide level change: other warnings still show meanwhile
