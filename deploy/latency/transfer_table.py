"""`tables transfer`: a TRANSFERRED table for a device reached briefly, from measured tables of others.

N whole subnets are measured on the new device (each twice, interleaved, for the repeatability), chosen
to cover the space (per model: the smallest, the largest, the rest spread over the first source's
predicted latency: deploy.latency.transfer.choose_samples), beside a few blocks per kind (the smallest
and largest of each) and the one-op null model. Candidate models map the source table(s) to the new
device, each writable as a table that reproduces it exactly (deploy/latency/transfer_models.py); the
one chosen by cross-validated error on the N subnets is fitted on all of them. Its held-out figures
become the table's validation (`source: transfer cross-validation`), which is where the predictor reads
its expected error and the deploy its margin, until `tables validate` measures unseen subnets.

Phases, each with a typed result: plan (TransferPlan: every check that needs no device), measure, choose,
fit, write. Nothing is written before everything is measured and fitted; the table in one step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

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
from deploy.latency.build import block_identity, compile_subnet, null_measurable
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.session import Measurable, MeasureSession
from deploy.latency.stats import LatencyStats
from deploy.latency.table import LatencyTable, Protocol, Provenance, Validation, now_iso
from deploy.latency.transfer import MIN_SAMPLES, MODELS, Column, choose_samples, kind_features
from deploy.latency.transfer_models import FIT_CHOICES, Data, FittedTransfer, Source, choose, fit_transfer
from deploy.latency.transfer_record import TransferBlock, TransferRecord, TransferSource, TransferSubnet
from deploy.progress import Progress, ProgressTask
from deploy.search.space import SubnetConfig
from deploy.targets import Target, load_target

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 30
BLOCKS_PER_KIND = 2
POOL_PER_MODEL = 400  # random candidates per model that choose_samples picks from
TRANSFER_SEED = 0

# --- sources ----------------------------------------------------------------------------------------


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


# --- plan ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferPlan:
    """What a transfer measures and where it writes: every check that needs no device is behind it."""

    dest: Target
    out: Path
    sources: tuple[Source, ...]
    supernets: tuple[Supernet, ...]
    subnets: tuple[tuple[Supernet, SubnetConfig], ...]
    blocks: tuple[BlockKey, ...]  # measured alone too (kind_blocks' per-kind ratios)
    fit: str
    seed: int


def _check_replace(out: Path, dest: Target, force: bool) -> None:
    if out.exists() and not force and LatencyTable.load(out, dest.name).provenance.method == "measured":
        raise TransferError(
            f"{out} is a MEASURED table; a transfer would replace it: pass --force, or --out PATH to write "
            "the transferred table elsewhere"
        )


def _check_fit(fit: str, samples: int, plan: TransferPlan) -> None:
    """The asked model can be fitted on what the plan measures."""
    kinds = sorted({b.kind for net, c in plan.subnets for b in net.blocks(c)})
    cols = tuple(Column(s.label, k) for s in plan.sources for k in kinds)
    if fit == "kind_blocks" and not plan.blocks:
        raise TransferError(
            "transfer model kind_blocks scales each kind by blocks measured on the device: --blocks-per-kind ≥ 1"
        )
    if fit in MODELS and not MODELS[fit].available(cols):
        raise TransferError(f"transfer model {fit} needs several feature columns; these sources give {len(cols)}")
    need = MODELS[fit].min_samples(cols) if fit in MODELS else MIN_SAMPLES
    offered = len(plan.subnets)
    if samples < need or offered < need:
        what = "the simplest transfer model (one factor)" if fit == "auto" else f"transfer model {fit}"
        raise TransferError(
            f"--samples {samples} is below what {what} needs: {need} measured subnets (its parameters, and "
            f"held-out ones to check them){'' if offered >= need else f'; the models offer only {offered}'}"
        )


def plan_transfer(
    dest: Target,
    source_names: Sequence[str],
    supernets: Sequence[Supernet],
    *,
    samples: int,
    fit: str,
    blocks_per_kind: int,
    seed: int,
    force: bool,
    path: Path | None,
    say: Callable[[str], None],
) -> TransferPlan:
    """The sources, the subnets and blocks to measure, and the checks of the request; nothing measured yet."""
    if fit not in FIT_CHOICES:
        raise TransferError(f"unknown transfer model {fit!r}; choose one of {', '.join(FIT_CHOICES)}")
    out = path or dest.table_write_path
    sources = load_sources(dest, source_names)
    check_coverage(sources, supernets)
    _check_replace(out, dest, force)
    subnets = plan_subnets(supernets, sources[0].table, samples, seed)
    if len(subnets) < samples:
        say(
            f"--samples {samples}: the models offer {len(subnets)} distinct subnets to measure (at most "
            f"{POOL_PER_MODEL} candidates per model); measuring those {len(subnets)}"
        )
    blocks = plan_blocks(supernets, sources[0].table, blocks_per_kind)
    plan = TransferPlan(dest, out, tuple(sources), tuple(supernets), tuple(subnets), tuple(blocks), fit, seed)
    _check_fit(fit, samples, plan)
    return plan


# --- measure ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferMeasurements:
    """The plan measured on the device in one interleaved window: each subnet twice, the blocks, the null model."""

    session: MeasureSession
    where: str  # the runner's description of the device
    first: tuple[LatencyStats, ...]
    second: tuple[LatencyStats, ...]
    blocks: tuple[LatencyStats, ...]
    null: LatencyStats

    @property
    def y(self) -> np.ndarray:
        """Each subnet's measured ms: the mean of its two measurements."""
        return np.array([(a.median_ms + b.median_ms) / 2 for a, b in zip(self.first, self.second, strict=True)])

    @property
    def repeatability_pct(self) -> float:
        diff = np.array([a.median_ms - b.median_ms for a, b in zip(self.first, self.second, strict=True)])
        return float(np.median(np.abs(diff) / self.y * 100))


