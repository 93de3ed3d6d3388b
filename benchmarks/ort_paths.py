"""Our artifact against the other conversion paths a user could take, same subnets, measured side by side.

For the smallest, the largest and a few seeded random subnets of matformer_vit_mnist, four paths run the
same extracted dense module on the same input:

- ours: the hub's ONNX (legacy exporter, opset 17, onnxslim) through OnnxRuntimeBackend with the
  target's settings (threads from targets/<target>.yaml, ORT_ENABLE_ALL);
- torch eager: the extracted module under torch.inference_mode with torch.set_num_threads(threads);
- dynamo: torch.onnx.export(dynamo=True, opset 18, external_data=False) straight into onnxruntime with
  default session options except the thread count (what a user gets without our hub);
- legacy, no slim: the legacy exporter's ONNX without onnxslim, same ORT settings as ours (what
  slimming buys).

Every (subnet, path) is one item of a single `measure_interleaved` call: each round runs every item's
batch in shuffled order, so a burst of load on this shared machine hits all of them. "ours" is measured
twice per subnet (two items, same artifact): the ratio of the two is the repeatability floor, below
which a difference between paths cannot be seen. All onnxruntime paths are timed the same way (inputs
and outputs bound once with IOBinding), so ratios compare artifacts and session options, not calling
conventions.

    .venv/bin/python benchmarks/ort_paths.py            # full protocol (the target's), ~2-4 min
    .venv/bin/python benchmarks/ort_paths.py --quick    # short protocol, for a smoke test

Writes benchmarks/results/ort_paths.json and ort_paths.md (or under --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from paths_common import MODEL, geomean, load_supernet, pick_subnets, quiet
from rich.console import Console
from rich.table import Table
from torch import nn

from deploy.backends.base import Artifact
from deploy.backends.onnxruntime import OnnxRuntimeBackend
from deploy.errors import DeployError
from deploy.export import hub
from deploy.families import Supernet
from deploy.io import atomic_write_json, atomic_write_text
from deploy.latency.measure import measure_interleaved
from deploy.latency.stats import LatencyStats, MeasureProtocol
from deploy.runners.local import LocalRunner
from deploy.search.space import SubnetConfig
from deploy.targets import Target, load_target

log = logging.getLogger("benchmarks.ort_paths")

RESULTS = Path(__file__).resolve().parent / "results"
SUBNET_SEED = 0  # the random subnets
RANDOM_SUBNETS = 3
DYNAMO_OPSET = 18

OURS, EAGER, DYNAMO, RAW, OURS_AGAIN = "ours", "torch_eager", "dynamo_ort", "legacy_noslim_ort", "ours_repeat"
PATHS = (OURS, EAGER, DYNAMO, RAW)
LABELS = {
    OURS: "ours (hub: legacy opset 17 + onnxslim, ORT)",
    EAGER: "torch eager",
    DYNAMO: f"dynamo=True opset {DYNAMO_OPSET} → ORT defaults",
    RAW: "legacy opset 17, no onnxslim, ORT",
    OURS_AGAIN: "ours, measured again",
}
SHORT = {OURS: "ours", EAGER: "torch eager", DYNAMO: "dynamo→ORT", RAW: "no-slim→ORT", OURS_AGAIN: "ours again"}

# --quick: a smoke test of the whole script, not figures to quote.
QUICK = MeasureProtocol(warmup_runs=5, min_runs=10, min_time_s=0.05, rounds=3, cv_max=0.10, max_retries=0)


def full_protocol(target: Target) -> MeasureProtocol:
    """The target's protocol with min_runs 10 and one retry, to keep a run within ~3 minutes.

    min_time_s (0.2 s) still sets the run count of the ORT paths (>= 50 runs at <= 4 ms). Torch eager
    with 2 OpenMP threads can take ~100 ms a call while another process holds this machine's 2 cores;
    with min_runs 50 and 2 retries it alone would take 10+ minutes.
    """
    return dataclasses.replace(target.measurement.protocol(), min_runs=10, max_retries=1)


Call = Callable[[], object]


@dataclass
class Subnet:
    label: str
    config: SubnetConfig
    module: nn.Module
    params: int
    calls: dict[str, Call] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)  # max abs diff vs the torch module
    convert_s: dict[str, float] = field(default_factory=dict)
    onnx_nodes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# --- the supernet and its subnets ----------------------------------------------------------------


# --- the paths -----------------------------------------------------------------------------------


def max_abs_diff(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return math.inf
    return float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def iobinding_call(session: Any, feed: Mapping[str, np.ndarray], output_names: Sequence[str]) -> Call:
    """Same timing convention as OnnxRuntimeBackend.timed_call, for a session built elsewhere."""
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for name in output_names:
        binding.bind_output(name, "cpu")
    session.run_with_iobinding(binding)

    def call() -> object:
        session.run_with_iobinding(binding)
        return binding

    return call


def eager_call(module: nn.Module, x: torch.Tensor) -> Call:
    def call() -> object:
        with torch.inference_mode():
            return module(x)

    return call


def add_ours(
    sub: Subnet,
    x: torch.Tensor,
    identity: dict[str, str],
    target: Target,
    backend: OnnxRuntimeBackend,
    work: Path,
    reference: np.ndarray,
) -> None:
    with quiet():
        entry = hub.get_or_export(sub.module, x, identity, cache_dir=work / "hub", with_program=False)
    if entry.meta.get("exporter") != "torchscript":
        sub.notes.append(f"the hub fell back to the {entry.meta.get('exporter')} exporter")
    artifact = backend.compile(entry, target, work / "ours" / sub.config.id)
    feed = {entry.input_names[0]: x.numpy()}
    sub.parity[OURS] = max_abs_diff(backend.run(artifact, feed)[0], reference)
    sub.convert_s[OURS] = float(entry.meta.get("export_seconds", math.nan))
    sub.onnx_nodes[OURS] = node_count(artifact.path)
    sub.calls[OURS] = backend.timed_call(artifact, feed)
    sub.calls[OURS_AGAIN] = backend.timed_call(artifact, feed)  # same session, its own binding


def add_raw(
    sub: Subnet,
    x: torch.Tensor,
    target: Target,
    backend: OnnxRuntimeBackend,
    work: Path,
    reference: np.ndarray,
) -> None:
    """The hub's first export step alone: legacy exporter, opset 17, constant folding, no onnxslim."""
    path = work / "raw" / sub.config.id / "model.onnx"
    path.parent.mkdir(parents=True)
    start = time.perf_counter()
    with quiet():
        torch.onnx.export(
            sub.module,
            (x,),
            str(path),
            dynamo=False,
            do_constant_folding=True,
            opset_version=hub.OPSET,
            input_names=[hub.INPUT_NAME],
            output_names=["logits"],
        )
    sub.convert_s[RAW] = time.perf_counter() - start
    artifact = Artifact(
        path=path,
        backend=backend.name,
        precision="fp32",
        input_names=(hub.INPUT_NAME,),
        output_names=("logits",),
        options=backend.session_options(target.threads),
    )
    feed = {hub.INPUT_NAME: x.numpy()}
    sub.parity[RAW] = max_abs_diff(backend.run(artifact, feed)[0], reference)
    sub.onnx_nodes[RAW] = node_count(path)
    sub.calls[RAW] = backend.timed_call(artifact, feed)


