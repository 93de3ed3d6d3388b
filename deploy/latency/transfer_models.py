"""The candidate transfer models of `tables transfer` (deploy/latency/transfer_table.py) and how one is chosen.

Every candidate maps the source table(s) to the new device and can be written *as a table* (entries +
calibration) that reproduces it exactly:

- calibrated_factor (1 parameter): the first source's calibrated prediction × c, c the median ratio; as a
  table, the source's entries × c and its calibration rescaled (what an estimated table does with an
  anchor, here with c measured on N subnets);
- kind_blocks (the calibration's 1-3 terms): entries = source entries × each kind's ratio measured on the
  blocks timed on the device; the table's calibration refitted on the N subnets (the build's own fit,
  per family where a family has 4 or more of them);
- factor, affine, kind_scales, kind_scales_offset (deploy.latency.transfer, LINEAR_MODELS): regressions on
  the sources' per-kind block sums; as a table, entries × the kind's scale, calibration slope 1 plus
  the offset.

The choice is by cross-validated error on the N subnets (leave-one-out up to 10 folds): the one with
the fewest parameters whose mean held-out error is within one standard error of the best's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deploy.errors import TransferError
from deploy.families.base import BlockKey, Supernet
from deploy.latency.calibration import fit_calibration
from deploy.latency.table import Calibration, CalibrationSample, Entry, LatencyTable, now_iso
from deploy.latency.transfer import (
    LINEAR_MODELS,
    MIN_SAMPLES,
    MODELS,
    Column,
    HeldOut,
    TransferFit,
    kind_multipliers,
)
from deploy.latency.transfer_record import TransferCandidate, TransferHeldOut
from deploy.search.space import SubnetConfig
from deploy.targets import Target

FOLDS = 10
PARSIMONY = 1.0  # standard errors a simpler model may be behind the best
FIT_CHOICES = ("auto", "calibrated_factor", "kind_blocks", *LINEAR_MODELS)


@dataclass(frozen=True)
class Source:
    label: str  # "host-cpu-ort-1t" or "host-cpu-litert:fp32"
    target: Target
    table: LatencyTable


@dataclass
class Data:
    """The N measured subnets and what the sources say about them."""

    nets: list[Supernet]
    configs: list[SubnetConfig]
    blocks: list[list[BlockKey]]
    y: np.ndarray  # measured ms on the new device
    x: np.ndarray  # (N, columns): per source and kind, the source's block sum
    cols: tuple[Column, ...]
    src_pred: np.ndarray  # the first source's calibrated prediction
    sources: list[Source]
    kind_ratio: dict[str, float]  # new / first source, per kind, from the blocks measured alone
    overhead_ms: float  # the null model on the new device
    models: list[Supernet]  # every model the table serves (some may have no measured subnet)

    @property
    def primary(self) -> LatencyTable:
        return self.sources[0].table

    def families(self, idx: np.ndarray) -> list[str]:
        return [self.nets[i].family for i in idx]


@dataclass(frozen=True)
class TableParts:
    entries: list[Entry]
    calibration: Calibration
    scales: dict[str, float]
    offset_ms: float = 0.0
    unsupported: tuple[str, ...] = ()


class Candidate:
    name = ""

    def available(self, d: Data) -> bool:
        return True

    def min_samples(self, d: Data) -> int:
        return MIN_SAMPLES

    def n_params(self, d: Data) -> int:
        return 1

    def fit(self, d: Data, idx: np.ndarray) -> Any:
        raise NotImplementedError

    def predict(self, state: Any, d: Data, idx: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def table(self, state: Any, d: Data, samples: list[CalibrationSample]) -> TableParts:
        raise NotImplementedError


def _scaled_entry(e: Entry, factor: float, tag: str) -> Entry:
    return e.model_copy(
        update={
            **{k: getattr(e, k) * factor for k in ("median_ms", "p90_ms", "mean_ms", "std_ms")},
            "round_medians_ms": [m * factor for m in e.round_medians_ms],
            "fingerprint": tag,
            "device": None,
        }
    )


def _needed(d: Data) -> list[BlockKey]:
    return sorted({b for net in d.models for b in net.all_blocks()})


class CalibratedFactor(Candidate):
    name = "calibrated_factor"

    def fit(self, d, idx):
        return float(np.median(d.y[idx] / d.src_pred[idx]))

    def predict(self, c, d, idx):
        return c * d.src_pred[idx]

    def table(self, c, d, samples):
        index = d.primary.index()
        tag = f"transferred:{d.sources[0].label}:{self.name}:{c:.6g}"
        entries = [_scaled_entry(index[k], c, tag) for k in _needed(d)]
        src = d.primary.calibration
        assert src is not None
        cal = src.model_copy(
            update={
                "per_block_ms": src.per_block_ms * c,
                "quad_per_ms": src.quad_per_ms / c,  # quad · Σ² scales by c when Σ does
                "intercept_ms": src.intercept_ms * c,
                "call_overhead_ms": src.call_overhead_ms * c,
                "families": {
                    name: f.model_copy(update={"per_block_ms": f.per_block_ms * c, "quad_per_ms": f.quad_per_ms / c})
                    for name, f in src.families.items()
                },
            }
        )
        return TableParts(entries, cal, {f"{d.sources[0].label}/*": c})


class KindBlocks(Candidate):
    name = "kind_blocks"

    def available(self, d):
        return bool(d.kind_ratio)

    def n_params(self, d):
        cal = fit_calibration(self.samples(d, np.arange(len(d.y))), d.overhead_ms)
        return 1 + (cal.per_block_ms > 0) + (cal.quad_per_ms > 0)

    def scale(self, d: Data, kind: str) -> float:
        return d.kind_ratio.get(kind, float(np.median(list(d.kind_ratio.values()))))

    def samples(self, d: Data, idx: np.ndarray) -> list[CalibrationSample]:
        index = d.primary.index()
        return [
            CalibrationSample(
                subnet_id=d.configs[i].id,
                config=d.configs[i].to_json(),
                block_sum_ms=sum(index[b].median_ms * self.scale(d, b.kind) for b in d.blocks[i]),
                n_blocks=len(d.blocks[i]),
                measured_ms=float(d.y[i]),
            )
            for i in idx
        ]

    def fit(self, d, idx):
        return fit_calibration(self.samples(d, idx), d.overhead_ms)

    def predict(self, cal, d, idx):
        return np.array(
            [
                cal.apply(s.block_sum_ms, s.n_blocks, d.nets[i].family)
                for s, i in zip(self.samples(d, idx), idx, strict=True)
            ]
        )

    def table(self, cal, d, samples):
        index = d.primary.index()
        label = d.sources[0].label
        entries = [
            _scaled_entry(index[k], self.scale(d, k.kind), f"transferred:{label}:{self.name}") for k in _needed(d)
        ]
        kinds = sorted({k.kind for k in _needed(d)})
        unsupported = tuple(f"{label}/{k}" for k in kinds if k not in d.kind_ratio)
        return TableParts(entries, cal, {f"{label}/{k}": self.scale(d, k) for k in kinds}, 0.0, unsupported)


class Linear(Candidate):
    """One of deploy.latency.transfer's linear models on the sources' per-kind block sums."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model = MODELS[name]

    def available(self, d):
        return self.model.available(d.cols)

    def min_samples(self, d):
        return self.model.min_samples(d.cols)

    def n_params(self, d):
        return self.model.n_params(d.cols)

    def fit(self, d, idx):
        with np.errstate(all="ignore"):
            return self.model.fit(d.x[idx], d.y[idx], d.cols)

    def predict(self, coef, d, idx):
        with np.errstate(all="ignore"):
            return self.model.predict(coef, d.x[idx], d.cols)

    def table(self, coef, d, samples):
        n = len(d.y)
        dummy = HeldOut(0.0, 0.0, 0.0, 0.0, 0)
        fit = TransferFit(
            self.name, d.cols, self.model.terms(d.cols), tuple(map(float, coef)), n, self.n_params(d), dummy, (),
            tuple(int(v) for v in (d.x > 0).sum(axis=0)),
        )  # fmt: skip
        mult = kind_multipliers(fit)
        indexes = {s.label: s.table.index() for s in d.sources}
        scales = dict(mult.scales)
        unsupported = [str(c) for c in mult.unsupported]
        for k in sorted({k.kind for k in _needed(d)}):  # kinds of models no measured subnet belongs to
            for s in d.sources:
                if Column(s.label, k) not in scales:
                    mine = [v for c, v in mult.scales.items() if c.source == s.label]
                    scales[Column(s.label, k)] = float(np.median(mine)) if mine else 0.0
                    unsupported.append(str(Column(s.label, k)))
        entries = []
        for k in _needed(d):
            base = indexes[d.sources[0].label][k]
            ms = {
                f: sum(scales[Column(s.label, k.kind)] * getattr(indexes[s.label][k], f) for s in d.sources)
                for f in ("median_ms", "p90_ms", "mean_ms", "std_ms")
            }
            ratio = ms["median_ms"] / base.median_ms if base.median_ms > 0 else 0.0
            entries.append(
                base.model_copy(
                    update={
                        **ms,
                        "round_medians_ms": [m * ratio for m in base.round_medians_ms],
                        "fingerprint": f"transferred:{'+'.join(s.label for s in d.sources)}:{self.name}",
                        "device": None,
                    }
                )
            )
        cal = Calibration(
            model="affine",
            slope=1.0,
            per_block_ms=0.0,
            intercept_ms=mult.offset_ms,
            residual_pct=0.0,
            n_subnets=n,
            fitted_at=now_iso(),
        )
        named = {str(c): float(v) for c, v in scales.items()}
        return TableParts(entries, cal, named, mult.offset_ms, tuple(unsupported))


