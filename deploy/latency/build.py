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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploy import workspace
from deploy.errors import BuildInterruptedError, ConfigFileError
from deploy.executors.base import Executor, MakeItem
from deploy.executors.local import LocalExecutor
from deploy.families.base import BlockKey, Supernet
from deploy.latency.build_guard import build_drift_guard
from deploy.latency.calibration import fit_calibration
from deploy.latency.lock import measuring
from deploy.latency.session import Measurable, MeasureSession
from deploy.latency.stats import LatencyStats
from deploy.latency.table import (
    BuildState,
    Calibration,
    CalibrationSample,
    Entry,
    LatencyTable,
    Protocol,
    Provenance,
    now_iso,
)
from deploy.progress import Progress, ProgressTask
from deploy.search.space import SubnetConfig
from deploy.targets import Target

log = logging.getLogger(__name__)

CALIBRATION_SEED = 0  # tables validate draws with another seed and skips these subnets


def partial_table_path(path: Path) -> Path:
    """Where a build measures until its table is complete and calibrated (beside the table in force)."""
    return path.with_name(f"{path.stem}.partial.json")


@dataclass(frozen=True)
class BuildPaths:
    table: Path  # what the build writes once complete and calibrated
    partial: Path  # where it measures until then
    in_force: Path  # the table deploys read meanwhile (the workspace's, else the shipped one)

    @classmethod
    def of(cls, target: Target, path: Path | None = None) -> BuildPaths:
        path = path or target.table_write_path
        in_force = path if path.exists() or path != target.table_write_path else target.table_path
        return cls(path, partial_table_path(path), in_force)

    def unchanged(self, old: LatencyTable | None) -> str:
        """What an interrupted build left in force, for its message."""
        return f"the table in force, {self.table}, is unchanged" if old is not None else "no table yet"


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
    written: bool = True  # False: the table was complete and calibrated, nothing was measured


@dataclass(frozen=True)
class BuildStart:
    """Where a build starts: the entries it keeps (resumed from the partial file, and those of the table in
    force still measured with these settings), the table in force, and whether it is a rebuild."""

    table: LatencyTable  # the table being built, holding the kept entries
    old: LatencyTable | None
    resumed: bool
    rebuild: bool  # asked for, or the interrupted build being resumed was one

    def up_to_date(self, todo: Sequence[BlockKey]) -> bool:
        """Nothing to measure and the table in force holds exactly these entries."""
        old, rebuilt = self.old, self.resumed or self.rebuild
        return not todo and not rebuilt and old is not None and len(self.table.entries) == len(old.entries)


def start_build(session: MeasureSession, paths: BuildPaths, rebuild: bool) -> BuildStart:
    """The new table with what a build can keep; an interrupted build is resumed from its partial file."""
    name = session.target.name
    fingerprints = set(session.fingerprints().values())  # per device: a table may merge several runner kinds
    table = new_table(session)
    old = LatencyTable.load(paths.in_force, name) if paths.in_force.exists() else None
    pending = _load_partial(paths.partial, name)
    if pending is not None and pending.build is not None and pending.build.rebuild:
        rebuild = True  # an interrupted rebuild goes on as one, whatever the rerun's flags
    if pending is not None:
        table.entries = [e for e in pending.entries if e.fingerprint in fingerprints]
        log.info("resuming the interrupted build in %s: %d blocks already measured", paths.partial, len(table.entries))
    if old is not None and not rebuild:
        have_now = table.index()
        kept = [e for e in old.entries if e.fingerprint in fingerprints and e.key not in have_now]
        stale = len(old.entries) - len(kept) - len(have_now)
        if stale > 0:
            log.info("%d entries were measured with other settings and will be measured again", stale)
        table.entries = sorted([*table.entries, *kept], key=lambda e: e.key)
    table.build = BuildState(rebuild=rebuild, started=pending.build.started if pending and pending.build else now_iso())
    return BuildStart(table, old, pending is not None, rebuild)


