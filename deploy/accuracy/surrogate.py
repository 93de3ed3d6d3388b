"""The accuracy surrogate: a ridge regression from a config's features, so the selector can score every
config of a space in milliseconds (fitted on real evaluations from the oracle)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from deploy.search.space import SearchSpace, SubnetConfig

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

LOGIT_EPS = 1e-4
L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)



def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation (ties get their average rank)."""

    def ranks(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="mergesort")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=float)
        for value in np.unique(v):  # average the ranks of ties
            tie = v == value
            if tie.sum() > 1:
                r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(np.asarray(a, float)), ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


@dataclass(frozen=True)
class PredictorQuality:
    """Out-of-sample quality: fit on `n_fit` configs, scored on the `n_holdout` others."""

    n_fit: int
    n_holdout: int
    spearman: float
    mae_pp: float  # mean absolute error × 100: percentage points for a bounded metric (a fraction)
    l2: float
    bounded: bool = True  # a fraction (top-1); else a loss or perplexity, whose MAE is in its own units

    def __str__(self) -> str:
        mae = f"{self.mae_pp:.2f} pp" if self.bounded else f"{self.mae_pp / 100:.3g} (the metric's units)"
        return (
            f"Spearman {self.spearman:.3f}, MAE {mae} on {self.n_holdout} held-out configs "
            f"(fit on {self.n_fit}, l2={self.l2:g})"
        )


def _ridge(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    # Centre so that the intercept is not penalised.
    mx, my = x.mean(axis=0), y.mean()
    xc = x - mx
    w = np.linalg.solve(xc.T @ xc + l2 * np.eye(x.shape[1]), xc.T @ (y - my))
    return w, float(my - mx @ w)


def _choose_l2(x: np.ndarray, y: np.ndarray, seed: int, folds: int = 5) -> float:
    if len(y) < 2 * folds:
        return 1e-1
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    errors = []
    for l2 in L2_GRID:
        err = 0.0
        for k in range(folds):
            w, b = _ridge(x[fold != k], y[fold != k], l2)
            err += float(np.sum((x[fold == k] @ w + b - y[fold == k]) ** 2))
        errors.append(err)
    return L2_GRID[int(np.argmin(errors))]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return np.log(p / (1.0 - p))


def _log(v: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(v, 1e-12))


# How a metric is fitted: bounded in [0, 1] (accuracy) on its logit, positive (perplexity, loss) on its
# log, anything else as it is; each with its inverse.
TRANSFORMS = {
    "logit": (lambda v: _logit(v), lambda z: _sigmoid(z)),
    "log": (_log, np.exp),
    "identity": (lambda v: v, lambda z: z),
}


def transform_for(bounded: bool, values: Sequence[float]) -> str:
    if bounded:
        return "logit"
    return "log" if min(values) > 0 else "identity"


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


class FittedAccuracyPredictor:
    """Ridge regression from a config's features to the logit of its accuracy.

    Features: the one-hot gene vector; for every pair of genes, whether both sit at their first option
    (the family's most reduced choice, for MatFormer a skipped layer: removals compound, which an
    additive model misses); plus whatever `extra(config)` adds (e.g. parameter fraction). Fitting the
    logit keeps predictions in (0, 1) and makes the effects of removals closer to additive; both raise
    the held-out rank correlation on the shipped MNIST checkpoint (docs/families.md#training-notes).
    """

    def __init__(
        self,
        space: SearchSpace,
        weights: np.ndarray,
        bias: float,
        l2: float,
        quality: PredictorQuality | None,
        extra: Callable[[SubnetConfig], Sequence[float]] | None = None,
        transform: str = "logit",
    ) -> None:
        self.transform = transform
        self._inverse = TRANSFORMS[transform][1]
        self.space = space
        self.weights = weights
        self.bias = bias
        self.l2 = l2
        self.quality = quality
        self.extra = extra

    @staticmethod
    def featurize(
        space: SearchSpace,
        config: SubnetConfig,
        extra: Callable[[SubnetConfig], Sequence[float]] | None = None,
    ) -> np.ndarray:
        first = np.array([v == 0 for v in space.encode(config)], dtype=float)
        pairs = np.outer(first, first)[np.triu_indices(len(first), k=1)]
        extras = [float(v) for v in extra(config)] if extra is not None else []
        return np.concatenate([space.features(config), pairs, extras])

    @classmethod
    def fit(
        cls,
        space: SearchSpace,
        configs: Sequence[SubnetConfig],
        accuracies: Sequence[float],
        l2: float | None = None,
        extra: Callable[[SubnetConfig], Sequence[float]] | None = None,
        holdout: float = 0.2,
        seed: int = 0,
        transform: str = "logit",
    ) -> FittedAccuracyPredictor:
        """Score on a held-out `holdout` fraction, then refit on everything (l2: None = cross-validated)."""
        if len(configs) != len(accuracies) or not configs:
            raise ValueError("fit needs one accuracy per config and at least one config")
        x = np.stack([cls.featurize(space, c, extra) for c in configs])
        acc = np.asarray(accuracies, dtype=float)
        forward, inverse = TRANSFORMS[transform]
        z = forward(acc)
        quality = None
        n_hold = round(holdout * len(z))
        if n_hold >= 5 and len(z) - n_hold >= 5:
            perm = np.random.default_rng(seed).permutation(len(z))
            hold, fit = perm[:n_hold], perm[n_hold:]
            l2_fit = l2 if l2 is not None else _choose_l2(x[fit], z[fit], seed)
            w, b = _ridge(x[fit], z[fit], l2_fit)
            pred = inverse(x[hold] @ w + b)
            quality = PredictorQuality(
                n_fit=len(fit),
                n_holdout=len(hold),
                spearman=spearman(pred, acc[hold]),
                mae_pp=float(np.mean(np.abs(pred - acc[hold])) * 100),
                l2=l2_fit,
                bounded=transform == "logit",
            )
        l2_all = l2 if l2 is not None else _choose_l2(x, z, seed)
        w, b = _ridge(x, z, l2_all)
        return cls(space, w, b, l2_all, quality, extra, transform)

    def predict(self, config: SubnetConfig) -> float:
        return float(self._inverse(self.featurize(self.space, config, self.extra) @ self.weights + self.bias))

    def predict_many(self, configs: Iterable[SubnetConfig]) -> np.ndarray:
        x = np.stack([self.featurize(self.space, c, self.extra) for c in configs])
        return self._inverse(x @ self.weights + self.bias)


