"""Regenerate a target's latency table: measure every block its models can produce, then calibrate.

A build measures into `<table>.partial.json` beside the table in force, which it replaces only once
complete and calibrated: a deploy never sees half a table, and `--rebuild` keeps the old one usable
until the new one is done. Entries are written to the partial file as they are measured (atomic
writes), so an interrupted build loses nothing and the same command resumes: only missing or stale
entries (measured with another backend version, thread count or protocol) are measured again. The
calibration measures random whole subnets interleaved with every block of the table in one time
window (those figures replace the ones measured one by one) and fits measured ≈ f(block sum).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from deploy import workspace
from deploy.errors import BuildInterruptedError, ConfigFileError
from deploy.executors.base import Executor
from deploy.executors.local import LocalExecutor
from deploy.families.base import BlockKey, Supernet
from deploy.latency.drift import build_drift_guard
from deploy.latency.lock import measuring
from deploy.latency.session import Measurable, MeasureSession
from deploy.latency.table import (
    BuildState,
    Calibration,
    CalibrationSample,
    Entry,
    FamilyFit,
    LatencyTable,
    Protocol,
    Provenance,
    now_iso,
)
from deploy.search.space import SubnetConfig
from deploy.targets import Target

log = logging.getLogger(__name__)

CALIBRATION_SEED = 0  # tables validate draws with another seed and skips these subnets


def partial_table_path(path: Path) -> Path:
    """Where a build measures until its table is complete and calibrated (beside the table in force)."""
    return path.with_name(f"{path.stem}.partial.json")


def _load_partial(path: Path, target: str) -> LatencyTable | None:
    if not path.exists():
        return None
    try:
        return LatencyTable.load(path, target)
    except ConfigFileError as exc:  # a partial file is derived data: a damaged one is measured again
        log.warning("ignoring %s (%s); its blocks are measured again", path, exc)
        return None


@dataclass(frozen=True)
class BuildResult:
    path: Path
    measured: int
    reused: int
    calibration: Calibration
    by_device: dict[str, int] = field(default_factory=dict)  # blocks each device measured in this run
    blocks_s: float = 0.0  # wall time of the block phase (compiling and measuring each missing block)
    calibration_s: float = 0.0  # wall time of the calibration window (compiles, then the interleaved measurement)


def block_identity(key: BlockKey) -> dict[str, str]:
    return {"block": str(key)}


class NullModel(nn.Module):
    """The cheapest model a runtime can run: what one call costs beyond the work (see call_overhead_ms)."""

    def forward(self, x):  # one op: converters reject a graph whose output is its input
        return -x


NULL_IDENTITY = {"probe": "call-overhead", "shape": "1x8"}


def null_measurable(session: MeasureSession) -> Measurable:
    return session.compile(NullModel(), torch.zeros(1, 8), NULL_IDENTITY)


def subnet_identity(supernet: Supernet, config: SubnetConfig) -> dict[str, str]:
    # Latency does not depend on weight values, so untrained weights give the same timing.
    return {"subnet": config.id, "variant": supernet.variant, "weights": "latency-only"}


def new_table(session: MeasureSession) -> LatencyTable:
    t, m = session.target, session.target.measurement
    return LatencyTable(
        provenance=Provenance(
            target=t.name,
            device=t.device.name,
            host=session.runner.describe(),
            backend=session.backend.name,
            backend_version=session.backend.version(),
            precision=t.precision,
            threads=t.threads,
            runner=session.runner.name,
            date=now_iso(),
            protocol=Protocol(
                warmup_runs=m.warmup_runs,
                min_runs=m.min_runs,
                min_time_s=m.min_time_s,
                rounds=m.rounds,
                cv_max=m.cv_max,
                max_retries=m.max_retries,
                cooldown_s=m.cooldown_s,
            ),
            method="measured",
            versions=session.versions(),
        )
    )


def calibration_configs(
    supernets: Sequence[Supernet], n: int, seed: int = CALIBRATION_SEED
) -> list[tuple[Supernet, SubnetConfig]]:
    """Per model: its smallest and largest subnet plus seeded random ones, n in all, without repeats.

    n per model, not in all: each family gets its own fit, and a fit needs its own subnets. At most
    half of a model's space, so that `tables validate` has subnets the fit has not seen (a 12-config
    learngene space would otherwise be used up).
    """
    rng = np.random.default_rng(seed)
    chosen: dict[str, tuple[Supernet, SubnetConfig]] = {}
    for net in supernets:
        mine: dict[str, SubnetConfig] = {c.id: c for c in (net.smallest(), net.largest()) if c.id not in chosen}
        quota = max(min(n, net.space().size() // 2), len(mine))
        for _ in range(20 * n):  # bounded: a small space may hold fewer than n distinct subnets
            if len(mine) >= quota:
                break
            config = net.sample(rng)
            if config.id not in chosen:
                mine.setdefault(config.id, config)
        chosen.update({i: (net, c) for i, c in mine.items()})
    return list(chosen.values())


MIN_FAMILY_SUBNETS = 4  # fewer cannot separate slope from per-block cost: such a family uses the union fit


# Terms of the calibration, each tried in and out; "sum" is always in.
_TERMS = (("sum",), ("sum", "count"), ("sum", "square"), ("sum", "count", "square"))


def _lstsq(design: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Coefficients minimising the relative error (each row divided by its measurement)."""
    coef, *_ = np.linalg.lstsq(design / measured[:, None], np.ones_like(measured), rcond=None)
    return coef


