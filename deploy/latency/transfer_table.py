"""`tables transfer`: a TRANSFERRED table for a device reached briefly, from measured tables of others.

N whole subnets are measured on the new device (each twice, interleaved, for the repeatability), chosen
to cover the space (per model: the smallest, the largest, the rest spread over the first source's
predicted latency: deploy.latency.transfer.choose_samples), beside a few blocks per kind (the smallest
and largest of each) and the one-op null model. Every candidate below maps the source table(s) to the
new device and can be written *as a table* (entries + calibration) that reproduces it exactly:

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
the fewest parameters whose mean held-out error is within one standard error of the best's. Its
held-out figures become the table's validation (`source: transfer cross-validation`), which is where
the predictor reads its expected error and the deploy its margin, until `tables validate` measures
unseen subnets. Nothing is written before everything is measured and fitted; the table in one step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from deploy.errors import (
    BackendUnavailableError,
    RunnerError,
    TableIncompleteError,
    TransferDeviceError,
    TransferError,
    TransferSourceError,
)
from deploy.executors.base import Executor
from deploy.executors.local import LocalExecutor
from deploy.families.base import BlockKey, Supernet
from deploy.latency.build import block_identity, fit_calibration, null_measurable, subnet_identity
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import (
    Calibration,
    CalibrationSample,
    Entry,
    LatencyTable,
    Protocol,
    Provenance,
    Validation,
    now_iso,
)
from deploy.latency.transfer import (
    LINEAR_MODELS,
    MIN_SAMPLES,
    MODELS,
    Column,
    HeldOut,
    TransferFit,
    choose_samples,
    kind_features,
    kind_multipliers,
)
from deploy.latency.transfer_record import (
    TransferBlock,
    TransferCandidate,
    TransferHeldOut,
    TransferRecord,
    TransferSource,
    TransferSubnet,
)
from deploy.search.space import SubnetConfig
from deploy.targets import Target, load_target

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 30
BLOCKS_PER_KIND = 2
POOL_PER_MODEL = 400  # random candidates per model that choose_samples picks from
FOLDS = 10
PARSIMONY = 1.0  # standard errors a simpler model may be behind the best
TRANSFER_SEED = 0
FIT_CHOICES = ("auto", "calibrated_factor", "kind_blocks", *LINEAR_MODELS)


# --- sources ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    label: str  # "host-cpu-ort-1t" or "host-cpu-litert:fp32"
    target: Target
    table: LatencyTable


def parse_source(text: str, dest: Target) -> Target:
    """`TARGET` or `TARGET:PRECISION` (default: the new target's precision where the source lists it)."""
    name, _, precision = text.partition(":")
    source = load_target(name)
    if precision:
        return source.at_precision(precision)
    return source.at_precision(dest.precision) if dest.precision in source.search_precisions else source


def load_sources(dest: Target, names: Sequence[str]) -> list[Source]:
    if not names:
        raise TransferSourceError(f"name at least one measured source table: --from TARGET[:PRECISION] for {dest.name}")
    out = []
    for text in names:
        target = parse_source(text, dest)
        label = target.name if target.precision == target.search_precisions[0] else f"{target.name}:{target.precision}"
        if target.table_path == dest.table_path:
            raise TransferSourceError(
                f"--from {text} is {dest.name}'s own table ({dest.table_path.name}); transfer from another target "
                "or precision (TARGET:PRECISION)"
            )
        table = LatencyTable.load(target.table_path, target.name)
        method = table.provenance.method
        if method != "measured":
            raise TransferSourceError(
                f"--from {text}: {target.table_path.name} is {method.upper()}, not measured; a transfer starts from "
                f"tables measured on a device (`make latency-tables TARGET={target.name}`)"
            )
        if table.calibration is None:
            raise TransferSourceError(
                f"--from {text}: {target.table_path.name} has no calibration (an interrupted build?); run "
                f"`elastic-deploy tables build --target {target.name} --recalibrate` first"
            )
        out.append(Source(label, target, table))
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise TransferSourceError(f"--from names the same table twice ({', '.join(labels)})")
    return out


def check_coverage(sources: Sequence[Source], supernets: Sequence[Supernet]) -> None:
    needed = sorted({b for net in supernets for b in net.all_blocks()})
    for s in sources:
        missing = LatencyPredictor(s.table).missing(needed)
        if missing:
            models = ", ".join(net.variant for net in supernets)
            raise TransferSourceError(
                f"--from {s.label}: its table lacks {len(missing)} of the {len(needed)} blocks {models} need, e.g. "
                f"{missing[0]}; add the model to `models:` in targets/{s.target.name}.yaml and run "
                f"`make latency-tables TARGET={s.target.name}`, or transfer from a table that covers them"
            )


# --- which subnets and blocks to measure ------------------------------------------------------------


def plan_subnets(
    supernets: Sequence[Supernet], table: LatencyTable, n: int, seed: int
) -> list[tuple[Supernet, SubnetConfig]]:
    """n subnets over the models (round-robin shares); per model its smallest and largest subnet, then the
    rest of its share by choose_samples over its predicted latencies (ends, then strata centres)."""
    predictor = LatencyPredictor(table)
    shares = [n // len(supernets) + (i < n % len(supernets)) for i in range(len(supernets))]
    plan: list[tuple[Supernet, SubnetConfig]] = []
    for net, share in zip(supernets, shares, strict=True):
        if share == 0:
            continue
        rng = np.random.default_rng(seed)
        space = net.space()
        if space.size() <= POOL_PER_MODEL:
            pool = {c.id: c for c in space.enumerate()}
        else:
            pool = {c.id: c for c in (net.smallest(), net.largest())}
            for _ in range(4 * POOL_PER_MODEL):
                if len(pool) >= POOL_PER_MODEL:
                    break
                c = net.sample(rng)
                pool.setdefault(c.id, c)
        scored = [(i, predictor.predict(net.blocks(c), net.family).ms) for i, c in pool.items()]
        if share == 1:  # the middle one
            chosen = [sorted(scored, key=lambda s: (s[1], s[0]))[len(scored) // 2][0]]
        else:  # the smallest and largest subnets, then the fastest and slowest predicted and the strata between
            ends = list(dict.fromkeys((net.smallest().id, net.largest().id)))
            rest = [s for s in scored if s[0] not in ends]
            chosen = ends + (choose_samples(rest, share - len(ends)) if share - len(ends) >= 2 else [])
            if share - len(ends) == 1 and rest:
                chosen.append(sorted(rest, key=lambda s: (s[1], s[0]))[len(rest) // 2][0])
        plan.extend((net, pool[i]) for i in chosen)
    return plan


def plan_blocks(supernets: Sequence[Supernet], table: LatencyTable, per_kind: int) -> list[BlockKey]:
    """Per block kind the models produce: its fastest and slowest block in the source table (per_kind ≥ 2)."""
    if per_kind <= 0:
        return []
    index = table.index()
    by_kind: dict[str, list[BlockKey]] = {}
    for b in sorted({b for net in supernets for b in net.all_blocks()}):
        by_kind.setdefault(b.kind, []).append(b)
    out = []
    for keys in by_kind.values():
        keys.sort(key=lambda k: (index[k].median_ms, str(k)))
        picks = np.linspace(0, len(keys) - 1, min(per_kind, len(keys))).round().astype(int)
        out.extend(keys[i] for i in dict.fromkeys(int(i) for i in picks))
    return out


# --- the data and the candidates --------------------------------------------------------------------


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


# --- the command ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferResult:
    path: Path
    table: LatencyTable
    record: TransferRecord


def _device_error(dest: Target, exc: Exception) -> TransferDeviceError:
    return TransferDeviceError(
        f"cannot transfer to {dest.name}: its runner cannot measure here ({str(exc).rstrip('.')}); nothing was written"
    )


def transfer_table(
    dest: Target,
    source_names: Sequence[str],
    supernets: Sequence[Supernet],
    *,
    samples: int = DEFAULT_SAMPLES,
    fit: str = "auto",
    blocks_per_kind: int = BLOCKS_PER_KIND,
    seed: int = TRANSFER_SEED,
    force: bool = False,
    path: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
    executor: Executor | None = None,
    say: Callable[[str], None] = log.info,
) -> TransferResult:
    """Measure `samples` subnets (and a few blocks) on `dest`'s device, fit, write its TRANSFERRED table."""
    if fit not in FIT_CHOICES:
        raise TransferError(f"unknown transfer model {fit!r}; choose one of {', '.join(FIT_CHOICES)}")
    out = path or dest.table_write_path
    sources = load_sources(dest, source_names)
    check_coverage(sources, supernets)
    if out.exists() and not force:
        current = LatencyTable.load(out, dest.name).provenance.method
        if current == "measured":
            raise TransferError(
                f"{out} is a MEASURED table; a transfer would replace it: pass --force, or --out PATH to write "
                "the transferred table elsewhere"
            )
    plan = plan_subnets(supernets, sources[0].table, samples, seed)
    if len(plan) < samples:
        say(
            f"--samples {samples}: the models offer {len(plan)} distinct subnets to measure (at most "
            f"{POOL_PER_MODEL} candidates per model); measuring those {len(plan)}"
        )
    blocks = plan_blocks(supernets, sources[0].table, blocks_per_kind)
    kinds = sorted({b.kind for net, c in plan for b in net.blocks(c)})
    cols = tuple(Column(s.label, k) for s in sources for k in kinds)
    if fit == "kind_blocks" and not blocks:
        raise TransferError(
            "transfer model kind_blocks scales each kind by blocks measured on the device: --blocks-per-kind ≥ 1"
        )
    if fit in MODELS and not MODELS[fit].available(cols):
        raise TransferError(f"transfer model {fit} needs several feature columns; these sources give {len(cols)}")
    need = MODELS[fit].min_samples(cols) if fit in MODELS else MIN_SAMPLES
    if samples < need or len(plan) < need:
        what = "the simplest transfer model (one factor)" if fit == "auto" else f"transfer model {fit}"
        raise TransferError(
            f"--samples {samples} is below what {what} needs: {need} measured subnets (its parameters, and "
            f"held-out ones to check them){'' if len(plan) >= need else f'; the models offer only {len(plan)}'}"
        )

    try:
        session = (executor or LocalExecutor()).session(dest, cache_dir)
        where = session.runner.describe()  # ssh and adb reach the device here
    except (BackendUnavailableError, RunnerError) as exc:
        raise _device_error(dest, exc) from None

    with Progress(disable=not progress) as bar:
        task = bar.add_task(
            f"[cyan]exporting {len(plan)} subnets and {len(blocks)} blocks", total=len(plan) + len(blocks)
        )
        subnet_items = []
        for net, config in plan:
            subnet_items.append(
                session.compile(
                    net.extract(config), net.example_inputs(), subnet_identity(net, config), net.input_names()
                )
            )
            bar.update(task, advance=1)
        block_items = []
        owner = {b: net for net in supernets for b in net.all_blocks()}
        for key in blocks:
            module, example = owner[key].measurable_block(key)
            block_items.append(session.compile(module, example, block_identity(key)))
            bar.update(task, advance=1)
        bar.update(task, description=f"[cyan]measuring on {dest.name}: subnets (twice each), blocks, null model")
        try:
            *stats, null = session.measure(subnet_items + subnet_items + block_items + [null_measurable(session)])
        except RunnerError as exc:
            raise _device_error(dest, exc) from None

    n = len(plan)
    first, second, block_stats = stats[:n], stats[n : 2 * n], stats[2 * n :]
    y = np.array([(a.median_ms + b.median_ms) / 2 for a, b in zip(first, second, strict=True)])
    subnet_blocks = [net.blocks(c) for net, c in plan]
    try:
        x, cols = kind_features(subnet_blocks, {s.label: s.table for s in sources})
    except TableIncompleteError as exc:  # checked above; kept as a named error should a source change meanwhile
        raise TransferSourceError(str(exc)) from None
    primary = LatencyPredictor(sources[0].table)
    index = sources[0].table.index()
    ratios: dict[str, list[float]] = {}
    for key, s in zip(blocks, block_stats, strict=True):
        ratios.setdefault(key.kind, []).append(s.median_ms / index[key].median_ms)
    data = Data(
        nets=[net for net, _ in plan],
        configs=[c for _, c in plan],
        blocks=subnet_blocks,
        y=y,
        x=x,
        cols=cols,
        src_pred=np.array([primary.predict(b, net.family).ms for (net, _), b in zip(plan, subnet_blocks, strict=True)]),
        sources=sources,
        kind_ratio={k: float(np.median(v)) for k, v in ratios.items()},
        overhead_ms=null.median_ms,
        models=list(supernets),
    )
    choice = choose(data, fit)
    cand = choice.candidate
    everything = np.arange(n)
    state = cand.fit(data, everything)
    fitted = cand.predict(state, data, everything)
    parts = cand.table(state, data, [])
    new_index = {e.key: e for e in parts.entries}
    samples_out = [
        CalibrationSample(
            subnet_id=c.id,
            config=c.to_json(),
            block_sum_ms=sum(new_index[b].median_ms for b in bl),
            n_blocks=len(bl),
            measured_ms=float(m),
            cv=a.cv,
        )
        for c, bl, m, a in zip(data.configs, subnet_blocks, y, first, strict=True)
    ]
    residual = float(np.sqrt(np.mean(((fitted - y) / y) ** 2)) * 100)
    calibration = parts.calibration.model_copy(
        update={"samples": samples_out, "n_subnets": n, "residual_pct": residual, "fitted_at": now_iso()}
    )
    repeat = np.abs(np.array([a.median_ms - b.median_ms for a, b in zip(first, second, strict=True)])) / y * 100
    date = now_iso()
    prov_src = [
        TransferSource(
            target=s.target.name,
            table=s.target.table_path.name,
            method=s.table.provenance.method,
            backend=s.table.provenance.backend,
            precision=s.table.provenance.precision,
            threads=s.table.provenance.threads,
            host=s.table.provenance.host,
            date=s.table.provenance.date,
        )
        for s in sources
    ]
    table = LatencyTable(
        provenance=Provenance(
            target=dest.name,
            device=dest.device.name,
            host=where,
            backend=session.backend.name,
            backend_version=session.backend.version(),
            precision=dest.precision,
            threads=dest.threads,
            runner=session.runner.name,
            date=date,
            protocol=Protocol(**{k: v for k, v in dest.measurement.protocol().to_json().items()}),
            method="transferred",
            versions=session.versions(),
        ),
        entries=sorted(parts.entries, key=lambda e: e.key),
        calibration=calibration,
    )
    table_pred = np.array(
        [LatencyPredictor(table).predict(b, net.family).ms for (net, _), b in zip(plan, subnet_blocks, strict=True)]
    )
    reproduce = float(np.max(np.abs(table_pred - fitted) / fitted) * 100)
    record = TransferRecord(
        sources=prov_src,
        n_subnets=n,
        seed=seed,
        model=cand.name,
        n_params=choice.n_params,
        heldout=choice.heldout,
        candidates=choice.report,
        scales=parts.scales,
        offset_ms=parts.offset_ms,
        unsupported_kinds=list(parts.unsupported),
        repeatability_pct=float(np.median(repeat)),
        call_overhead_ms=null.median_ms,
        subnets=[
            TransferSubnet(
                subnet_id=c.id,
                model=net.variant,
                config=c.to_json(),
                measured_ms=float(m),
                measured_again_ms=b.median_ms,
                cv=a.cv,
                predicted_ms=float(f),
                heldout_predicted_ms=float(h),
                table_predicted_ms=float(t),
            )
            for (net, c), m, a, b, f, h, t in zip(
                plan, y, first, second, fitted, choice.heldout_pred, table_pred, strict=True
            )
        ],
        blocks=[
            TransferBlock(block=str(k), kind=k.kind, source_ms=index[k].median_ms, measured_ms=s.median_ms)
            for k, s in zip(blocks, block_stats, strict=True)
        ],
        table_reproduces_fit_max_pct=reproduce,
        where=where,
        date=date,
    )
    table.provenance = table.provenance.model_copy(update={"transfer": record})
    held = choice.heldout
    table.validation = Validation(
        date=date,
        n_samples=n,
        seed=seed,
        median_abs_pct_error=held.median_abs_pct,
        within_5pct=held.within_5pct,
        within_10pct=held.within_10pct,
        p90_abs_pct_error=held.p90_abs_pct,
        worst_pct_error=held.worst_pct,
        same_window_median_abs_pct_error=held.median_abs_pct,
        repeatability_pct=record.repeatability_pct,
        host=where,
        source="transfer cross-validation",
    )
    if reproduce > 1e-6:
        log.warning("the table reproduces the %s fit only within %.2g%% on the measured subnets", cand.name, reproduce)
    table.save(out)  # atomic, and the only write
    return TransferResult(out, table, record)


def describe_transferred(table: LatencyTable) -> str:
    """One line for a deploy's first output: how the TRANSFERRED table was made and how far it is expected off."""
    t = table.provenance.transfer
    if t is None:
        return f"TRANSFERRED latency table for {table.provenance.target} (no transfer record)"
    sources = ", ".join(f"{s.target} ({s.method}, {s.backend} {s.precision}, {s.threads} threads)" for s in t.sources)
    v = table.validation
    error = (
        f"validated {v.median_abs_pct_error:.1f}% median error on {v.n_samples} unseen subnets"
        if v is not None and v.source == "tables validate"
        else f"held-out error {t.heldout.median_abs_pct:.1f}% median, {t.heldout.p90_abs_pct:.1f}% p90 "
        "(cross-validated)"
    )
    return (
        f"TRANSFERRED latency table for {table.provenance.target}: {t.model} fitted on {t.n_subnets} subnets "
        f"measured on {t.where} ({t.date}) from {sources}; {error}"
    )