def candidates() -> list[Candidate]:
    return [CalibratedFactor(), KindBlocks(), *(Linear(name) for name in LINEAR_MODELS)]


def _cross_validate(c: Candidate, d: Data, folds: int) -> np.ndarray:
    n = len(d.y)
    k = min(folds, n)
    fold = np.arange(n) % k
    out = np.empty(n)
    for f in range(k):
        test = np.flatnonzero(fold == f)
        train = np.flatnonzero(fold != f)
        out[test] = c.predict(c.fit(d, train), d, test)
    return out


def _heldout(pred: np.ndarray, y: np.ndarray, folds: int) -> TransferHeldOut:
    err = np.abs(pred - y) / y * 100
    return TransferHeldOut(
        median_abs_pct=float(np.median(err)),
        mean_abs_pct=float(np.mean(err)),
        p90_abs_pct=float(np.percentile(err, 90)),
        worst_pct=float(err.max()),
        within_5pct=float(np.mean(err <= 5.0)),
        within_10pct=float(np.mean(err <= 10.0)),
        folds=folds,
    )


@dataclass(frozen=True)
class Choice:
    candidate: Candidate
    n_params: int
    heldout_pred: np.ndarray
    heldout: TransferHeldOut
    report: list[TransferCandidate]


def choose(d: Data, fit: str = "auto", folds: int = FOLDS, parsimony: float = PARSIMONY) -> Choice:
    """Every available candidate scored by cross-validation; the simplest within `parsimony` SE of the best."""
    n = len(d.y)
    pool = [c for c in candidates() if (fit == "auto" or c.name == fit) and c.available(d)]
    if not pool:
        raise TransferError(f"transfer model {fit} is not available here (kind_blocks needs --blocks-per-kind ≥ 1)")
    report, scored = [], []
    for c in pool:
        n_params = c.n_params(d)
        if n < c.min_samples(d):
            why = f"needs {c.min_samples(d)} measurements ({n_params} parameters), got {n}"
            report.append(TransferCandidate(model=c.name, n_params=n_params, skipped=why))
            continue
        pred = _cross_validate(c, d, folds)
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
            report.append(TransferCandidate(model=c.name, n_params=n_params, skipped="held-out predictions not > 0"))
            continue
        held = _heldout(pred, d.y, min(folds, n))
        report.append(TransferCandidate(model=c.name, n_params=n_params, heldout=held))
        scored.append((c, n_params, pred, held))
    if not scored:
        raise TransferError(f"no transfer model can be fitted on {n} measurements: {report[0].skipped}")
    errors = {c.name: np.abs(p - d.y) / d.y for c, _, p, _ in scored}
    best = min(scored, key=lambda s: float(errors[s[0].name].mean()))
    for c, n_params, pred, held in sorted(scored, key=lambda s: (s[1], float(errors[s[0].name].mean()))):
        diff = errors[c.name] - errors[best[0].name]
        se = float(diff.std(ddof=1)) / np.sqrt(len(diff)) if len(diff) > 1 else 0.0
        if float(diff.mean()) <= parsimony * se + 1e-12:
            return Choice(c, n_params, pred, held, report)
    c, n_params, pred, held = best
    return Choice(c, n_params, pred, held, report)


