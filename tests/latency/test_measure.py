from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from deploy.errors import MeasurementError
from deploy.latency.measure import measure, measure_interleaved, relative_standard_error, stats_from_rounds
from deploy.latency.stats import MeasureProtocol

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


def test_stats_from_rounds_computes_median_p90_and_round_cv():
    stats = stats_from_rounds([[1.0, 2.0, 3.0], [2.0, 2.0, 2.0]])
    assert stats.median_ms == 2.0 and stats.n_runs == 6
    assert stats.round_medians_ms == (2.0, 2.0) and stats.cv == 0.0
    assert stats.p90_ms == pytest.approx(2.5)
    assert stats.trimmed == 0  # IQR 0: no scale to call the 3.0 an outlier


def _steady_rounds(rounds: int = 5, runs: int = 20) -> list[list[float]]:
    # 1.00 .. 1.19 ms in every round: a clean measurement with some spread.
    return [[1.0 + 0.01 * i for i in range(runs)] for _ in range(rounds)]


def test_stats_from_rounds_trims_and_counts_huge_outliers():
    rounds = _steady_rounds()
    rounds[1][3] = 100.0  # preempted runs: 100x the median
    rounds[3][0] = 250.0
    rounds[4][7] = 80.0
    stats = stats_from_rounds(rounds)
    assert stats.trimmed == 3 and stats.n_runs == 100
    clean = [x for r in rounds for x in r if x < 10]
    assert stats.median_ms == pytest.approx(float(np.median(clean)))
    assert stats.mean_ms == pytest.approx(float(np.mean(clean)), abs=1e-6)
    assert stats.std_ms == pytest.approx(float(np.std(clean, ddof=1)), abs=1e-6)
    assert stats.p90_ms < 1.2 and stats.mean_ms < 1.2
    assert stats.to_json()["trimmed"] == 3


def test_stats_from_rounds_trims_nothing_when_clean():
    rounds = _steady_rounds()
    runs = [x for r in rounds for x in r]
    stats = stats_from_rounds(rounds)
    assert stats.trimmed == 0 and stats.n_runs == 100
    assert stats.mean_ms == pytest.approx(float(np.mean(runs)), abs=1e-6)
    assert stats.p90_ms == pytest.approx(float(np.percentile(runs, 90)), abs=1e-6)
    assert stats.to_json()["trimmed"] == 0


def test_stats_from_rounds_computes_round_medians_on_trimmed_runs_and_drops_emptied_rounds():
    rounds = _steady_rounds(rounds=6)
    rounds[2] = [500.0] * 4  # a round that was preempted throughout
    rounds[4][0] = 300.0
    stats = stats_from_rounds(rounds)
    assert stats.trimmed == 5 and stats.n_runs == 5 * 20 + 4
    assert len(stats.round_medians_ms) == 5  # the all-outlier round is left out
    assert all(m == pytest.approx(1.095) for m in stats.round_medians_ms[:2])
    assert stats.round_medians_ms[3] == pytest.approx(float(np.median(rounds[4][1:])))
    assert stats.cv < 0.01


def test_stats_from_rounds_trims_nothing_when_too_few_runs():
    stats = stats_from_rounds([[1.0, 1.1, 1.2], [1.0, 100.0]])
    assert stats.trimmed == 0 and stats.mean_ms > 10


def test_measure_wraps_a_failing_call_in_measurement_error():
    def boom() -> None:
        raise RuntimeError("kaput")

    with pytest.raises(MeasurementError, match="kaput"):
        measure(boom, FAST)
