"""The subnets under test and their paths: one `Subnet` per config, one timed call per path, measured
together in one interleaved run and summarised against a reference path.

A conversion-path comparison defines a `PathSet` (its paths, which one is the reference, which one is
the reference measured again: the repeatability floor) and a `prepare(sub, ctx)` that fills
`sub.calls[path]`, `sub.parity[path]` and the like; `compare_paths` does the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy.errors import DeployError
from deploy.families.base import Supernet
from deploy.latency.measure import measure_interleaved
from deploy.latency.stats import LatencyStats, MeasureProtocol, relative_standard_error
from deploy.search.space import SubnetConfig
from deploy.targets import Target

log = logging.getLogger("benchmarks.harness")

MODEL = "matformer_vit_mnist"
QUICK_MODEL = "matformer_vit_tiny"  # --quick: seconds, not minutes
INIT_SEED = 0  # random init when no checkpoint exists
SUBNET_SEED = 0  # the random subnets: the same in every comparison
RANDOM_SUBNETS = 3
# --quick: a smoke test of the whole comparison, not figures to quote.
QUICK_PROTOCOL = MeasureProtocol(warmup_runs=2, min_runs=5, min_time_s=0.0, rounds=2, cv_max=10.0, max_retries=0)

Call = Callable[[], object]
Outputs = Sequence[np.ndarray] | Mapping[str, np.ndarray]


@dataclass
class Subnet:
    label: str
    config: SubnetConfig
    params: int
    module: nn.Module | None = None
    calls: dict[str, Call] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)  # max abs diff vs the reference outputs
    skipped: dict[str, str] = field(default_factory=dict)  # path -> one-line reason
    convert_s: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # path -> what the comparison records (ops, sizes, …)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PathSet:
    """The paths of one comparison, in column order; `reference` is what ratios divide by."""

    labels: Mapping[str, str]  # path -> what it is
    short: Mapping[str, str]  # path -> column header
    reference: str
    repeat: str  # the reference measured again as a second item
    info_key: str = "info"  # the row field holding Subnet.info

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(self.labels)

    @property
    def others(self) -> tuple[str, ...]:
        return tuple(p for p in self.labels if p != self.reference)


@dataclass
class Context:
    """What a comparison's `prepare` gets for each subnet."""

    net: Supernet
    target: Target
    work: Path
    args: argparse.Namespace
    shared: dict[str, Any] = field(default_factory=dict)  # built once, used for every subnet
    record: dict[str, Any] = field(default_factory=dict)  # what the comparison adds to the result body


def load_supernet(model: str) -> tuple[Supernet, str]:
    """Trained weights when the checkpoint exists, else a seeded random init (latency ignores values)."""
    from deploy.models import build
    from deploy.models.checkpoint import default_path, load

    path = default_path(model)
    if path.is_file():
        net, info = load(model)
        return net.eval(), f"trained checkpoint {path.name} (sha256 {info.sha256[:12]})"
    torch.manual_seed(INIT_SEED)
    return build(model).eval(), (
        f"seeded random init (torch.manual_seed({INIT_SEED})): no {path.name} found; latency does not "
        "depend on weight values (parity figures depend on them only slightly)"
    )


def pick_subnets(net: Supernet, n_random: int, seed: int) -> list[tuple[str, SubnetConfig]]:
    """The smallest, the largest and `n_random` distinct seeded random subnets."""
    picked = [("smallest", net.smallest()), ("largest", net.largest())]
    seen = {c.id for _, c in picked}
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        if len(picked) == 2 + n_random:
            break
        config = net.sample(rng)
        if config.id not in seen:
            seen.add(config.id)
            picked.append((f"random-{len(picked) - 1}", config))
    return picked