def _device_error(dest: Target, exc: Exception) -> TransferDeviceError:
    return TransferDeviceError(
        f"cannot transfer to {dest.name}: its runner cannot measure here ({str(exc).rstrip('.')}); nothing was written"
    )


def measure_transfer(
    plan: TransferPlan, *, cache_dir: Path | None, progress: Progress | None, executor: Executor | None
) -> TransferMeasurements:
    dest = plan.dest
    try:
        session = (executor or LocalExecutor()).session(dest, cache_dir)
        where = session.runner.describe()  # ssh and adb reach the device here
    except (BackendUnavailableError, RunnerError) as exc:
        raise _device_error(dest, exc) from None
    n, n_blocks = len(plan.subnets), len(plan.blocks)
    task = ProgressTask(progress, "transfer", n + n_blocks, description=f"exporting {n} subnets and {n_blocks} blocks")
    owner = {b: net for net in plan.supernets for b in net.all_blocks()}
    makers = [partial(compile_subnet, session, net, config) for net, config in plan.subnets]
    makers += [partial(_compile_block, session, owner[key], key) for key in plan.blocks]
    items = []
    for make in makers:
        items.append(make())
        task.advance()
    task.describe(f"measuring on {dest.name}: subnets (twice each), blocks, null model")
    subnet_items, block_items = items[:n], items[n:]
    try:
        *stats, null = session.measure(subnet_items + subnet_items + block_items + [null_measurable(session)])
    except RunnerError as exc:
        raise _device_error(dest, exc) from None
    return TransferMeasurements(session, where, tuple(stats[:n]), tuple(stats[n : 2 * n]), tuple(stats[2 * n :]), null)


def _compile_block(session: MeasureSession, net: Supernet, key: BlockKey) -> Measurable:
    module, example = net.measurable_block(key)
    return session.compile(module, example, block_identity(key))


# --- fit ----------------------------------------------------------------------------------------------


def transfer_data(plan: TransferPlan, measured: TransferMeasurements) -> Data:
    """What the candidates fit on: the measured subnets, the sources' per-kind features, the block ratios."""
    subnet_blocks = [net.blocks(c) for net, c in plan.subnets]
    try:
        x, cols = kind_features(subnet_blocks, {s.label: s.table for s in plan.sources})
    except TableIncompleteError as exc:  # checked in the plan; kept as a named error should a source change meanwhile
        raise TransferSourceError(str(exc)) from None
    primary = LatencyPredictor(plan.sources[0].table)
    index = plan.sources[0].table.index()
    ratios: dict[str, list[float]] = {}
    for key, s in zip(plan.blocks, measured.blocks, strict=True):
        ratios.setdefault(key.kind, []).append(s.median_ms / index[key].median_ms)
    nets = [net for net, _ in plan.subnets]
    return Data(
        nets=nets,
        configs=[c for _, c in plan.subnets],
        blocks=subnet_blocks,
        y=measured.y,
        x=x,
        cols=cols,
        src_pred=np.array([primary.predict(b, net.family).ms for net, b in zip(nets, subnet_blocks, strict=True)]),
        sources=list(plan.sources),
        kind_ratio={k: float(np.median(v)) for k, v in ratios.items()},
        overhead_ms=measured.null.median_ms,
        models=list(plan.supernets),
    )


# --- write --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransferResult:
    path: Path
    table: LatencyTable
    record: TransferRecord