def _loo_rms(design: np.ndarray, measured: np.ndarray) -> float:
    """Leave-one-out RMS relative error: how the fit does on a subnet it was not fitted on."""
    n = len(measured)
    errors = []
    for i in range(n):
        keep = np.arange(n) != i
        coef = _lstsq(design[keep], measured[keep])
        errors.append((design[i] @ coef - measured[i]) / measured[i])
    return float(np.sqrt(np.mean(np.square(errors))))


def _fit(samples: Sequence[CalibrationSample], overhead_ms: float = 0.0) -> tuple[float, float, float, float]:
    """(slope, per_block_ms, quad_per_ms, in-sample RMS relative residual %) of the chosen fit.

    measured ≈ slope · Σ + per_block · n + quad · Σ², fitted on relative error for every subset of the
    optional terms (4 fits). Fits with a negative coefficient are out (they extrapolate to negative
    costs); of the rest, the lowest leave-one-out error wins, so a term that only fits the noise of 12
    subnets is left out (in-sample error always prefers more terms: 4.7% vs 4.7%, but 11.0% vs 5.5%
    left-one-out for MatFormer on host-cpu-ort).
    """
    sums = np.array([s.block_sum_ms - max(s.n_blocks - 1, 0) * overhead_ms for s in samples])
    columns = {
        "sum": sums,
        "count": np.array([s.n_blocks for s in samples], dtype=float),
        "square": sums**2,
    }
    measured = np.array([s.measured_ms for s in samples])
    best: tuple[float, dict[str, float]] | None = None
    for terms in _TERMS:
        if len(samples) < len(terms) + 3:  # leave-one-out needs spare subnets, or it picks a wild fit
            continue
        design = np.stack([columns[t] for t in terms], axis=1)
        coef = _lstsq(design, measured)
        if (coef < 0).any():
            continue
        loo = _loo_rms(design, measured)
        if best is None or loo < best[0]:
            best = (loo, dict(zip(terms, map(float, coef), strict=True)))
    coef = {"sum": float(np.median(measured / sums))} if best is None else best[1]  # else: the median ratio
    fitted = coef["sum"] * sums + coef.get("count", 0.0) * columns["count"] + coef.get("square", 0.0) * sums**2
    residual = float(np.sqrt(np.mean(((fitted - measured) / measured) ** 2)) * 100)
    return coef["sum"], coef.get("count", 0.0), coef.get("square", 0.0), residual


def fit_calibration(samples: list[CalibrationSample], call_overhead_ms: float = 0.0) -> Calibration:
    """The table's calibration: one fit over all samples and, with several families, one per family.

    Relative error, so a 0.1 ms subnet counts as much as a 1.5 ms one; no free intercept, because a
    negative one predicted negative latencies for the smallest subnets when the machine was noisy.
    Per family because one line over a MatFormer and a POA ViT fitted 9% RMS here where each family's
    own fitted closer (see `_fit` for the terms). Sums are net of `call_overhead_ms` per extra block.
    """
    slope, per_block, quad, residual = _fit(samples, call_overhead_ms)
    by_family: dict[str, list[CalibrationSample]] = {}
    for sample in samples:
        by_family.setdefault(str(sample.config.get("family", "")), []).append(sample)
    families = {}
    if len(by_family) > 1:
        for family, group in sorted(by_family.items()):
            if len(group) >= MIN_FAMILY_SUBNETS:
                f_slope, f_per_block, f_quad, f_residual = _fit(group, call_overhead_ms)
                families[family] = FamilyFit(
                    slope=f_slope,
                    per_block_ms=f_per_block,
                    quad_per_ms=f_quad,
                    residual_pct=f_residual,
                    n_subnets=len(group),
                )
    return Calibration(
        slope=slope,
        per_block_ms=per_block,
        quad_per_ms=quad,
        intercept_ms=0.0,
        residual_pct=residual,
        n_subnets=len(samples),
        fitted_at=now_iso(),
        samples=samples,
        families=families,
        call_overhead_ms=call_overhead_ms,
    )


