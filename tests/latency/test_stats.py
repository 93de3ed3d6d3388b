"""The statistics of timed runs: median, p90 and round CV, with preempted runs trimmed."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.latency.stats import relative_standard_error, stats_from_rounds


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


def test_relative_standard_error_is_the_round_cv_over_the_square_root_of_the_rounds():
    stats = stats_from_rounds([[1.0], [1.2], [1.0], [1.2]])
    assert relative_standard_error(stats) == pytest.approx(stats.cv / 2)
