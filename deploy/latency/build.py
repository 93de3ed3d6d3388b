"""Regenerate a target's latency table: measure every block its models can produce, then calibrate.

Entries are written as they are measured (atomic writes), so an interrupted build loses nothing and
the same command resumes: only missing or stale entries (measured with another backend version,
thread count or protocol) are measured again. The calibration measures random whole subnets
interleaved with their blocks in the same time window and fits measured ≈ f(block sum).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.progress import Progress

from deploy.latency.session import MeasureSession
from deploy.latency.table import (
    Calibration,
    CalibrationSample,
    Entry,
    LatencyTable,
    Protocol,
    Provenance,
    now_iso,
)
from deploy.space import SubnetConfig
from deploy.supernets.base import BlockKey, Supernet
from deploy.targets import Target

log = logging.getLogger(__name__)

CALIBRATION_SEED = 0  # tables validate draws with another seed and skips these subnets


@dataclass(frozen=True)
class BuildResult:
    path: Path
    measured: int
    reused: int
    calibration: Calibration


def block_identity(key: BlockKey) -> dict[str, str]:
    return {"block": str(key)}


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
    """The smallest and largest subnet of each model plus seeded random ones, without repeats."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, tuple[Supernet, SubnetConfig]] = {}
    for net in supernets:
        for config in (net.smallest(), net.largest()):
            chosen[config.id] = (net, config)
    for i in range(20 * n):  # bounded: a small space may hold fewer than n distinct subnets
        if len(chosen) >= n:
            break
        net = supernets[i % len(supernets)]
        config = net.sample(rng)
        chosen.setdefault(config.id, (net, config))
    return list(chosen.values())


def fit_calibration(samples: list[CalibrationSample]) -> Calibration:
    """measured ≈ slope · block_sum + per_block_ms · n_blocks, fitted on relative error.

    Relative error, so a 0.1 ms subnet counts as much as a 1.5 ms one; no free intercept, because a
    negative one predicted negative latencies for the smallest subnets when the machine was noisy.
    A negative per-block term (too few distinct shapes to separate it) falls back to a pure ratio.
    """
    sums = np.array([s.block_sum_ms for s in samples])
    counts = np.array([s.n_blocks for s in samples], dtype=float)
    measured = np.array([s.measured_ms for s in samples])
    design = np.stack([sums, counts], axis=1)
    coef, *_ = np.linalg.lstsq(design / measured[:, None], np.ones_like(measured), rcond=None)
    if coef[0] <= 0 or coef[1] < 0:
        coef = np.array([float(np.median(measured / sums)), 0.0])
    fitted = design @ coef
    residual = float(np.sqrt(np.mean(((fitted - measured) / measured) ** 2)) * 100)
    return Calibration(
        slope=float(coef[0]),
        per_block_ms=float(coef[1]),
        intercept_ms=0.0,
        residual_pct=residual,
        n_subnets=len(samples),
        fitted_at=now_iso(),
        samples=samples,
    )


def build_table(
    target: Target,
    supernets: Sequence[Supernet],
    *,
    path: Path | None = None,
    rebuild: bool = False,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> BuildResult:
    path = path or target.table_path
    session = MeasureSession.open(target, cache_dir)
    fingerprint = session.fingerprint()
    table = new_table(session)
    old = LatencyTable.load(path, target.name) if path.exists() and not rebuild else None
    if old is not None:
        table.entries = [e for e in old.entries if e.fingerprint == fingerprint]
        stale = len(old.entries) - len(table.entries)
        if stale:
            log.info("%d entries were measured with other settings and will be measured again", stale)
    owner = {b: net for net in supernets for b in net.all_blocks()}
    blocks = sorted(owner)
    have = table.index()
    todo = [b for b in blocks if b not in have]
    log.info("%d blocks in the space, %d already measured, %d to measure", len(blocks), len(have), len(todo))
    if not todo and old is not None and old.calibration is not None and len(table.entries) == len(old.entries):
        log.info("%s is complete and calibrated; nothing to measure (--rebuild measures it all again)", path)
        return BuildResult(path, measured=0, reused=len(blocks), calibration=old.calibration)
    configs = calibration_configs(supernets, target.measurement.calibration_subnets)
    window_blocks = sorted({k for net, config in configs for k in net.blocks(config)})

    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task(f"[cyan]blocks on {target.name}", total=len(blocks), completed=len(blocks) - len(todo))
        for key in todo:
            module, example = owner[key].measurable_block(key)
            (stats,) = session.measure([session.compile(module, example, block_identity(key))])
            table.upsert(Entry.from_stats(key, stats, fingerprint))
            table.save(path)  # after every block: an interrupted build resumes from here
            bar.update(task, advance=1, description=f"[cyan]{key.kind} {stats.median_ms:.3f} ms")

        # Calibration: blocks and whole subnets interleaved in one time window, so the fit sees the
        # ratio between them rather than the machine's drift between two separate sweeps.
        cal = bar.add_task("[magenta]calibration subnets", total=len(configs) + len(window_blocks))
        block_items = []
        for key in window_blocks:
            module, example = owner[key].measurable_block(key)
            block_items.append(session.compile(module, example, block_identity(key)))
            bar.update(cal, advance=1)
        subnet_items = []
        for net, config in configs:
            subnet_items.append(session.compile(net.extract(config), net.example_input(), subnet_identity(net, config)))
            bar.update(cal, advance=1)
        bar.update(cal, description="[magenta]measuring blocks and subnets interleaved")
        stats = session.measure(block_items + subnet_items)

    window = dict(zip(window_blocks, stats[: len(window_blocks)], strict=True))
    for key, s in window.items():  # the table holds the same-window block figures the fit used
        table.upsert(Entry.from_stats(key, s, fingerprint))
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
    table.calibration = fit_calibration(samples)
    table.validation = None  # a new calibration invalidates the old out-of-sample figures
    table.provenance = table.provenance.model_copy(update={"date": now_iso()})
    table.save(path)
    log.info(
        "calibration: slope %.3f, per block %.4f ms, intercept %.4f ms, fit residual %.1f%%",
        table.calibration.slope,
        table.calibration.per_block_ms,
        table.calibration.intercept_ms,
        table.calibration.residual_pct,
    )
    return BuildResult(path, measured=len(todo), reused=len(blocks) - len(todo), calibration=table.calibration)