def build_table(
    target: Target,
    supernets: Sequence[Supernet],
    *,
    path: Path | None = None,
    rebuild: bool = False,
    recalibrate: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> BuildResult:
    """Measure the blocks `supernets` can produce that the table lacks, then calibrate on whole subnets.

    `rebuild` measures every block again; `recalibrate` re-measures only the calibration window (its
    blocks and whole subnets), e.g. after the machine's speed moved. The executor spreads the blocks
    over the target's devices (deploy/executors; default: one at a time, here); the calibration
    window runs on one device.
    """
    path = path or target.table_write_path
    workspace.check_writable(path.parent, "latency table folder")  # before any measuring
    workspace.check_writable(cache_dir or workspace.cache_dir(), "cache")
    partial_path = partial_table_path(path)
    in_force = path if path.exists() or path != target.table_write_path else target.table_path  # else: shipped
    executor = executor or LocalExecutor()
    session = executor.session(target, cache_dir)
    fingerprints = session.fingerprints()  # per device: a table may merge devices of several runner kinds
    table = new_table(session)
    old = LatencyTable.load(in_force, target.name) if in_force.exists() else None
    pending = _load_partial(partial_path, target.name)
    if pending is not None and pending.build is not None and pending.build.rebuild:
        rebuild = True  # an interrupted rebuild goes on as one, whatever the rerun's flags
    if pending is not None:
        table.entries = [e for e in pending.entries if e.fingerprint in fingerprints.values()]
        log.info("resuming the interrupted build in %s: %d blocks already measured", partial_path, len(table.entries))
    if old is not None and not rebuild:
        have_now = table.index()
        kept = [e for e in old.entries if e.fingerprint in fingerprints.values() and e.key not in have_now]
        stale = len(old.entries) - len(kept) - len(have_now)
        if stale > 0:
            log.info("%d entries were measured with other settings and will be measured again", stale)
        table.entries = sorted([*table.entries, *kept], key=lambda e: e.key)
    table.build = BuildState(rebuild=rebuild, started=pending.build.started if pending and pending.build else now_iso())
    owner = {b: net for net in supernets for b in net.all_blocks()}
    blocks = sorted(owner)
    have = table.index()
    todo = [b for b in blocks if b not in have]
    log.info("%d blocks in the space, %d already measured, %d to measure", len(blocks), len(have), len(todo))
    complete = not todo and pending is None and old is not None and not rebuild
    complete = complete and old is not None and len(table.entries) == len(old.entries)
    if complete and old is not None and old.calibration is not None and not recalibrate:
        log.info("%s is complete and calibrated; nothing to measure (--rebuild measures it all again)", path)
        return BuildResult(path, measured=0, reused=len(blocks), calibration=old.calibration)
    configs = calibration_configs(supernets, target.measurement.calibration_subnets)
    # Every block, not only the calibration subnets' ones: blocks measured one after another above each
    # saw the machine at a different moment (elastic_vit's 147 new ones spread over minutes gave single
    # blocks +20% off); measured again interleaved, the whole table shares the subnets' time window.
    window_blocks = blocks
    by_device: dict[str, int] = {}

    def compile_block(key: BlockKey) -> Measurable:
        module, example = owner[key].measurable_block(key)
        return session.compile(module, example, block_identity(key))

    # The device is held for the whole build: a deploy measuring between two blocks would see this
    # process compiling the next one (and the blocks would see the deploy).
    started = time.perf_counter()
    with (
        measuring(session.runner, f"tables build {target.name}"),
        Progress(disable=not progress, transient=False) as bar,
    ):
        task = bar.add_task(f"[cyan]blocks on {target.name}", total=len(blocks), completed=len(blocks) - len(todo))
        # drift (deploy/latency/drift.py): reference blocks re-timed every few blocks; a moved segment is re-measured
        guard = build_drift_guard(executor.name, session, blocks, todo, compile_block)
        try:
            for done in executor.spread(session, todo, compile_block):
                table.upsert(Entry.from_stats(done.key, done.stats, fingerprints[done.device], done.device))
                for key, stats in (guard.after(done.key) if guard else {}).items():
                    table.upsert(Entry.from_stats(key, stats, fingerprints[done.device], done.device))
                table.save(partial_path)  # after every block: an interrupted build resumes from here
                by_device[done.device] = by_device.get(done.device, 0) + 1
                label = f"[cyan]{done.key.kind} {done.stats.median_ms:.3f} ms on {done.device}"
                bar.update(task, advance=1, description=label)
        except KeyboardInterrupt:
            table.save(partial_path)
            raise BuildInterruptedError(
                f"{len(table.index().keys() & set(blocks))} of {len(blocks)} blocks are saved in "
                f"{partial_path}; {'the table in force, ' + str(path) + ', is unchanged' if old else 'no table yet'}"
                f"; run the same command again to resume"
            ) from None
        table.save(partial_path)  # the calibration window takes minutes: a Ctrl-C in it keeps the blocks

        # Calibration: blocks and whole subnets interleaved in one time window, so the fit sees the
        # ratio between them rather than the machine's drift between two separate sweeps.
        blocks_s = time.perf_counter() - started
        cal = bar.add_task("[magenta]calibration subnets", total=len(configs) + len(window_blocks))
        block_items = []
        for key in window_blocks:
            module, example = owner[key].measurable_block(key)
            block_items.append(session.compile(module, example, block_identity(key)))
            bar.update(cal, advance=1)
        subnet_items = []
        for net, config in configs:
            subnet_items.append(
                session.compile(
                    net.extract(config), net.example_inputs(), subnet_identity(net, config), net.input_names()
                )
            )
            bar.update(cal, advance=1)
        bar.update(cal, description="[magenta]measuring blocks and subnets interleaved")
        try:
            *stats, null = session.measure(block_items + subnet_items + [null_measurable(session)])
        except KeyboardInterrupt:
            raise BuildInterruptedError(
                f"stopped in the calibration window; every block is saved in {partial_path}; "
                f"{'the table in force, ' + str(path) + ', is unchanged' if old else 'no table yet'}; "
                "run the same command again to calibrate"
            ) from None

    window = dict(zip(window_blocks, stats[: len(window_blocks)], strict=True))
    device = session.device_id()  # the one device the window ran on
    for key, s in window.items():  # the table holds the same-window block figures the fit used
        table.upsert(Entry.from_stats(key, s, fingerprints[device], device))
    samples = []
    for (net, config), s in zip(configs, stats[len(window_blocks) :], strict=True):
        keys = net.blocks(config)
        samples.append(
            CalibrationSample(
                subnet_id=config.id,
                config=config.to_json(),
                block_sum_ms=sum(window[k].median_ms for k in keys),
                n_blocks=len(keys),
                measured_ms=s.median_ms,
                cv=s.cv,
            )
        )
    table.calibration = fit_calibration(samples, call_overhead_ms=null.median_ms)
    table.validation = None  # a new calibration invalidates the old out-of-sample figures
    table.validations = {}
    table.provenance = table.provenance.model_copy(update={"date": now_iso()})
    table.build = None
    table.save(path)  # complete and calibrated: it replaces the table in force in one step
    partial_path.unlink(missing_ok=True)
    log.info(
        "calibration: call overhead %.4f ms, slope %.3f, per block %.4f ms, Σ² %.3f /ms, fit residual %.1f%%",
        table.calibration.call_overhead_ms,
        table.calibration.slope,
        table.calibration.per_block_ms,
        table.calibration.quad_per_ms,
        table.calibration.residual_pct,
    )
    for family, fit in table.calibration.families.items():
        log.info(
            "  %s alone (%d subnets): slope %.3f, per block %.4f ms, Σ² %.3f /ms, fit residual %.1f%%",
            family,
            fit.n_subnets,
            fit.slope,
            fit.per_block_ms,
            fit.quad_per_ms,
            fit.residual_pct,
        )
    return BuildResult(
        path,
        measured=len(todo),
        reused=len(blocks) - len(todo),
        calibration=table.calibration,
        by_device=by_device,
        blocks_s=blocks_s,
        calibration_s=time.perf_counter() - started - blocks_s,
    )