def add_subnet_arguments(parser: argparse.ArgumentParser, default_target: str) -> None:
    parser.add_argument("--target", default=default_target, help="threads and protocol come from this target")
    parser.add_argument("--random", type=int, default=RANDOM_SUBNETS, help="number of seeded random subnets")
    parser.add_argument("--seed", type=int, default=SUBNET_SEED, help="seed of the random subnets")
    parser.add_argument("--limit", type=int, default=None, help="only the first N subnets")


def subnets_under_test(args: argparse.Namespace) -> tuple[Supernet, str, list[tuple[str, SubnetConfig]]]:
    """The model and its subnets: matformer_vit_mnist's smallest, largest and random ones, or with
    --quick the tiny variant's smallest alone."""
    net, weights = load_supernet(QUICK_MODEL if args.quick else MODEL)
    picked = pick_subnets(net, 0 if args.quick else args.random, args.seed)
    limit = 1 if args.quick else args.limit
    return net, weights, picked[:limit]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The exporters print progress and warn a lot; none of it is a result here."""
    torch_onnx = logging.getLogger("torch.onnx")
    level = torch_onnx.level
    torch_onnx.setLevel(logging.ERROR)  # e.g. "torchvision is not installed. Skipping ..."
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx.setLevel(level)


def geomean(values: Sequence[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else math.nan


def one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def max_abs_diff(got: Outputs, want: Outputs) -> float:
    """The largest absolute difference over all outputs, in order (inf when the shapes differ)."""
    worst = 0.0
    as_list = lambda o: list(o.values()) if isinstance(o, Mapping) else list(o)  # noqa: E731
    for g, w in zip(as_list(got), as_list(want), strict=True):
        g, w = np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64)
        if g.shape != w.shape:
            return math.inf
        worst = max(worst, float(np.max(np.abs(g - w))))
    return worst


Built = tuple[Call, Outputs, float | None]  # timed call, outputs on the reference input, convert s


def add_path(sub: Subnet, path: str, build: Callable[[], Built], reference: Outputs, atol: float) -> None:
    """Build one path; a failure or a missed parity skips that (subnet, path) with its reason."""
    try:
        call, outputs, seconds = build()
        sub.parity[path] = max_abs_diff(outputs, reference)
        if not sub.parity[path] <= atol:
            raise DeployError(f"parity {sub.parity[path]:.2g} > {atol:g}")
    except DeployError as exc:
        sub.skipped[path] = one_line(str(exc))
        sub.parity.pop(path, None)
        return
    sub.calls[path] = call
    if seconds is not None:
        sub.convert_s[path] = float(seconds)


def apply_global_skips(subnets: Sequence[Subnet], paths: PathSet, everywhere: Mapping[str, str] = {}) -> None:
    """A path is a column only if it worked for every subnet (the geomean compares like with like);
    `everywhere` skips paths that cannot run at all (a missing toolchain), with the reason."""
    for path in paths.others:
        failed = [s for s in subnets if path in s.skipped]
        why = everywhere.get(path) or (
            f"failed for {', '.join(s.label for s in failed)} ({failed[0].skipped[path]})" if failed else ""
        )
        if not why:
            continue
        for s in subnets:
            s.calls.pop(path, None)
            s.parity.pop(path, None)
            s.skipped[path] = s.skipped.get(path, why)
    bad = next((s for s in subnets if paths.reference in s.skipped), None)
    if bad is not None:
        raise DeployError(
            f"the reference path {paths.reference} failed for {bad.label}: {bad.skipped[paths.reference]}"
        )


def measure(
    subnets: Sequence[Subnet], protocol: MeasureProtocol, where: str, self_timed: bool = False
) -> dict[str, LatencyStats]:
    """Every (subnet, path) as one item of a single interleaved measurement."""
    from rich.console import Console

    calls = {f"{s.label}|{path}": call for s in subnets for path, call in s.calls.items()}
    with Console(stderr=True).status("measuring") as status, torch.inference_mode():
        return measure_interleaved(  # no gate warning: the results show every item's round CV
            calls, protocol, on_progress=status.update, seed=0, where=where, self_timed=self_timed, warn_noisy=False
        )


def summarize(
    subnets: Sequence[Subnet], stats: Mapping[str, LatencyStats], paths: PathSet, cv_max: float
) -> dict[str, Any]:
    """Per subnet: every path's statistics, its ratio to the reference and its parity; over subnets: the
    geometric mean ratio, the repeatability floor, round CVs and the worst parity. A skipped path carries
    "skipped: <reason>" instead of a number, everywhere."""
    ref, ratio_key = paths.reference, f"ratio_vs_{paths.reference}"
    rows = []
    for s in subnets:
        lat = {path: stats[f"{s.label}|{path}"] for path in s.calls}
        base = lat[ref].median_ms
        rows.append(
            {
                "subnet": s.label,
                "id": s.config.id,
                "config": s.config.to_json()["choices"],
                "params": s.params,
                "median_ms": {p: lat[p].median_ms if p in lat else f"skipped: {s.skipped.get(p)}" for p in paths.paths},
                "p90_ms": {p: v.p90_ms for p, v in lat.items()},
                "round_cv": {p: v.cv for p, v in lat.items()},
                "median_rse": {p: relative_standard_error(v) for p, v in lat.items()},
                "round_medians_ms": {p: list(v.round_medians_ms) for p, v in lat.items()},
                "n_runs": {p: v.n_runs for p, v in lat.items()},
                ratio_key: {p: lat[p].median_ms / base for p in paths.others if p in lat},
                "parity_max_abs_diff": {
                    p: s.parity[p] if p in s.parity else f"skipped: {s.skipped.get(p)}" for p in paths.paths
                },
                "convert_s": {p: round(v, 3) for p, v in s.convert_s.items()},
                paths.info_key: dict(s.info),
                "skipped": dict(s.skipped),
                "notes": list(s.notes),
            }
        )
    ratios, ranges, counted = {}, {}, {}
    for p in paths.others:
        values = [r[ratio_key][p] for r in rows if p in r[ratio_key]]
        counted[p] = len(values)
        ranges[p] = [min(values), max(values)] if values else None
        ratios[p] = geomean(values) if values else "skipped: " + "; ".join(sorted({s.skipped[p] for s in subnets}))
    rses = [v for r in rows for v in r["median_rse"].values()]
    cvs = [v for r in rows for v in r["round_cv"].values()]
    worst = {}
    for p in paths.paths:
        got = [r["parity_max_abs_diff"][p] for r in rows if not isinstance(r["parity_max_abs_diff"][p], str)]
        worst[p] = max(got) if got else None
    floor = [abs(r[ratio_key][paths.repeat] - 1) for r in rows if paths.repeat in r[ratio_key]]
    return {
        "rows": rows,
        f"geomean_{ratio_key}": ratios,
        f"ratio_range_vs_{ref}": ranges,
        "subnets_in_geomean": counted,
        "repeatability_floor": max(floor) if floor else None,
        "round_cv_median": statistics.median(cvs),
        "round_cv_max": max(cvs),
        "median_rse_max": max(rses),
        "items_above_gate": sum(v > cv_max for v in rses),
        "items": len(rses),
        "worst_parity": worst,
        "skipped": {p: sorted({s.skipped[p] for s in subnets if p in s.skipped}) for p in paths.paths},
    }


def paths_target(args: argparse.Namespace, backend: str) -> tuple[Target, MeasureProtocol]:
    """The comparison's target (it must use `backend`) and its protocol (QUICK_PROTOCOL with --quick)."""
    from deploy.targets import load_target

    target = load_target(args.target)
    if target.backend != backend:
        raise SystemExit(f"target {target.name} uses {target.backend}; pass a {backend} target")
    return target, QUICK_PROTOCOL if args.quick else target.measurement.protocol()


