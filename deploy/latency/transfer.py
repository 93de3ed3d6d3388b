"""Latency that transfers to a new device from a few measurements there.

An ESTIMATED table (deploy/latency/estimate.py) is one measured table times one factor, which transfers well
between GPUs and poorly between a desktop CPU and a phone (benchmarks/results/estimate_transfer.md). Here N
subnets measured on the destination decide how the source information maps to it. Every subnet is a row of
features taken from the source(s): per block kind, the sum of the source table's medians over the subnet's
blocks of that kind (one column per source × kind; a source may also give one "total" column). Candidate
models, simplest first:

- factor: y = c · t, t the first source's total (row sum of its columns), c the median ratio;
- affine: y = a · t + b;
- power: log y = log a + b · log t (latency ratios that drift with size);
- kind_scales: y = Σ s_k · x_k, s_k ≥ 0 (a table whose entries are source entries × the kind's scale);
- kind_scales_offset: the same plus a free offset per subnet (a per-inference cost);
- ridge_log: log y on every source's log total and each kind's share of it, ridge-shrunk.

Each declares its parameter count; a model needs N ≥ parameters + 2 (factor: N ≥ 2; ridge_log, being
shrunk, N ≥ 5). The choice is by cross-validated (leave-one-out up to `folds`) relative error on the N
measurements: the simplest model within `parsimony` standard errors of the best wins. Its held-out
figures are those same cross-validated predictions, so slightly optimistic (the choice saw them).
Fits minimise relative error, like the table's calibration. Pure numpy (solvers.py: NNLS, ridge), no file I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

from deploy.errors import TransferError
from deploy.latency.solvers import nnls, nnls_offset, ridge_loo

log = logging.getLogger(__name__)

MIN_SAMPLES = 2


@dataclass(frozen=True, order=True)
class Column:
    """One feature column: a source device (table or target name) and a block kind ("total": the whole)."""

    source: str
    kind: str = "total"

    def __str__(self) -> str:
        return f"{self.source}/{self.kind}"


@dataclass(frozen=True)
class HeldOut:
    """Relative errors of predictions made without the predicted subnet (cross-validation folds)."""

    median_abs_pct: float
    mean_abs_pct: float
    within_5pct: float
    within_10pct: float
    folds: int


@dataclass(frozen=True)
class Candidate:
    model: str
    n_params: int
    heldout: HeldOut | None  # None: skipped
    skipped: str | None = None


@dataclass(frozen=True)
class TransferFit:
    """The chosen model: `coef` aligned with `terms` (the model's own design), applied by `predict`."""

    model: str
    columns: tuple[Column, ...]
    terms: tuple[str, ...]
    coef: tuple[float, ...]
    n: int
    n_params: int
    heldout: HeldOut
    candidates: tuple[Candidate, ...]
    support: tuple[int, ...]  # per column: how many measured subnets had a non-zero value

    def predict(self, features: np.ndarray) -> np.ndarray:
        return predict(self, features)


@dataclass(frozen=True)
class KindMultipliers:
    """destination entry of a block of kind k = Σ_source scales[(source, k)] × source entry; whole subnet
    = Σ destination entries + offset_ms (the destination table's calibration: slope 1, intercept offset_ms)."""

    model: str
    scales: Mapping[Column, float]
    offset_ms: float
    unsupported: tuple[Column, ...]  # kinds no measured subnet contained: their scale is the pooled factor


# --- models --------------------------------------------------------------------------------------------


def _sources(cols: tuple[Column, ...]) -> list[str]:
    return list(dict.fromkeys(c.source for c in cols))


def _totals(x: np.ndarray, cols: tuple[Column, ...]) -> np.ndarray:
    """(n, sources): each source's whole-subnet sum, sources in first-seen column order."""
    return np.stack([x[:, [c.source == s for c in cols]].sum(axis=1) for s in _sources(cols)], axis=1)


class _Model:
    """A transfer model over the feature columns; coef is in its own design, named by terms()."""

    name = ""
    linear = False  # prediction linear in the source block latencies: can be written as a table
    fixed_terms: tuple[str, ...] = ()

    def n_params(self, cols: tuple[Column, ...]) -> int:
        return len(self.terms(cols))

    def min_samples(self, cols: tuple[Column, ...]) -> int:
        return self.n_params(cols) + 2

    def available(self, cols: tuple[Column, ...]) -> bool:
        return True

    def terms(self, cols: tuple[Column, ...]) -> tuple[str, ...]:
        return self.fixed_terms

    def fit(self, x: np.ndarray, y: np.ndarray, cols: tuple[Column, ...]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, coef: np.ndarray, x: np.ndarray, cols: tuple[Column, ...]) -> np.ndarray:
        raise NotImplementedError


class _Factor(_Model):
    name, linear, fixed_terms = "factor", True, ("scale",)

    def min_samples(self, cols):
        return MIN_SAMPLES  # one parameter checked on one held-out subnet: the least that says anything

    def fit(self, x, y, cols):
        return np.array([float(np.median(y / _totals(x, cols)[:, 0]))])

    def predict(self, coef, x, cols):
        return coef[0] * _totals(x, cols)[:, 0]


class _Affine(_Model):
    name, linear, fixed_terms = "affine", True, ("slope", "offset_ms")  # slope ≥ 0: slower stays slower

    def fit(self, x, y, cols):
        slope, offset = nnls_offset(_totals(x, cols)[:, :1], y)
        return np.array([slope[0], offset])

    def predict(self, coef, x, cols):
        return coef[0] * _totals(x, cols)[:, 0] + coef[1]


class _Power(_Model):
    name, fixed_terms = "power", ("log_scale", "exponent")

    def fit(self, x, y, cols):
        lt, ly = np.log(_totals(x, cols)[:, 0]), np.log(y)
        b = max(float(np.cov(lt, ly, bias=True)[0, 1] / max(np.var(lt), 1e-300)), 0.0)  # exponent ≥ 0, as affine
        return np.array([float(np.mean(ly - b * lt)), b])

    def predict(self, coef, x, cols):
        return np.exp(coef[0] + coef[1] * np.log(_totals(x, cols)[:, 0]))


class _KindScales(_Model):
    name, linear, offset = "kind_scales", True, False

    def available(self, cols):
        return len(cols) >= 2  # one column: the factor or affine model already

    def terms(self, cols):
        return tuple(str(c) for c in cols) + (("offset_ms",) if self.offset else ())

    def fit(self, x, y, cols):
        if not self.offset:
            return nnls(x / y[:, None], np.ones_like(y))  # relative residuals
        s, c = nnls_offset(x, y)
        return np.append(s, c)

    def predict(self, coef, x, cols):
        return x @ coef[: len(cols)] + (coef[-1] if self.offset else 0.0)


class _KindScalesOffset(_KindScales):
    name, offset = "kind_scales_offset", True


class _RidgeLog(_Model):
    """log y on each source's log total and, for a source with several kinds, each kind's share of it."""

    name = "ridge_log"
    LAMBDAS = np.logspace(-4, 2, 13)

    def _split(self, cols):
        return [(s, [i for i, c in enumerate(cols) if c.source == s]) for s in _sources(cols)]

    def _design(self, x, cols):
        totals = _totals(x, cols)
        shares = [x[:, mine] / totals[:, [j]] for j, (_, mine) in enumerate(self._split(cols)) if len(mine) > 1]
        return np.concatenate([np.log(totals), *shares], axis=1)

    def terms(self, cols):
        shares = [f"share {cols[i]}" for _, mine in self._split(cols) if len(mine) > 1 for i in mine]
        return ("intercept", *(f"log {s}" for s in _sources(cols)), *shares)

    def min_samples(self, cols):
        return 5  # shrunk: fewer effective parameters than coefficients

    def available(self, cols):
        return self.n_params(cols) > 2  # one source without kinds: the power model already

    def fit(self, x, y, cols):
        d = self._design(x, cols)
        mu, sd = d.mean(0), d.std(0)
        sd[sd < 1e-12] = 1.0  # a constant column (a kind every subnet has in the same share) says nothing
        ly = np.log(y)
        b = ridge_loo((d - mu) / sd, ly - ly.mean(), self.LAMBDAS * len(y)) / sd
        return np.append(float(ly.mean()) - float(mu @ b), b)

    def predict(self, coef, x, cols):
        return np.exp(coef[0] + self._design(x, cols) @ coef[1:])


MODELS: dict[str, _Model] = {
    m.name: m for m in (_Factor(), _Affine(), _Power(), _KindScales(), _KindScalesOffset(), _RidgeLog())
}
LINEAR_MODELS = tuple(n for n, m in MODELS.items() if m.linear)  # the ones a table can hold


# --- fitting and choosing ------------------------------------------------------------------------------


def _check(x: np.ndarray, y: np.ndarray | None, cols: Sequence[Column]) -> tuple[np.ndarray, tuple[Column, ...]]:
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] != len(cols):
        raise TransferError(f"features must be (subnets, {len(cols)} columns), got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise TransferError("features must be finite, non-negative latency sums (ms)")
    if np.any(_totals(x, tuple(cols)) <= 0):
        raise TransferError("every subnet needs a positive total on every source (a source table lacks its blocks?)")
    if y is not None and (y.shape != (x.shape[0],) or not np.all(np.isfinite(y)) or np.any(y <= 0)):
        raise TransferError(f"measurements must be {x.shape[0]} finite latencies > 0 ms")
    return x, tuple(cols)


def heldout_figures(predicted: np.ndarray, measured: np.ndarray, folds: int = 0) -> HeldOut:
    err = np.abs(np.asarray(predicted) - measured) / measured
    return HeldOut(
        median_abs_pct=float(np.median(err) * 100),
        mean_abs_pct=float(np.mean(err) * 100),
        within_5pct=float(np.mean(err <= 0.05)),
        within_10pct=float(np.mean(err <= 0.10)),
        folds=folds,
    )


def _cross_validate(model: _Model, x: np.ndarray, y: np.ndarray, cols: tuple[Column, ...], folds: int) -> np.ndarray:
    k = min(folds, len(y))
    fold = np.arange(len(y)) % k  # deterministic; the caller's draw order already randomises
    out = np.empty_like(y)
    for f in range(k):
        test = fold == f
        out[test] = model.predict(model.fit(x[~test], y[~test], cols), x[test], cols)
    return out


def _choose(scored: list[Candidate], errors: dict[str, np.ndarray], parsimony: float) -> Candidate:
    """The simplest candidate whose held-out error is not worse than the best's by more than `parsimony`
    standard errors of the paired difference (the one-standard-error rule): with few measurements a
    richer model must win clearly, with many a small real gain is enough."""
    best = min(scored, key=lambda c: float(errors[c.model].mean()))
    for c in sorted(scored, key=lambda c: (c.n_params, float(errors[c.model].mean()))):
        d = errors[c.model] - errors[best.model]
        if float(d.mean()) <= parsimony * float(d.std(ddof=1)) / np.sqrt(len(d)) + 1e-12:
            return c
    return best


def fit_transfer(
    features: np.ndarray,
    measured_ms: Sequence[float] | np.ndarray,
    columns: Sequence[Column],
    *,
    models: Sequence[str] | None = None,
    folds: int = 10,
    parsimony: float = 1.0,
) -> TransferFit:
    """Fit every candidate model the N measurements allow and keep the one that predicts held-out ones best.

    features: (N, columns) source latency sums of the measured subnets; measured_ms: their destination
    latencies. models: restrict the candidates (LINEAR_MODELS for a fit that becomes a table). The
    winner is the model with the fewest parameters whose mean held-out relative error is within
    `parsimony` standard errors of the best's; its coefficients are then refitted on all N.
    """
    y = np.asarray(measured_ms, dtype=float).reshape(-1)
    if len(y) < MIN_SAMPLES:
        raise TransferError(
            f"a transfer needs at least {MIN_SAMPLES} destination measurements (one to fit, one to check), got "
            f"{len(y)}; measure {MIN_SAMPLES - len(y)} more whole subnet(s) on the device (10 or more are advised)"
        )
    x, cols = _check(features, y, columns)
    names = list(models or MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise TransferError(f"unknown transfer model(s) {unknown}; known: {', '.join(MODELS)}")
    candidates: list[Candidate] = []
    cv_pred: dict[str, np.ndarray] = {}
    for name in names:
        m = MODELS[name]
        if not m.available(cols):
            continue
        if len(y) < m.min_samples(cols):
            why = f"needs {m.min_samples(cols)} measurements ({m.n_params(cols)} parameters), got {len(y)}"
            candidates.append(Candidate(name, m.n_params(cols), None, why))
            continue
        with np.errstate(all="ignore"):
            pred = _cross_validate(m, x, y, cols, folds)
        if not np.all(np.isfinite(pred)):
            candidates.append(Candidate(name, m.n_params(cols), None, "held-out predictions not finite"))
            continue
        cv_pred[name] = pred
        candidates.append(Candidate(name, m.n_params(cols), heldout_figures(pred, y, min(folds, len(y)))))
    scored = [c for c in candidates if c.heldout is not None]
    if not scored:
        need = min(MODELS[n].min_samples(cols) for n in names if MODELS[n].available(cols))
        raise TransferError(f"none of the models {names} can be fitted on {len(y)} measurements; {need} are needed")
    chosen = _choose(scored, {n: np.abs(p - y) / y for n, p in cv_pred.items()}, parsimony)
    m = MODELS[chosen.model]
    coef = m.fit(x, y, cols)
    log.debug("transfer: %s chosen from %s on %d measurements", chosen.model, [c.model for c in scored], len(y))
    return TransferFit(
        model=chosen.model,
        columns=cols,
        terms=m.terms(cols),
        coef=tuple(float(c) for c in coef),
        n=len(y),
        n_params=chosen.n_params,
        heldout=chosen.heldout,  # type: ignore[arg-type]
        candidates=tuple(candidates),
        support=tuple(int(v) for v in (x > 0).sum(axis=0)),
    )


def predict(fit: TransferFit, features: np.ndarray) -> np.ndarray:
    """Destination latency (ms) of subnets given as rows of the same source feature columns as the fit's."""
    x, cols = _check(features, None, fit.columns)
    return MODELS[fit.model].predict(np.asarray(fit.coef), x, cols)


def kind_multipliers(fit: TransferFit) -> KindMultipliers:
    """The fit as per-kind multipliers of source table entries (for writing a destination table).

    Only linear models have them; refit with `models=LINEAR_MODELS` otherwise. A kind no measured
    subnet contained was never seen on the destination: it gets the fit's pooled factor (the median of
    its source's supported scales) and is listed in `unsupported`.
    """
    m = MODELS[fit.model]
    if not m.linear:
        raise TransferError(
            f"transfer model '{fit.model}' is not linear in block latencies, so it cannot become a table; "
            f"refit with models={LINEAR_MODELS}"
        )
    cols, coef = fit.columns, np.asarray(fit.coef)
    primary = cols[0].source
    if fit.model in ("factor", "affine"):
        scales = {c: (float(coef[0]) if c.source == primary else 0.0) for c in cols}
        offset = float(coef[1]) if fit.model == "affine" else 0.0
    else:
        scales = {c: float(s) for c, s in zip(cols, coef[: len(cols)], strict=True)}
        offset = float(coef[-1]) if fit.model == "kind_scales_offset" else 0.0
    unsupported = tuple(c for c, n in zip(cols, fit.support, strict=True) if n == 0)
    for c in unsupported:
        seen = [scales[o] for o, n in zip(cols, fit.support, strict=True) if n > 0 and o.source == c.source]
        scales[c] = float(np.median(seen)) if seen else 0.0
    return KindMultipliers(fit.model, scales, offset, unsupported)


# --- features and sampling ------------------------------------------------------------------------------


def kind_features(
    subnets: Sequence[Sequence[Any]], sources: Mapping[str, Any]
) -> tuple[np.ndarray, tuple[Column, ...]]:
    """Per subnet (its BlockKeys), per source table (name → LatencyTable), per block kind: Σ source medians.

    Columns are source × kind, sources in the order given, kinds sorted. A block a source table lacks
    raises TableIncompleteError (through the table's predictor), as a prediction would.
    """
    from deploy.latency.predictor import LatencyPredictor  # pydantic and torch only when tables are used

    kinds = sorted({b.kind for blocks in subnets for b in blocks})
    cols = tuple(Column(s, k) for s in sources for k in kinds)
    x = np.zeros((len(subnets), len(cols)))
    for j, table in enumerate(sources.values()):
        pred = LatencyPredictor(table)
        index = table.index()
        for i, blocks in enumerate(subnets):
            pred.require(blocks)
            for b in blocks:
                x[i, j * len(kinds) + kinds.index(b.kind)] += index[b].median_ms
    return x, cols


def choose_samples(candidates: Sequence[tuple[str, float]], n: int, seed: int | None = None) -> list[str]:
    """Which n subnets to measure: the smallest and the largest by predicted ms, the rest spread evenly.

    The middle ones are one per stratum of equal count in predicted-latency order: the candidate nearest
    the stratum's centre (seed None), or a random one of it (seed given: repeated draws differ).
    """
    if n < MIN_SAMPLES:
        raise TransferError(f"choose at least {MIN_SAMPLES} subnets to measure, not {n}")
    ids = [c for c, _ in sorted(candidates, key=lambda c: (c[1], c[0]))]
    if n >= len(ids):
        return ids
    chosen = [ids[0], ids[-1]]
    inner = ids[1:-1]
    edges = np.linspace(0, len(inner), n - 1)
    rng = None if seed is None else np.random.default_rng(seed)
    for lo, hi in pairwise(edges):
        a, b = int(np.floor(lo)), max(int(np.floor(hi)), int(np.floor(lo)) + 1)
        i = int(rng.integers(a, b)) if rng is not None else min(int((lo + hi) / 2), len(inner) - 1)
        chosen.append(inner[min(i, len(inner) - 1)])
    return list(dict.fromkeys(chosen))