def add_dynamo(sub: Subnet, x: torch.Tensor, threads: int, work: Path, reference: np.ndarray) -> None:
    """What a user gets without the hub: torch.onnx.export's default exporter, ORT's default session."""
    import onnxruntime as ort

    path = work / "dynamo" / sub.config.id / "model.onnx"
    path.parent.mkdir(parents=True)
    start = time.perf_counter()
    with quiet():
        torch.onnx.export(
            sub.module,
            (x,),
            str(path),
            dynamo=True,
            opset_version=DYNAMO_OPSET,
            external_data=False,
            input_names=[hub.INPUT_NAME],
            output_names=["logits"],
            verbose=False,
        )
    sub.convert_s[DYNAMO] = time.perf_counter() - start
    extra = sorted(p.name for p in path.parent.iterdir() if p != path)
    if extra:
        sub.notes.append(f"dynamo export wrote extra files {extra}")
    so = ort.SessionOptions()  # defaults, except the thread count
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    sub.parity[DYNAMO] = max_abs_diff(session.run(outputs, {name: x.numpy()})[0], reference)
    sub.onnx_nodes[DYNAMO] = node_count(path)
    sub.calls[DYNAMO] = iobinding_call(session, {name: x.numpy()}, outputs)


def prepare(
    net: Supernet, picked: Sequence[tuple[str, SubnetConfig]], target: Target, work: Path, console: Console
) -> list[Subnet]:
    backend = OnnxRuntimeBackend()
    x = net.example_inputs()[0]
    subnets = []
    for label, config in picked:
        module = net.extract(config).eval()
        sub = Subnet(label, config, module, net.param_count(config))
        with torch.inference_mode():
            reference = module(x).numpy()
        sub.parity[EAGER] = max_abs_diff(eager_call(module, x)().numpy(), reference)  # type: ignore[attr-defined]
        sub.calls[EAGER] = eager_call(module, x)
        identity = {"subnet": config.id, "variant": net.variant, "weights": "benchmark"}
        with console.status(f"{label}: exporting and compiling the 3 ONNX paths"):
            add_ours(sub, x, identity, target, backend, work, reference)
            add_raw(sub, x, target, backend, work, reference)
            add_dynamo(sub, x, target.threads, work, reference)
        console.print(
            f"  {label:9} {config}  ({sub.params / 1e6:.2f} M params) exported: hub "
            f"{sub.convert_s[OURS]:.2f} s, no-slim {sub.convert_s[RAW]:.2f} s, "
            f"dynamo {sub.convert_s[DYNAMO]:.2f} s"
        )
        subnets.append(sub)
    return subnets