def compare_paths(
    args: argparse.Namespace,
    paths: PathSet,
    target: Target,
    protocol: MeasureProtocol,
    prepare: Callable[[Subnet, Context], None],
    *,
    setup: Callable[[Context], Mapping[str, str]] | None = None,
    where: str | None = None,
    self_timed: bool = False,
) -> dict[str, Any]:
    """The whole flow of a conversion-path comparison; returns the result body.

    `setup` runs once before the subnets and returns the paths that cannot run at all (path -> reason)."""
    from deploy.runners.local import LocalRunner

    start = time.perf_counter()
    torch.set_num_threads(target.threads)
    net, weights, picked = subnets_under_test(args)
    runner = LocalRunner(target.runner)
    log.info("%s on %s, %d thread(s); %s", net.variant, runner.describe(), target.threads, weights)
    with tempfile.TemporaryDirectory(prefix="benchmark.") as tmp:
        ctx = Context(net, target, Path(tmp), args)
        everywhere = dict(setup(ctx)) if setup else {}
        subnets = []
        for label, config in picked:
            sub = Subnet(label, config, net.param_count(config), net.extract(config).eval())
            prepare(sub, ctx)
            took = ", ".join(f"{paths.short[p]} {s:.1f} s" for p, s in sub.convert_s.items())
            log.info("  %-9s %s (%.2f M params) built: %s", label, config, sub.params / 1e6, took or "-")
            subnets.append(sub)
        apply_global_skips(subnets, paths, everywhere)
        prepared = time.perf_counter()
        stats = measure(subnets, protocol, where or runner.where, self_timed=self_timed)
    end = time.perf_counter()
    return {
        **ctx.record,
        "model": net.variant,
        "host": runner.describe(),
        "where": where or runner.where,
        "target": target.name,
        "threads": target.threads,
        "weights": weights,
        "protocol": protocol.to_json(),
        "reference": paths.reference,
        "paths": dict(paths.labels),
        "short": dict(paths.short),
        "prepare_s": round(prepared - start, 1),
        "measure_s": round(end - prepared, 1),
        "summary": summarize(subnets, stats, paths, protocol.cv_max),
    }


