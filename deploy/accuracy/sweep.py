"""`elastic-deploy accuracy`: the exact accuracy of many candidate subnets, evaluated into the oracle's cache.

For a supernet whose candidates must be scored on real data by the thousand: seeded random subnets of
the variant, evaluated on a split with the executor's workers (Ray: tasks of many candidates each),
merged as they arrive into the same JSON cache that deploys read (`EvalOracle`), so nothing is
evaluated twice and an interrupted sweep keeps what it finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.accuracy.oracle import EvalOracle, accuracy_cache_path, user_cache_path
from deploy.errors import DeployError
from deploy.executors.base import Executor
from deploy.families import Supernet
from deploy.progress import Progress
from deploy.search.space import SubnetConfig

SPLITS = ("val", "test")


@dataclass(frozen=True)
class SweepResult:
    variant: str
    split: str
    images: int
    candidates: int
    evaluated: int  # run now; the others came from the cache
    seconds: float
    cache_path: Path
    best: tuple[str, float]  # (subnet id, accuracy) among the candidates
    worst: tuple[str, float]

    @property
    def per_second(self) -> float:
        return self.evaluated / self.seconds if self.seconds > 0 else 0.0


def candidates(supernet: Supernet, n: int, seed: int) -> list[SubnetConfig]:
    """n distinct seeded random subnets (fewer when the space is smaller), largest and smallest first."""
    chosen = {c.id: c for c in (supernet.largest(), supernet.smallest())}
    rng = np.random.default_rng(seed)
    for _ in range(20 * n):  # bounded: a small space runs out of distinct subnets
        if len(chosen) >= n:
            break
        config = supernet.sample(rng)
        chosen.setdefault(config.id, config)
    return list(chosen.values())[:n]


def sweep(
    variant: str,
    n: int,
    *,
    seed: int = 0,
    split: str = "val",
    executor: Executor | None = None,
    cache_path: Path | None = None,
    progress: Progress | None = None,
) -> SweepResult:
    from deploy.models.checkpoint import load as load_checkpoint
    from deploy.models.checkpoint import task_for

    if split not in SPLITS:
        raise DeployError(f"unknown split '{split}'; use {' or '.join(SPLITS)} (train is what the model learned from)")
    supernet, info = load_checkpoint(variant)
    task = task_for(info)
    path = cache_path or user_cache_path(variant, info.sha256, split)
    oracle = EvalOracle(supernet, task, split, path, info.sha256)
    shipped = accuracy_cache_path(info.path)
    if shipped.exists() and shipped.resolve() != Path(path).resolve():
        oracle.load_cache(shipped)
    configs = candidates(supernet, n, seed)
    start = time.perf_counter()
    accs = oracle.evaluate_many(configs, progress=progress, executor=executor)
    seconds = time.perf_counter() - start
    # Ranked by the metric's direction: best last (for perplexity, the lowest).
    ranked = sorted(zip((task.metric.sign * a for a in accs), accs, (c.id for c in configs), strict=True))
    return SweepResult(
        variant=variant,
        split=split,
        images=len(oracle.data_split),
        candidates=len(configs),
        evaluated=oracle.evaluations,
        seconds=seconds,
        cache_path=Path(path),
        best=(ranked[-1][2], ranked[-1][1]),
        worst=(ranked[0][2], ranked[0][1]),
    )