def measure_blocks(
    executor: Executor,
    session: MeasureSession,
    start: BuildStart,
    paths: BuildPaths,
    blocks: Sequence[BlockKey],
    todo: Sequence[BlockKey],
    compile_block: MakeItem,
    task: ProgressTask,
) -> dict[str, int]:
    """Measure `todo` through the executor into the partial file, one entry at a time; the blocks each device
    measured. A Ctrl-C saves what was measured and ends in a BuildInterruptedError (the same command resumes)."""
    table, fingerprints = start.table, session.fingerprints()
    by_device: dict[str, int] = {}
    # drift (deploy/latency/build_guard.py): reference blocks re-timed every few blocks; a moved segment is re-measured
    guard = build_drift_guard(executor.name, session, blocks, todo, compile_block)
    try:
        for done in executor.spread(session, todo, compile_block):
            table.upsert(Entry.from_stats(done.key, done.stats, fingerprints[done.device], done.device))
            for key, stats in (guard.after(done.key) if guard else {}).items():
                table.upsert(Entry.from_stats(key, stats, fingerprints[done.device], done.device))
            table.save(paths.partial)  # after every block: an interrupted build resumes from here
            by_device[done.device] = by_device.get(done.device, 0) + 1
            task.advance(description=f"{done.key.kind} {done.stats.median_ms:.3f} ms on {done.device}")
    except KeyboardInterrupt:
        table.save(paths.partial)
        raise BuildInterruptedError(
            f"{len(table.index().keys() & set(blocks))} of {len(blocks)} blocks are saved in {paths.partial}; "
            f"{paths.unchanged(start.old)}; run the same command again to resume"
        ) from None
    table.save(paths.partial)  # the calibration window takes minutes: a Ctrl-C in it keeps the blocks
    return by_device


def window_interrupted(paths: BuildPaths, old: LatencyTable | None) -> BuildInterruptedError:
    return BuildInterruptedError(
        f"stopped in the calibration window; every block is saved in {paths.partial}; {paths.unchanged(old)}; "
        "run the same command again to calibrate"
    )


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