def _table(plan: TransferPlan, measured: TransferMeasurements, fit: FittedTransfer, date: str) -> LatencyTable:
    dest, session = plan.dest, measured.session
    return LatencyTable(
        provenance=Provenance(
            target=dest.name,
            device=dest.device.name,
            host=measured.where,
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
        entries=sorted(fit.parts.entries, key=lambda e: e.key),
        calibration=fit.calibration,
    )


def _record(
    plan: TransferPlan, measured: TransferMeasurements, fit: FittedTransfer, table_pred: np.ndarray, date: str
) -> TransferRecord:
    """Everything needed to see how the table was made and to redo the fit (deploy/latency/transfer_record.py)."""
    choice, parts, index = fit.choice, fit.parts, plan.sources[0].table.index()
    recorded = ("method", "backend", "precision", "threads", "host", "date")  # of each source's provenance
    sources = [
        TransferSource(
            target=s.target.name,
            table=s.target.table_path.name,
            **{k: getattr(s.table.provenance, k) for k in recorded},
        )
        for s in plan.sources
    ]
    subnets = [
        TransferSubnet(
            subnet_id=c.id,
            model=net.variant,
            config=c.to_json(),
            measured_ms=float(measured.y[i]),
            measured_again_ms=measured.second[i].median_ms,
            cv=measured.first[i].cv,
            predicted_ms=float(fit.fitted[i]),
            heldout_predicted_ms=float(choice.heldout_pred[i]),
            table_predicted_ms=float(table_pred[i]),
        )
        for i, (net, c) in enumerate(plan.subnets)
    ]
    return TransferRecord(
        sources=sources,
        n_subnets=len(plan.subnets),
        seed=plan.seed,
        model=choice.candidate.name,
        n_params=choice.n_params,
        heldout=choice.heldout,
        candidates=choice.report,
        scales=parts.scales,
        offset_ms=parts.offset_ms,
        unsupported_kinds=list(parts.unsupported),
        repeatability_pct=measured.repeatability_pct,
        call_overhead_ms=measured.null.median_ms,
        subnets=subnets,
        blocks=[
            TransferBlock(block=str(k), kind=k.kind, source_ms=index[k].median_ms, measured_ms=s.median_ms)
            for k, s in zip(plan.blocks, measured.blocks, strict=True)
        ],
        table_reproduces_fit_max_pct=float(np.max(np.abs(table_pred - fit.fitted) / fit.fitted) * 100),
        where=measured.where,
        date=date,
    )


def write_transfer(plan: TransferPlan, measured: TransferMeasurements, fit: FittedTransfer) -> TransferResult:
    """The TRANSFERRED table with its record and held-out figures as its validation, written in one step."""
    date = now_iso()
    table = _table(plan, measured, fit, date)
    predictor = LatencyPredictor(table)
    table_pred = np.array([predictor.predict(net.blocks(c), net.family).ms for net, c in plan.subnets])
    record = _record(plan, measured, fit, table_pred, date)
    table.provenance = table.provenance.model_copy(update={"transfer": record})
    held = record.heldout
    table.validation = Validation(
        date=date,
        n_samples=record.n_subnets,
        seed=plan.seed,
        median_abs_pct_error=held.median_abs_pct,
        within_5pct=held.within_5pct,
        within_10pct=held.within_10pct,
        p90_abs_pct_error=held.p90_abs_pct,
        worst_pct_error=held.worst_pct,
        same_window_median_abs_pct_error=held.median_abs_pct,
        repeatability_pct=record.repeatability_pct,
        host=measured.where,
        source="transfer cross-validation",
    )
    if record.table_reproduces_fit_max_pct > 1e-6:
        log.warning(
            "the table reproduces the %s fit only within %.2g%% on the measured subnets",
            record.model,
            record.table_reproduces_fit_max_pct,
        )
    table.save(plan.out)  # atomic, and the only write
    return TransferResult(plan.out, table, record)


# --- the command --------------------------------------------------------------------------------------


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
    progress: Progress | None = None,
    executor: Executor | None = None,
    say: Callable[[str], None] = log.info,
) -> TransferResult:
    """Measure `samples` subnets (and a few blocks) on `dest`'s device, fit, write its TRANSFERRED table."""
    plan = plan_transfer(
        dest, source_names, supernets, samples=samples, fit=fit, blocks_per_kind=blocks_per_kind, seed=seed,
        force=force, path=path, say=say,
    )  # fmt: skip
    measured = measure_transfer(plan, cache_dir=cache_dir, progress=progress, executor=executor)
    data = transfer_data(plan, measured)
    choice = choose(data, fit)
    return write_transfer(plan, measured, fit_transfer(data, choice, [s.cv for s in measured.first]))


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