def target_variant(base: Target, backend: str, precision: str, parity_atol: float) -> Target:
    """`base` (device, runner, threads, protocol) with another backend and precision."""
    return base.model_copy(
        update={"name": f"{base.name}-{backend}-{precision.replace('_', '-')}", "backend": backend,
                "precision": precision, "precisions": None, "parity_atol": parity_atol}
    )  # fmt: skip


def hub_entry(sub: Subnet, ctx: Context) -> Any:
    """The hub entry (ONNX and torch.export program) of the subnet, exported once per run."""
    from deploy.export import hub

    identity = {"subnet": sub.config.id, "variant": ctx.net.variant, "weights": "benchmark"}
    with quiet():
        entry = hub.get_or_export(sub.module, ctx.net.example_inputs()[0], identity, cache_dir=ctx.work / "hub")
    if entry.meta.get("exporter") != "torchscript":
        sub.notes.append(f"the hub fell back to the {entry.meta.get('exporter')} exporter")
    return entry


def compiled(backend: Any, target: Target, entry: Any, out: Path, calibration: Any = None) -> tuple[Any, Built]:
    """A backend's artifact of a hub entry: the artifact, and its timed call, outputs and convert seconds."""
    artifact = backend.compile(entry, target, out, calibration=calibration)
    feed = entry.reference_inputs()
    built = (backend.timed_call(artifact, feed), backend.run(artifact, feed), artifact.options.get("convert_seconds"))
    return artifact, built


def quick_target(target: Target) -> Target:
    """The target with QUICK_PROTOCOL as its measurement (for comparisons that measure through the library)."""
    from deploy.targets import MeasurementSpec

    fields = QUICK_PROTOCOL.to_json()
    fields.pop("cooldown_s", None)
    return target.model_copy(update={"measurement": MeasurementSpec(**fields, calibration_subnets=2)})