def build_table(
    target: Target,
    supernets: Sequence[Supernet],
    *,
    path: Path | None = None,
    rebuild: bool = False,
    recalibrate: bool = False,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> BuildResult:
    """Measure the blocks `supernets` can produce that the table lacks, then calibrate on whole subnets.

    `rebuild` measures every block again; `recalibrate` re-measures only the calibration window (its
    blocks and whole subnets), e.g. after the machine's speed moved. The executor spreads the blocks
    over the target's devices (deploy/executors; default: one at a time, here); the calibration
    window runs on one device.
    """
    paths = BuildPaths.of(target, path)
    workspace.check_writable(paths.table.parent, "latency table folder")  # before any measuring
    workspace.check_writable(cache_dir or workspace.cache_dir(), "cache")
    executor = executor or LocalExecutor()
    session = executor.session(target, cache_dir)
    start = start_build(session, paths, rebuild)
    table, old = start.table, start.old
    owner = {b: net for net in supernets for b in net.all_blocks()}
    blocks = sorted(owner)
    have = table.index()
    todo = [b for b in blocks if b not in have]
    log.info("%d blocks in the space, %d already measured, %d to measure", len(blocks), len(have), len(todo))
    if start.up_to_date(todo) and old is not None and old.calibration is not None and not recalibrate:
        log.info("%s is complete and calibrated; nothing to measure (--rebuild measures it all again)", paths.table)
        return BuildResult(paths.table, measured=0, reused=len(blocks), calibration=old.calibration, written=False)
    configs = calibration_configs(supernets, target.measurement.calibration_subnets)

    def compile_block(key: BlockKey) -> Measurable:
        module, example = owner[key].measurable_block(key)
        return session.compile(module, example, block_identity(key))

    # The device is held for the whole build: a deploy measuring between two blocks would see this
    # process compiling the next one (and the blocks would see the deploy).
    started = time.perf_counter()
    with measuring(session.runner, f"tables build {target.name}"):
        task = ProgressTask(
            progress, "blocks", len(blocks), completed=len(blocks) - len(todo), description=f"blocks on {target.name}"
        )
        by_device = measure_blocks(executor, session, start, paths, blocks, todo, compile_block, task)

        # Calibration: blocks and whole subnets interleaved in one time window, so the fit sees the
        # ratio between them rather than the machine's drift between two separate sweeps.
        blocks_s = time.perf_counter() - started
        cal = ProgressTask(progress, "calibration", len(configs) + len(blocks), description="calibration subnets")
        # Every block, not only the calibration subnets' ones: blocks measured one after another above each
        # saw the machine at a different moment (docs/targets-and-tables.md, "How a table is measured");
        # measured again interleaved, the whole table shares the subnets' time window.
        subnets = [partial(compile_subnet, session, net, config) for net, config in configs]
        window, subnet_stats, null = measure_window(
            session, paths, old, blocks, compile_block, subnets, cal, "measuring blocks and subnets interleaved"
        )

    samples = [
        CalibrationSample(
            subnet_id=config.id,
            config=config.to_json(),
            block_sum_ms=sum(window[k].median_ms for k in net.blocks(config)),
            n_blocks=len(net.blocks(config)),
            measured_ms=s.median_ms,
            cv=s.cv,
        )
        for (net, config), s in zip(configs, subnet_stats, strict=True)
    ]
    calibration = complete_table(session, table, paths, window, fit_calibration(samples, null.median_ms))
    return BuildResult(
        paths.table,
        measured=len(todo),
        reused=len(blocks) - len(todo),
        calibration=calibration,
        by_device=by_device,
        blocks_s=blocks_s,
        calibration_s=time.perf_counter() - started - blocks_s,
    )


def compile_subnet(session: MeasureSession, net: Supernet, config: SubnetConfig) -> Measurable:
    return session.compile(net.extract(config), net.example_inputs(), subnet_identity(net, config), net.input_names())


def measure_window(
    session: MeasureSession,
    paths: BuildPaths,
    old: LatencyTable | None,
    blocks: Sequence[BlockKey],
    compile_block: MakeItem,
    others: Sequence[Callable[[], Measurable]],
    task: ProgressTask,
    description: str,
) -> tuple[dict[BlockKey, LatencyStats], list[LatencyStats], LatencyStats]:
    """The calibration window: compile every block and the `others`, then measure them with the null model
    interleaved, in one time window; (block figures, the others' figures, the null model's)."""
    items = []
    for key in blocks:
        items.append(compile_block(key))
        task.advance()
    for make in others:
        items.append(make())
        task.advance()
    task.describe(description)
    try:
        *stats, null = session.measure([*items, null_measurable(session)])
    except KeyboardInterrupt:
        raise window_interrupted(paths, old) from None
    return dict(zip(blocks, stats[: len(blocks)], strict=True)), stats[len(blocks) :], null


def complete_table(
    session: MeasureSession,
    table: LatencyTable,
    paths: BuildPaths,
    window: Mapping[BlockKey, LatencyStats],
    calibration: Calibration,
) -> Calibration:
    """Store the window's block figures (the ones the fit used) and the calibration, then replace the table
    in force in one step and drop the partial file."""
    device = session.device_id()  # the one device the window ran on
    fingerprint = session.fingerprints()[device]
    for key, s in window.items():
        table.upsert(Entry.from_stats(key, s, fingerprint, device))
    table.calibration = calibration
    table.validation = None  # a new calibration invalidates the old out-of-sample figures
    table.validations = {}
    table.provenance = table.provenance.model_copy(update={"date": now_iso()})
    table.build = None
    table.save(paths.table)  # complete and calibrated: it replaces the table in force in one step
    paths.partial.unlink(missing_ok=True)
    log.info(
        "calibration: call overhead %.4f ms, slope %.3f, per block %.4f ms, Σ² %.3f /ms, fit residual %.1f%%",
        calibration.call_overhead_ms,
        calibration.slope,
        calibration.per_block_ms,
        calibration.quad_per_ms,
        calibration.residual_pct,
    )
    for family, fit in calibration.families.items():
        log.info(
            "  %s alone (%d subnets): slope %.3f, per block %.4f ms, Σ² %.3f /ms, fit residual %.1f%%",
            family,
            fit.n_subnets,
            fit.slope,
            fit.per_block_ms,
            fit.quad_per_ms,
            fit.residual_pct,
        )
    return calibration