# --- measuring and summarising -------------------------------------------------------------------


def measure_all(
    subnets: Sequence[Subnet], protocol: MeasureProtocol, where: str, console: Console
) -> dict[str, LatencyStats]:
    calls = {f"{s.label}|{path}": call for s in subnets for path, call in s.calls.items()}
    # One warning per noisy item would flood the console; the tables show every item's round CV.
    measure_log = logging.getLogger("deploy.latency.measure")
    level = measure_log.level
    measure_log.setLevel(logging.ERROR)
    try:
        with console.status("measuring") as status, torch.inference_mode():
            return measure_interleaved(calls, protocol, on_progress=status.update, seed=0, where=where)
    finally:
        measure_log.setLevel(level)


def summarize(subnets: Sequence[Subnet], stats: Mapping[str, LatencyStats], cv_max: float) -> dict[str, Any]:
    rows = []
    for s in subnets:
        lat = {path: stats[f"{s.label}|{path}"] for path in s.calls}
        ours = lat[OURS].median_ms
        rows.append(
            {
                "subnet": s.label,
                "id": s.config.id,
                "config": s.config.to_json()["choices"],
                "params": s.params,
                "median_ms": {p: v.median_ms for p, v in lat.items()},
                "p90_ms": {p: v.p90_ms for p, v in lat.items()},
                "round_cv": {p: v.cv for p, v in lat.items()},
                "round_medians_ms": {p: list(v.round_medians_ms) for p, v in lat.items()},
                "n_runs": {p: v.n_runs for p, v in lat.items()},
                "ratio_vs_ours": {p: v.median_ms / ours for p, v in lat.items() if p != OURS},
                "parity_max_abs_diff": dict(s.parity),
                "convert_s": {p: round(v, 3) for p, v in s.convert_s.items()},
                "onnx_nodes": dict(s.onnx_nodes),
                "notes": list(s.notes),
            }
        )
    others = (EAGER, DYNAMO, RAW, OURS_AGAIN)
    ratios = {p: geomean([r["ratio_vs_ours"][p] for r in rows]) for p in others}
    ranges = {p: [min(r["ratio_vs_ours"][p] for r in rows), max(r["ratio_vs_ours"][p] for r in rows)] for p in others}
    cvs = [cv for r in rows for cv in r["round_cv"].values()]
    return {
        "rows": rows,
        "geomean_ratio_vs_ours": ratios,
        "ratio_range_vs_ours": ranges,
        "repeatability_floor": max(abs(r["ratio_vs_ours"][OURS_AGAIN] - 1) for r in rows),
        "round_cv_median": statistics.median(cvs),
        "round_cv_max": max(cvs),
        "items_above_cv_max": sum(cv > cv_max for cv in cvs),
        "items": len(cvs),
        "worst_parity": {p: max(r["parity_max_abs_diff"][p] for r in rows) for p in PATHS},
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), **hub.toolchain_versions()}
    out["numpy"] = np.__version__
    return out


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}×"


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    proto = result["protocol"]
    lines = [
        f"# ONNX Runtime paths: our artifact vs the other conversion paths ({result['model']})"
        + (" — QUICK protocol, smoke test only" if result["quick"] else ""),
        "",
        f"Date {result['date']} · host {result['host']} · target {result['target']} "
        f"({result['threads']} threads) · weights: {result['weights']}",
        "",
        f"Load average (1 min) {result['loadavg_1m']['start']} at start, {result['loadavg_1m']['end']} "
        f"at end (the machine has 2 cores); run took {result['wall_s']} s.",
        "",
        f"Protocol: {proto['rounds']} interleaved rounds (every subnet × path item per round, shuffled), "
        f"each item ≥ {proto['min_runs']} runs and ≥ {proto['min_time_s']} s per round after "
        f"{proto['warmup_runs']} warm-up runs; items with round CV > {proto['cv_max']:.0%} re-measured up to "
        f"{proto['max_retries']} times. Median over all timed runs. All ORT paths timed with IOBinding "
        "(inputs/outputs bound once). Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        "## Median latency (ms) and round CV",
        "",
        "| subnet | params | " + " | ".join(SHORT[p] for p in (*PATHS, OURS_AGAIN)) + " |",
        "|---|---:|" + "---:|" * (len(PATHS) + 1),
    ]
    for r in s["rows"]:
        cells = [f"{r['median_ms'][p]:.3f} ({r['round_cv'][p]:.1%})" for p in (*PATHS, OURS_AGAIN)]
        lines.append(f"| {r['subnet']} `{r['id']}` | {r['params'] / 1e6:.2f} M | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Ratios vs ours (path median / ours median; > 1 means ours is faster)",
        "",
        "| subnet | torch eager / ours | dynamo→ORT / ours | no-slim→ORT / ours | ours again / ours |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        q = r["ratio_vs_ours"]
        lines.append(
            f"| {r['subnet']} | {fmt_ratio(q[EAGER])} | {fmt_ratio(q[DYNAMO])} | {fmt_ratio(q[RAW])} | "
            f"{fmt_ratio(q[OURS_AGAIN])} |"
        )
    g, rng = s["geomean_ratio_vs_ours"], s["ratio_range_vs_ours"]
    lines.append(
        "| **geomean** (range) | "
        + " | ".join(
            f"**{fmt_ratio(g[p])}** ({rng[p][0]:.2f}–{rng[p][1]:.2f})" for p in (EAGER, DYNAMO, RAW, OURS_AGAIN)
        )
        + " |"
    )
    lines += [
        "",
        f"Repeatability floor: ours measured twice in the same run differed by up to "
        f"{s['repeatability_floor']:.1%}; a ratio within that of 1.00 is no measurable difference. "
        f"Round CV: median {s['round_cv_median']:.1%}, max {s['round_cv_max']:.1%}; "
        f"{s['items_above_cv_max']} of {s['items']} items stayed above the {proto['cv_max']:.0%} gate "
        "after retries.",
        "",
        "## Parity (max abs diff vs the torch module's output on the same input; torch eager is the"
        " reference) and conversion (export s: hub = export + checks + onnxslim)",
        "",
        "| subnet | ours | dynamo→ORT | no-slim→ORT | ONNX nodes ours / no-slim / dynamo "
        "| export s hub / no-slim / dynamo |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        p, n, c = r["parity_max_abs_diff"], r["onnx_nodes"], r["convert_s"]
        lines.append(
            f"| {r['subnet']} | {p[OURS]:.1e} | {p[DYNAMO]:.1e} | {p[RAW]:.1e} "
            f"| {n[OURS]} / {n[RAW]} / {n[DYNAMO]} "
            f"| {c[OURS]:.2f} / {c[RAW]:.2f} / {c[DYNAMO]:.2f} |"
        )
    lines += ["", "Subnets:", ""]
    for r in s["rows"]:
        lines.append(f"- {r['subnet']} `{r['id']}`: layers {r['config']['layers']}, ffn {r['config']['ffn']}")
    notes = [f"{r['subnet']}: {n}" for r in s["rows"] for n in r["notes"]]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    lines += [
        "",
        "Absolute figures hold only for this machine and moment (shared and noisy); the ratios, measured "
        "side by side in one run, are what carries over.",
        "",
    ]
    return "\n".join(lines)


def print_tables(result: dict[str, Any], console: Console) -> None:
    s = result["summary"]
    table = Table(title=f"median ms (round CV) — {result['host']}, {result['threads']} threads")
    table.add_column("subnet")
    for p in (*PATHS, OURS_AGAIN):
        table.add_column(SHORT[p], justify="right")
    for r in s["rows"]:
        table.add_row(r["subnet"], *(f"{r['median_ms'][p]:.3f} ({r['round_cv'][p]:.1%})" for p in (*PATHS, OURS_AGAIN)))
    console.print(table)
    ratios = Table(title="ratio vs ours (> 1: ours is faster)")
    ratios.add_column("subnet")
    for p in (EAGER, DYNAMO, RAW, OURS_AGAIN):
        ratios.add_column(f"{SHORT[p]} / ours", justify="right")
    for r in s["rows"]:
        q = r["ratio_vs_ours"]
        ratios.add_row(r["subnet"], *(fmt_ratio(q[p]) for p in (EAGER, DYNAMO, RAW, OURS_AGAIN)))
    g = s["geomean_ratio_vs_ours"]
    ratios.add_row("geomean", *(fmt_ratio(g[p]) for p in (EAGER, DYNAMO, RAW, OURS_AGAIN)), style="bold")
    console.print(ratios)
    w = s["worst_parity"]
    console.print(
        f"parity (worst max abs diff vs torch): ours {w[OURS]:.1e}, dynamo {w[DYNAMO]:.1e}, "
        f"no-slim {w[RAW]:.1e}; repeatability floor {s['repeatability_floor']:.1%}; round CV median "
        f"{s['round_cv_median']:.1%}, max {s['round_cv_max']:.1%}; {s['items_above_cv_max']}/{s['items']} "
        f"items above the {result['protocol']['cv_max']:.0%} CV gate"
    )
    for p in (EAGER, DYNAMO, RAW):
        console.print(f"  {SHORT[p]} / ours = {fmt_ratio(g[p])} (geomean over {len(s['rows'])} subnets)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host-cpu-ort", help="threads and protocol come from this target")
    parser.add_argument("--quick", action="store_true", help="short protocol (smoke test, not to quote)")
    parser.add_argument("--random", type=int, default=RANDOM_SUBNETS, help="number of seeded random subnets")
    parser.add_argument("--seed", type=int, default=SUBNET_SEED, help="seed of the random subnets")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for ort_paths.json and .md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=False)

    start = time.perf_counter()
    load_before = os.getloadavg()
    try:
        target = load_target(args.target)
        if target.backend != "onnxruntime":
            raise SystemExit(f"target {target.name} uses {target.backend}; this compares onnxruntime paths")
        protocol = QUICK if args.quick else full_protocol(target)
        torch.set_num_threads(target.threads)
        net, weights = load_supernet()
        picked = pick_subnets(net, args.random, args.seed)
        runner = LocalRunner(target.runner)
        console.print(f"[bold]{MODEL}[/] on {runner.describe()}, {target.threads} threads; {weights}")
        with tempfile.TemporaryDirectory(prefix="ort_paths.") as tmp:
            subnets = prepare(net, picked, target, Path(tmp), console)
            stats = measure_all(subnets, protocol, runner.where, console)
    except DeployError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1

    result = {
        "benchmark": "ort_paths",
        "model": MODEL,
        "quick": bool(args.quick),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": runner.describe(),
        "where": runner.where,
        "target": target.name,
        "threads": target.threads,
        "weights": weights,
        "protocol": protocol.to_json(),
        "paths": {p: LABELS[p] for p in (*PATHS, OURS_AGAIN)},
        "versions": versions(),
        "wall_s": round(time.perf_counter() - start, 1),
        "loadavg_1m": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        "summary": summarize(subnets, stats, protocol.cv_max),
    }
    print_tables(result, console)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "ort_paths.json", args.out / "ort_paths.md"
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, markdown(result))
    console.print(f"wrote {json_path} and {md_path} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
