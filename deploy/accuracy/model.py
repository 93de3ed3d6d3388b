"""What the selector uses: a surrogate fitted on real evaluations to screen the space, the oracle for finalists.

`AccuracyModel` combines the oracle (deploy/accuracy/oracle.py) and the fitted surrogate
(deploy/accuracy/surrogate.py): `surrogate` for screening, `exact` for the finalists, `known` for what
the cache already holds. `build_accuracy_model` loads the shipped cache, evaluates what it lacks and fits.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.accuracy.oracle import EvalOracle, accuracy_cache_path, user_cache_path
from deploy.accuracy.surrogate import FittedAccuracyPredictor, PredictorQuality, transform_for
from deploy.families import Supernet
from deploy.progress import Progress
from deploy.search.space import SubnetConfig

if TYPE_CHECKING:
    from deploy.executors.base import Executor
    from deploy.models.checkpoint import CheckpointInfo

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 200
MIN_SAMPLES = 120  # fewer and the predictor's held-out quality gets unreliable



@dataclass(frozen=True)
class AccuracyModel:
    """`surrogate` to screen the space; `exact` for finalists; `known` for what the cache already holds.

    The surrogate itself is fitted on the fixed reference configs only, so that evaluations cached by
    earlier deploys cannot move its guesses; but a real accuracy in the cache is never replaced by a
    guess (`known`), so a larger cache can only make a choice better informed.
    """

    oracle: EvalOracle
    predictor: FittedAccuracyPredictor
    reference: frozenset[str] = frozenset()  # ids whose exact accuracy the surrogate returns

    @property
    def quality(self) -> PredictorQuality | None:
        return self.predictor.quality

    def surrogate(self, config: SubnetConfig) -> float:
        hit = self.oracle.cached(config) if config.id in self.reference else None
        return hit if hit is not None else self.predictor.predict(config)

    def surrogate_many(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        out = self.predictor.predict_many(configs)
        for i, config in enumerate(configs):
            hit = self.oracle.cached(config) if config.id in self.reference else None
            if hit is not None:
                out[i] = hit
        return out

    def exact(self, config: SubnetConfig) -> float:
        return self.oracle(config)

    def known(self, config: SubnetConfig) -> float | None:
        """A real accuracy already evaluated (shipped or user cache): it always beats a guess in selection."""
        return self.oracle.cached(config)


def uniform_configs(supernet: Supernet) -> dict[str, SubnetConfig]:
    """Every gene at the same option (for MatFormer: all layers at one FFN width), where valid."""
    space = supernet.space()
    n = min(len(g.options) for g in space.genes)
    out = {}
    for k in range(n):
        genes = tuple(k for _ in space.genes)
        if space.is_valid(genes):
            values = {g.options[k] for g in space.genes}
            name = f"uniform_{values.pop()}" if len(values) == 1 else f"uniform_option{k}"
            out[name] = space.decode(genes)
    return out


def reference_configs(supernet: Supernet, n_samples: int = DEFAULT_SAMPLES, seed: int = 0) -> list[SubnetConfig]:
    """What the shipped cache holds: largest, smallest, the uniform configs and a seeded sample."""
    found = {c.id: c for c in (supernet.largest(), supernet.smallest(), *uniform_configs(supernet).values())}
    rng = np.random.default_rng(seed)
    sampled: dict[str, SubnetConfig] = {}
    for _ in range(20 * n_samples):  # a space smaller than n_samples ends the loop here
        if len(sampled) >= n_samples:
            break
        config = supernet.sample(rng)
        if config.id not in found:
            sampled.setdefault(config.id, config)
    return [*found.values(), *sampled.values()]


def param_fraction(supernet: Supernet) -> Callable[[SubnetConfig], tuple[float]]:
    full = supernet.param_count(supernet.largest())
    return lambda config: (supernet.param_count(config) / full,)


def build_accuracy_model(
    supernet: Supernet,
    info: CheckpointInfo,
    n_samples: int | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
    cache_path: Path | None = None,
    split: str = "val",
    executor: Executor | None = None,
) -> AccuracyModel:
    """Load the shipped cache, evaluate what it lacks, fit the predictor.

    `n_samples` and `seed` default to what training used for the shipped cache (recorded in the
    checkpoint's meta), so that a shipped checkpoint needs no evaluation here.
    New evaluations go to `cache_path` (default: the user cache, so that a checkout's shipped file is
    only rewritten by training, which passes the shipped path).
    """
    from deploy.models.checkpoint import task_for

    cached = info.meta.get("accuracy_cache", {})
    default_samples = info.spec.accuracy_samples if info.spec is not None else DEFAULT_SAMPLES
    n_samples = int(cached.get("samples", default_samples)) if n_samples is None else n_samples
    seed = int(cached.get("seed", 0)) if seed is None else seed
    task = task_for(info)
    shipped = accuracy_cache_path(info.path)
    target = cache_path if cache_path is not None else user_cache_path(supernet.variant, info.sha256, split)
    oracle = EvalOracle(supernet, task, split, target, info.sha256)
    if Path(target).resolve() != shipped.resolve() and shipped.exists():
        oracle.load_cache(shipped)
    # Fitted on the fixed reference set only: later cached evaluations must not move the surrogate.
    configs = list({c.id: c for c in reference_configs(supernet, n_samples, seed)}.values())
    accs = oracle.evaluate_many(configs, progress=progress, executor=executor)
    transform = transform_for(task.metric.bounded, accs)
    predictor = FittedAccuracyPredictor.fit(
        supernet.space(), configs, accs, extra=param_fraction(supernet), seed=seed, transform=transform
    )
    if predictor.quality is not None:
        log.info("accuracy predictor for %s: %s", supernet.variant, predictor.quality)
    return AccuracyModel(oracle, predictor, frozenset(c.id for c in configs))


def describe(model: AccuracyModel) -> dict[str, Any]:
    """A JSON-able summary of the accuracy model (for reports)."""
    q = model.quality
    return {
        "exact_configs": len(model.oracle),
        "split": model.oracle.split,
        "quality": None if q is None else dataclasses.asdict(q),
    }
