"""The accuracy oracle: exact (evaluated, cached) accuracies of subnets.

`EvalOracle` runs the supernet at a config on a held-out split and caches the result by config id, in
memory and in a JSON file keyed by the checkpoint's sha256, so an evaluation is made once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from deploy import workspace
from deploy.executors.local import LocalExecutor
from deploy.families import Supernet
from deploy.io import atomic_write_json, read_json
from deploy.progress import Progress, ProgressTask
from deploy.search.space import SubnetConfig
from deploy.tasks.base import Split, Task, predictor

if TYPE_CHECKING:
    from deploy.executors.base import Executor

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
SAVE_EVERY = 20  # evaluate_many persists this often, so an interrupted run keeps most of its work


def accuracy_cache_path(weights: Path) -> Path:
    """`<stem>.accuracy.json` beside `<stem>.safetensors` (the shipped cache)."""
    return Path(weights).with_suffix(".accuracy.json")


def user_cache_path(variant: str, sha256: str, split: str) -> Path:
    return workspace.cache_dir() / "accuracy" / f"{variant}-{sha256[:12]}.{split}.json"


def evaluate(supernet: Supernet, task: Task, split: str | Split, config: SubnetConfig | None) -> float:
    """The task's metric of the supernet run at `config` (None: the full model) on a split."""
    was_training = supernet.training
    supernet.eval()
    try:
        return task.evaluate(predictor(supernet, supernet.input_names(), config=config), split)
    finally:
        supernet.train(was_training)


class EvalOracle:
    """The task's exact metric of `supernet` at a config on a split, cached by config id and checkpoint sha256.

    (Named for accuracy, the first metric; for a lower-is-better task it holds that task's metric.)"""

    def __init__(
        self,
        supernet: Supernet,
        task: Task,
        split: str,
        cache_path: Path | None,
        checkpoint_sha256: str,
    ) -> None:
        self.supernet = supernet
        self.task = task
        self.data_split = task.split(split)
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self.checkpoint_sha256 = checkpoint_sha256
        self.split = split
        self.data = self.data_split.fingerprint()
        self.evaluations = 0  # evaluations actually run (not served from a cache)
        self._acc: dict[str, float] = {}
        self._configs: dict[str, SubnetConfig] = {}
        if self.cache_path is not None and self.cache_path.exists():
            self.load_cache(self.cache_path)

    def load_cache(self, path: Path) -> int:
        """Take the entries of a cache file made for this checkpoint, split and data; returns how many."""
        try:
            data = read_json(path)
            if data.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {CACHE_FORMAT}")
            for key, want in (
                ("checkpoint_sha256", self.checkpoint_sha256),
                ("split", self.split),
                ("data", self.data),
            ):
                if data.get(key) != want:
                    log.warning(
                        "%s: ignoring cached accuracies made for another %s (%s, expected %s)",
                        path,
                        key,
                        str(data.get(key))[:12],
                        str(want)[:12],
                    )
                    return 0
            entries = [(SubnetConfig.from_json(e["config"]), float(e["accuracy"])) for e in data["entries"]]
        except Exception as exc:  # a cache is derived data: a bad one is rebuilt, not fatal
            log.warning("%s: ignoring unreadable accuracy cache (%s)", path, str(exc).splitlines()[0])
            return 0
        for config, acc in entries:
            self._configs[config.id] = config
            self._acc[config.id] = acc
        log.debug("%s: %d cached accuracies", path, len(entries))
        return len(entries)

    def cached(self, config: SubnetConfig) -> float | None:
        return self._acc.get(config.id)

    def __contains__(self, config: object) -> bool:
        return isinstance(config, SubnetConfig) and config.id in self._acc

    def __len__(self) -> int:
        return len(self._acc)

    def entries(self) -> list[tuple[SubnetConfig, float]]:
        """Every cached (config, accuracy), sorted by config id."""
        return [(self._configs[k], self._acc[k]) for k in sorted(self._acc)]

    def _evaluate(self, config: SubnetConfig) -> float:
        return self._store(config, evaluate(self.supernet, self.task, self.data_split, config))

    def _store(self, config: SubnetConfig, acc: float) -> float:
        self.evaluations += 1
        self._configs[config.id] = config
        self._acc[config.id] = acc
        return acc

    def __call__(self, config: SubnetConfig) -> float:
        hit = self._acc.get(config.id)
        if hit is not None:
            return hit
        acc = self._evaluate(config)
        self.save()
        return acc

    def evaluate_many(
        self, configs: Iterable[SubnetConfig], progress: Progress | None = None, executor: Executor | None = None
    ) -> list[float]:
        """Accuracies of `configs`, evaluating those not cached (with a Ray executor: as tasks, many configs
        each); results are merged into this cache as they arrive, so an interruption keeps most of them."""
        configs = list(configs)
        todo = list({c.id: c for c in configs if c.id not in self._acc}.values())
        if todo:
            log.info("evaluating %d configs on %d %s examples", len(todo), len(self.data_split), self.split)
            results = (executor or LocalExecutor()).evaluate(self.supernet, self.task, self.data_split, todo)
            task = ProgressTask(progress, f"accuracy ({self.split})", len(todo))
            for i, (config, acc) in enumerate(results, 1):
                self._store(config, acc)
                task.advance()
                if i % SAVE_EVERY == 0:
                    self.save()
            self.save()
        return [self._acc[c.id] for c in configs]

    def save(self) -> None:
        if self.cache_path is None:
            return
        atomic_write_json(
            self.cache_path,
            {
                "format": CACHE_FORMAT,
                "variant": self.supernet.variant,
                "checkpoint_sha256": self.checkpoint_sha256,
                "split": self.split,
                "data": self.data,
                "images": len(self.data_split),
                "metric": self.task.metric.to_json(),
                "entries": [{"id": c.id, "config": c.to_json(), "accuracy": acc} for c, acc in self.entries()],
            },
        )


