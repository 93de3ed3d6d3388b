from __future__ import annotations

import socket

from deploy.latency.stats import MeasureProtocol
from deploy.runners import get_runner
from deploy.runners.local import LocalRunner
from deploy.runners.specs import LocalSpec

QUICK = MeasureProtocol(warmup_runs=3, min_runs=10, min_time_s=0.01, rounds=2, cv_max=1.0, max_retries=0)


def test_local_runner_benchmarks_an_ort_artifact(artifacts):
    backend, items = artifacts
    runner = get_runner(LocalSpec())
    assert isinstance(runner, LocalRunner) and runner.name == "local"
    stats = runner.benchmark(backend, *items[0], QUICK)
    assert 0 < stats.median_ms <= stats.p90_ms < 1000
    assert stats.n_runs >= 20 and len(stats.round_medians_ms) == 2
    assert stats.where == f"local:{socket.gethostname()}"


def test_benchmark_many_returns_stats_in_item_order(artifacts):
    backend, items = artifacts
    messages: list[str] = []
    runner = LocalRunner()
    stats = runner.benchmark_many(backend, [items[0], items[1], items[0]], QUICK, on_progress=messages.append)
    assert len(stats) == 3 and all(s.n_runs >= 20 for s in stats)
    assert len(messages) == 3 * QUICK.rounds


def test_describe_names_host_cpu_and_cores():
    text = LocalRunner().describe()
    assert text.startswith(socket.gethostname()) and "cores" in text