@dataclass(frozen=True)
class FittedTransfer:
    """The chosen candidate fitted on every measured subnet, as the parts of a table."""

    choice: Choice
    fitted: np.ndarray  # its predictions of the measured subnets
    parts: TableParts
    calibration: Calibration  # the parts' calibration, holding the measured subnets as its samples


def fit_transfer(data: Data, choice: Choice, cvs: Sequence[float]) -> FittedTransfer:
    """The chosen candidate fitted on every measured subnet (`cvs`: each one's variation between rounds)."""
    cand, everything = choice.candidate, np.arange(len(data.y))
    state = cand.fit(data, everything)
    fitted = cand.predict(state, data, everything)
    parts = cand.table(state, data, [])
    new_index = {e.key: e for e in parts.entries}
    samples = [
        CalibrationSample(
            subnet_id=c.id,
            config=c.to_json(),
            block_sum_ms=sum(new_index[b].median_ms for b in bl),
            n_blocks=len(bl),
            measured_ms=float(m),
            cv=cv,
        )
        for c, bl, m, cv in zip(data.configs, data.blocks, data.y, cvs, strict=True)
    ]
    residual = float(np.sqrt(np.mean(((fitted - data.y) / data.y) ** 2)) * 100)
    calibration = parts.calibration.model_copy(
        update={"samples": samples, "n_subnets": len(samples), "residual_pct": residual, "fitted_at": now_iso()}
    )
    return FittedTransfer(choice, fitted, parts, calibration)
