"""Accuracy-evaluation throughput: the local executor vs Ray with 1 and 2 workers, side by side in one run.

The same seeded candidate subnets of a shipped model are evaluated exactly on its val split (750 images)
by three arms, each from a freshly loaded checkpoint and an empty oracle (nothing cached, including
elastic_vit's per-config BatchNorm statistics):

- local: `LocalExecutor`, in this process (torch's default threads: 2 here),
- local 1 thread: the same with `torch.set_num_threads(1)` (what one Ray task gets),
- ray ×1: `RayExecutor(workers=1)`, one task at a time (1 torch thread each),
- ray ×2: `RayExecutor(workers=2)`, two tasks at a time,

on one local Ray cluster (`ray.init(num_cpus=2)`, started once, its start-up timed apart). The arms run in
rotated order for several repeats, so a slow moment of this shared VM hits every arm; reported are
candidates per second (median over repeats) and the ratios. A warm-up evaluation starts the Ray
workers first (what a long sweep pays once). Every arm must return the same accuracies.

    python -m benchmarks.ray_throughput [--model elastic_vit_mnist] [--candidates 24] [--repeats 3]   # ~6 min
    python -m benchmarks.ray_throughput --quick    # smoke test: poa_vit_mnist, 2 candidates on 100 images, 1 repeat
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import harness
from deploy.accuracy.oracle import EvalOracle
from deploy.accuracy.sweep import candidates
from deploy.executors.base import Executor
from deploy.executors.local import LocalExecutor
from deploy.models.checkpoint import load as load_checkpoint
from deploy.tasks.base import ArrayTask
from deploy.tasks.mnist import load_splits

log = logging.getLogger("benchmarks.ray_throughput")

ARMS = ("local", "local 1 thread", "ray ×1", "ray ×2")


def run_arm(
    model: str, executor: Executor, n: int, seed: int, threads: int | None = None, images: int | None = None
) -> tuple[float, list[float]]:
    """Seconds to evaluate n candidates from scratch, and their accuracies (threads: this process's torch)."""
    import torch

    supernet, info = load_checkpoint(model)  # fresh: no per-config caches from an earlier arm
    val = load_splits(int(info.meta.get("data_seed", 0))).val
    oracle = EvalOracle(supernet, ArrayTask.of(val.x[:images], val.y[:images]), "val", None, info.sha256)
    configs = candidates(supernet, n, seed)
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        start = time.perf_counter()
        accs = oracle.evaluate_many(configs, progress=False, executor=executor)
        return time.perf_counter() - start, accs
    finally:
        torch.set_num_threads(default)


def measure(model: str, n: int, repeats: int, seed: int, images: int | None = None) -> dict[str, Any]:
    import ray
    import torch

    from deploy.executors.ray_cluster import RayExecutor

    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    cluster_start_s = time.perf_counter() - t0
    try:
        executors: dict[str, Executor] = {
            "local": LocalExecutor(),
            "local 1 thread": LocalExecutor(),
            "ray ×1": RayExecutor(workers=1),
            "ray ×2": RayExecutor(workers=2),
        }
        threads = {"local 1 thread": 1}
        # This process's first evaluations pay torch's start; the first Ray evaluation starts both workers.
        run_arm(model, executors["local"], 2, seed + 1, images=images)
        warm_s, _ = run_arm(model, executors["ray ×2"], 2, seed + 1, images=images)
        seconds: dict[str, list[float]] = {arm: [] for arm in ARMS}
        results: dict[str, list[float]] = {}
        for r in range(repeats):
            order = ARMS[r % len(ARMS) :] + ARMS[: r % len(ARMS)]
            for arm in order:
                took, accs = run_arm(model, executors[arm], n, seed, threads.get(arm), images)
                seconds[arm].append(took)
                results.setdefault(arm, accs)
                log.info("repeat %d, %s: %d candidates in %.1f s (%.2f/s)", r + 1, arm, n, took, n / took)
        same = all(results[arm] == results["local"] for arm in ARMS)
    finally:
        ray.shutdown()
    rate: Callable[[str], float] = lambda arm: n / statistics.median(seconds[arm])  # noqa: E731
    return {
        "model": model,
        "candidates": n,
        "repeats": repeats,
        "seed": seed,
        "split": "val",
        "images": images or 750,
        "per_second": {arm: round(rate(arm), 3) for arm in ARMS},
        "seconds": {arm: [round(s, 2) for s in seconds[arm]] for arm in ARMS},
        "ratios": {
            "ray ×2 / ray ×1": round(rate("ray ×2") / rate("ray ×1"), 3),
            "ray ×2 / local": round(rate("ray ×2") / rate("local"), 3),
            "ray ×1 / local": round(rate("ray ×1") / rate("local"), 3),
            "ray ×1 / local 1 thread": round(rate("ray ×1") / rate("local 1 thread"), 3),
        },
        "same_accuracies": same,
        "cluster_start_s": round(cluster_start_s, 1),
        "warm_up_s": round(warm_s, 1),
        "local_torch_threads": torch.get_num_threads(),
        "loadavg_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "ray": ray.__version__,
    }


def markdown(r: dict[str, Any]) -> str:
    date, machine = harness.describe(r)
    ray_version = r.get("ray") or r["versions"]["ray"]
    torch_version = r["environment"]["versions"]["torch"] if "environment" in r else r["versions"]["torch"]
    rows = [
        f"| {arm} | {r['per_second'][arm]:.2f} | {', '.join(f'{s:.1f}' for s in r['seconds'][arm])} |" for arm in ARMS
    ]
    return "\n".join(
        [
            f"# Accuracy evaluation throughput: local vs Ray with 1 and 2 workers ({r['model']})",
            "",
            f"Measured {date} on {machine}, "
            f"Ray {ray_version}, torch {torch_version}. {r['candidates']} seeded candidate "
            f"subnets (seed {r['seed']}) evaluated exactly on the {r['images']} {r['split']} images, from a "
            f"fresh checkpoint and an empty cache per arm; arms in rotated order, {r['repeats']} repeats, in one "
            f"run. Local: this process with {r['local_torch_threads']} torch threads. Ray: one local cluster "
            "(2 CPUs), one task per chunk of candidates, 1 torch thread per task.",
            "",
            "| arm | candidates/s (median) | seconds per repeat |",
            "|---|---|---|",
            *rows,
            "",
            f"Ratios (same run): ray ×2 / ray ×1 = **{r['ratios']['ray ×2 / ray ×1']:.2f}×**, "
            f"ray ×2 / local = **{r['ratios']['ray ×2 / local']:.2f}×**, "
            f"ray ×1 / local = {r['ratios']['ray ×1 / local']:.2f}×, "
            f"ray ×1 / local 1 thread = {r['ratios']['ray ×1 / local 1 thread']:.2f}× (the cost of a task). "
            f"Same accuracies from every arm: {'yes' if r['same_accuracies'] else '**NO**'}.",
            "",
            f"Paid once, not in the figures: starting the local cluster {r['cluster_start_s']:.1f} s; the first "
            f"Ray evaluation (starting 2 workers, importing torch, 2 candidates) {r['warm_up_s']:.1f} s. "
            f"Load average (1 min): {r['loadavg_1m']['start']} at start, {r['loadavg_1m']['end']} at end.",
            "",
        ]
    )


def run(args: argparse.Namespace) -> harness.Result:
    if args.quick:
        return measure("poa_vit_mnist", 2, 1, args.seed, images=100)
    return measure(args.model, args.candidates, args.repeats, args.seed)


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="elastic_vit_mnist")
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)


COMPARISON = harness.Comparison("ray_throughput", __doc__, run, markdown, arguments, distributions=("ray",))

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
