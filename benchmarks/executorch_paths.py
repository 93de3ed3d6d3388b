"""ExecuTorch (XNNPACK) fp32 and int8 against our LiteRT artifacts and ONNX Runtime, same subnets, side by side.

For the smallest, the largest and a few seeded random subnets of matformer_vit_mnist (picked and loaded as
benchmarks/ort_paths.py and tflite_paths.py do), every path starts from the same hub entry of the
extracted subnet:

- et: ExecuTorchBackend's .pte (the hub's torch.export program lowered with the XNNPACK partitioner,
  fp32), run by executorch.runtime with the target's threads; `method.execute` is timed with the input
  tensor built once (the binding copies it in on every call, as any caller of that API pays);
- et int8: the same backend at precision "int8" (XNNPACK quantizer, pt2e), calibrated on 256 training
  images; a column only when it lowers for every subnet;
- litert / litert int8: TFLiteBackend's artifacts (litert-torch; full int8 static_wi8_ai8 on the same
  256 images), ai-edge-litert's Interpreter with XNNPACK, `interpreter.invoke()` timed, inputs set once;
- onnxruntime: the hub's ONNX through OnnxRuntimeBackend (IOBinding), the same thread count;
- et again: the same .pte loaded into a second executorch Program, a second item: the repeatability floor.

Every (subnet, path) is one item of a single `measure_interleaved` call. Parity is the max abs diff
against the hub's reference outputs via deploy.export.parity.check_parity. For each subnet the ExecuTorch
delegation report is recorded: how many XNNPACK subgraphs, which ops stayed on ExecuTorch's portable
kernels (each one splits the delegate).

    .venv/bin/python benchmarks/executorch_paths.py            # full protocol (host-cpu-executorch's)
    .venv/bin/python benchmarks/executorch_paths.py --quick --random 0 --limit 1 --out /tmp/et  # smoke test

Writes benchmarks/results/executorch_paths.json and executorch_paths.md (or under --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from paths_common import MODEL, geomean, load_supernet, pick_subnets, quiet
from rich.console import Console
from rich.table import Table
from tflite_paths import one_line

from deploy.backends import executorch as et_module
from deploy.backends.executorch import ExecuTorchBackend
from deploy.backends.onnxruntime import OnnxRuntimeBackend
from deploy.backends.tflite import PARITY_ATOL as TFLITE_ATOL
from deploy.backends.tflite import TFLiteBackend
from deploy.errors import DeployError
from deploy.export import hub
from deploy.export.parity import check_parity
from deploy.families import Supernet
from deploy.io import atomic_write_json, atomic_write_text
from deploy.latency.measure import measure_interleaved, relative_standard_error
from deploy.latency.stats import LatencyStats, MeasureProtocol
from deploy.runners.local import LocalRunner
from deploy.search.space import SubnetConfig
from deploy.targets import Target, load_target

log = logging.getLogger("benchmarks.executorch_paths")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUBNET_SEED = 0  # the random subnets: the same as ort_paths.py and tflite_paths.py
RANDOM_SUBNETS = 3
CALIBRATION_IMAGES = 256

ET, ET_INT8, LITERT, LITERT_INT8, ORT, ET_AGAIN = "et", "et_int8", "litert", "litert_int8", "onnxruntime", "et_repeat"
PATHS = (ET, ET_INT8, LITERT, LITERT_INT8, ORT, ET_AGAIN)
OTHERS = (ET_INT8, LITERT, LITERT_INT8, ORT, ET_AGAIN)  # compared with et
LABELS = {
    ET: "ExecuTorchBackend fp32: the hub's torch.export program, XNNPACK partitioner, executorch.runtime",
    ET_INT8: f"ExecuTorchBackend int8: XNNPACK quantizer (pt2e, {CALIBRATION_IMAGES} training images), XNNPACK",
    LITERT: "TFLiteBackend fp32 (litert-torch), LiteRT interpreter + XNNPACK",
    LITERT_INT8: f"TFLiteBackend full int8 (static_wi8_ai8, {CALIBRATION_IMAGES} training images), LiteRT + XNNPACK",
    ORT: "the hub's ONNX through OnnxRuntimeBackend (IOBinding)",
    ET_AGAIN: "the same .pte as et in a second executorch Program, measured as a second item",
}
SHORT = {ET: "et", ET_INT8: "et int8", LITERT: "litert", LITERT_INT8: "litert int8", ORT: "ORT", ET_AGAIN: "et again"}
ATOL = {ET: et_module.PARITY_ATOL["fp32"], ET_INT8: et_module.PARITY_ATOL["int8"], LITERT: TFLITE_ATOL["fp32"],
        LITERT_INT8: TFLITE_ATOL["int8"], ORT: 1e-4, ET_AGAIN: et_module.PARITY_ATOL["fp32"]}  # fmt: skip

# --quick: a smoke test of the whole script, not figures to quote.
QUICK = MeasureProtocol(warmup_runs=5, min_runs=10, min_time_s=0.01, rounds=3, cv_max=0.10, max_retries=0)

Call = Callable[[], object]


@dataclass
class Subnet:
    label: str
    config: SubnetConfig
    params: int
    calls: dict[str, Call] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    convert_s: dict[str, float] = field(default_factory=dict)
    delegation: dict[str, dict[str, Any]] = field(default_factory=dict)  # et path -> delegation report
    pte: Path | None = None  # the fp32 .pte, loaded again for the repeatability item
    notes: list[str] = field(default_factory=list)


def variant(base: Target, backend: str, precision: str) -> Target:
    """`base` (threads, device, protocol) with another backend and precision."""
    return base.model_copy(
        update={"name": f"{base.name}-{backend}-{precision}", "backend": backend, "precision": precision,
                "precisions": None, "parity_atol": 1e-4 if precision == "fp32" else 10.0}
    )  # fmt: skip


def max_diff(outputs: Sequence[np.ndarray], entry: hub.HubEntry, atol: float) -> tuple[float, bool]:
    report = check_parity(list(outputs), entry.reference_outputs(), atol=atol)
    return report.max_abs_diff, report.ok


def et_again_call(path: Path, x: np.ndarray) -> tuple[Call, np.ndarray]:
    """The .pte in a second Program and Method (the backend's are cached per file), timed like the backend."""
    from executorch.runtime import Runtime

    with et_module._quiet():
        method = Runtime.get().load_program(str(path)).load_method(et_module.METHOD)
    tensors = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))]
    (out,) = method.execute(tensors)
    return (lambda: method.execute(tensors)), np.array(out.numpy(), copy=True)


def add(sub: Subnet, path: str, build: Callable[[], tuple[Call, list[np.ndarray], float | None]], entry) -> None:
    """Compile/load one path; a failure or a missed parity skips that (subnet, path) with its reason."""
    try:
        call, outputs, seconds = build()
        sub.parity[path], ok = max_diff(outputs, entry, ATOL[path])
        if not ok:
            raise DeployError(f"parity {sub.parity[path]:.2g} > {ATOL[path]:g}")
    except DeployError as exc:
        sub.skipped[path] = one_line(str(exc))
        sub.parity.pop(path, None)
        return
    sub.calls[path] = call
    if seconds is not None:
        sub.convert_s[path] = seconds


def compile_path(
    sub: Subnet, path: str, backend: Any, target: Target, entry: hub.HubEntry, work: Path, cal: np.ndarray | None
) -> tuple[Call, list[np.ndarray], float | None]:
    """One backend's artifact of the subnet: its timed call, its outputs on the reference input, convert s."""
    artifact = backend.compile(entry, target, work / path / sub.config.id, calibration=cal)
    if path in (ET, ET_INT8):
        sub.delegation[path] = artifact.options["delegation"]
    if path == ET:
        sub.pte = artifact.path
    feed = entry.reference_inputs()
    return backend.timed_call(artifact, feed), backend.run(artifact, feed), artifact.options.get("convert_seconds")


def again_path(pte: Path, x: np.ndarray) -> tuple[Call, list[np.ndarray], float | None]:
    call, out = et_again_call(pte, x)
    return call, [out], None


def prepare(
    net: Supernet, picked: Sequence[tuple[str, SubnetConfig]], base: Target, work: Path, console: Console
) -> list[Subnet]:
    backends = {ET: ExecuTorchBackend(), LITERT: TFLiteBackend(), ORT: OnnxRuntimeBackend()}
    backends[ET_INT8], backends[LITERT_INT8] = backends[ET], backends[LITERT]
    targets = {
        ET: variant(base, "executorch", "fp32"),
        ET_INT8: variant(base, "executorch", "int8"),
        LITERT: variant(base, "tflite", "fp32"),
        LITERT_INT8: variant(base, "tflite", "int8"),
        ORT: variant(base, "onnxruntime", "fp32"),
    }
    from deploy.tasks.mnist import MnistTask

    calibration = MnistTask(0).calibration_array(CALIBRATION_IMAGES)
    x = net.example_inputs()[0]
    subnets = []
    for label, config in picked:
        module = net.extract(config).eval()
        sub = Subnet(label, config, net.param_count(config))
        identity = {"subnet": config.id, "variant": net.variant, "weights": "benchmark"}
        with console.status(f"{label}: hub export, ExecuTorch fp32 + int8, LiteRT fp32 + int8, onnxruntime"):
            with quiet():
                entry = hub.get_or_export(module, x, identity, cache_dir=work / "hub", with_program=True)
            for path in (ET, ET_INT8, LITERT, LITERT_INT8, ORT):
                cal = calibration if path in (ET_INT8, LITERT_INT8) else None
                build = functools.partial(compile_path, sub, path, backends[path], targets[path], entry, work, cal)
                add(sub, path, build, entry)
                if path == ET and sub.pte is not None:
                    (x_np,) = entry.reference_inputs().values()
                    add(sub, ET_AGAIN, functools.partial(again_path, sub.pte, x_np), entry)
        report = sub.delegation.get(ET, {})
        console.print(
            f"  {label:9} {config}  ({sub.params / 1e6:.2f} M params): {report.get('delegated_subgraphs', '?')} "
            f"XNNPACK subgraphs, not delegated {report.get('not_delegated_ops', '?')}"
        )
        subnets.append(sub)
    return subnets


def apply_global_skips(subnets: Sequence[Subnet]) -> None:
    """A path is a column only if it worked for every subnet (the geomean compares like with like)."""
    for path in OTHERS:
        failed = [s for s in subnets if path in s.skipped]
        if not failed:
            continue
        why = f"failed for {', '.join(s.label for s in failed)} ({failed[0].skipped[path]})"
        for s in subnets:
            s.calls.pop(path, None)
            s.parity.pop(path, None)
            s.skipped[path] = s.skipped.get(path, why)


def summarize(subnets: Sequence[Subnet], stats: Mapping[str, LatencyStats], cv_max: float) -> dict[str, Any]:
    rows = []
    for s in subnets:
        lat = {path: stats[f"{s.label}|{path}"] for path in s.calls}
        ref = lat[ET].median_ms
        rows.append(
            {
                "subnet": s.label,
                "id": s.config.id,
                "config": s.config.to_json()["choices"],
                "params": s.params,
                "median_ms": {p: lat[p].median_ms if p in lat else f"skipped: {s.skipped[p]}" for p in PATHS},
                "p90_ms": {p: v.p90_ms for p, v in lat.items()},
                "round_cv": {p: v.cv for p, v in lat.items()},
                "median_rse": {p: relative_standard_error(v) for p, v in lat.items()},
                "round_medians_ms": {p: list(v.round_medians_ms) for p, v in lat.items()},
                "n_runs": {p: v.n_runs for p, v in lat.items()},
                "ratio_vs_et": {p: lat[p].median_ms / ref for p in OTHERS if p in lat},
                "parity_max_abs_diff": {p: s.parity[p] if p in s.parity else f"skipped: {s.skipped[p]}" for p in PATHS},
                "convert_s": {p: round(float(v), 2) for p, v in s.convert_s.items()},
                "delegation": dict(s.delegation),
                "skipped": dict(s.skipped),
                "notes": list(s.notes),
            }
        )
    ratios, ranges = {}, {}
    for p in OTHERS:
        values = [r["ratio_vs_et"][p] for r in rows if p in r["ratio_vs_et"]]
        ranges[p] = [min(values), max(values)] if values else None
        ratios[p] = geomean(values) if values else "skipped: " + "; ".join(sorted({s.skipped[p] for s in subnets}))
    rses = [v for r in rows for v in r["median_rse"].values()]
    cvs = [v for r in rows for v in r["round_cv"].values()]
    worst = {}
    for p in PATHS:
        got = [r["parity_max_abs_diff"][p] for r in rows if not isinstance(r["parity_max_abs_diff"][p], str)]
        worst[p] = max(got) if got else None
    floor = [abs(r["ratio_vs_et"][ET_AGAIN] - 1) for r in rows if ET_AGAIN in r["ratio_vs_et"]]
    return {
        "rows": rows,
        "geomean_ratio_vs_et": ratios,
        "ratio_range_vs_et": ranges,
        "repeatability_floor": max(floor) if floor else None,
        "round_cv_median": statistics.median(cvs),
        "round_cv_max": max(cvs),
        "median_rse_max": max(rses),
        "items_above_gate": sum(v > cv_max for v in rses),
        "items": len(rses),
        "worst_parity": worst,
        "skipped": {p: sorted({s.skipped[p] for s in subnets if p in s.skipped}) for p in PATHS},
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "executorch",
        "torchao",
        "litert-torch",
        "ai-edge-litert",
        "ai-edge-quantizer",
        "onnxruntime",
        "torch",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def fmt_ratio(r: Any) -> str:
    return f"{r:.2f}×" if isinstance(r, float) else "skipped"


def cell_ms(r: Mapping[str, Any], p: str) -> str:
    v = r["median_ms"][p]
    return f"{v:.3f} ({r['round_cv'][p]:.1%})" if isinstance(v, float) else "skipped"


def cell_parity(r: Mapping[str, Any], p: str) -> str:
    v = r["parity_max_abs_diff"][p]
    return f"{v:.1e}" if isinstance(v, float) else "skipped"


def markdown(result: dict[str, Any]) -> str:
    s, proto = result["summary"], result["protocol"]
    lines = [
        f"# ExecuTorch paths: ExecuTorch XNNPACK vs our LiteRT artifacts and ONNX Runtime ({result['model']})"
        + (" — QUICK protocol, smoke test only" if result["quick"] else ""),
        "",
        f"Date {result['date']} · host {result['host']} · target {result['target']} ({result['threads']} "
        f"thread{'s' if result['threads'] != 1 else ''}) · weights: {result['weights']}",
        "",
        f"Load average (1 min) {result['loadavg_1m']['start']} at start, {result['loadavg_1m']['end']} at end; "
        f"run took {result['wall_s']} s (conversions {result['prepare_s']} s, measurement {result['measure_s']} s).",
        "",
        "Paths: " + "; ".join(f"**{SHORT[p]}** = {LABELS[p]}" for p in PATHS) + ".",
        "",
        f"Protocol: {proto['rounds']} interleaved rounds (every subnet × path item per round, shuffled), each item "
        f"≥ {proto['min_runs']} runs and ≥ {proto['min_time_s']} s per round after {proto['warmup_runs']} warm-up "
        f"runs; re-measured (all items) while a median is known to worse than ±{proto['cv_max']:.0%}, up to "
        f"{proto['max_retries']} times. Versions: "
        + ", ".join(f"{k} {v}" for k, v in result["versions"].items())
        + ".",
        "",
        "## Median latency (ms) and round CV",
        "",
        "| subnet | params | " + " | ".join(SHORT[p] for p in PATHS) + " |",
        "|---|---:|" + "---:|" * len(PATHS),
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['subnet']} `{r['id']}` | {r['params'] / 1e6:.2f} M | "
            + " | ".join(cell_ms(r, p) for p in PATHS)
            + " |"
        )
    lines += [
        "",
        "## Ratios vs ExecuTorch fp32 (path median / et median; > 1 means ExecuTorch fp32 is faster)",
        "",
        "| subnet | " + " | ".join(f"{SHORT[p]} / et" for p in OTHERS) + " |",
        "|---|" + "---:|" * len(OTHERS),
    ]
    for r in s["rows"]:
        lines.append(f"| {r['subnet']} | " + " | ".join(fmt_ratio(r["ratio_vs_et"].get(p)) for p in OTHERS) + " |")
    g, rng = s["geomean_ratio_vs_et"], s["ratio_range_vs_et"]
    cells = [f"**{fmt_ratio(g[p])}** ({rng[p][0]:.2f}–{rng[p][1]:.2f})" if rng[p] else "skipped" for p in OTHERS]
    lines.append("| **geomean** (range) | " + " | ".join(cells) + " |")
    floor = s["repeatability_floor"]
    lines += [
        "",
        ("Repeatability floor: the same .pte in a second Program differed from et by up to "
         f"{floor:.1%}; a ratio within that of 1.00 is no measurable difference. " if floor is not None else "")
        + f"Round CV: median {s['round_cv_median']:.1%}, max {s['round_cv_max']:.1%}; {s['items_above_gate']} of "
        f"{s['items']} items stayed above the ±{proto['cv_max']:.0%} precision gate after retries.",
        "",
        "## Parity (max abs diff vs the hub's reference outputs) and ExecuTorch delegation",
        "",
        "Tolerances: " + ", ".join(f"{SHORT[p]} {ATOL[p]:g}" for p in PATHS if p != ET_AGAIN) + ".",
        "",
        "| subnet | " + " | ".join(SHORT[p] for p in PATHS if p != ET_AGAIN)
        + " | XNNPACK subgraphs (fp32) | not delegated (fp32) | convert s et / et int8 |",
        "|---|" + "---:|" * (len(PATHS) - 1) + "---:|---|---:|",
    ]  # fmt: skip
    for r in s["rows"]:
        d = r["delegation"].get(ET, {})
        kept = ", ".join(f"{k} ×{v}" for k, v in d.get("not_delegated_ops", {}).items()) or "none"
        conv = " / ".join(f"{r['convert_s'][p]:.1f}" if p in r["convert_s"] else "–" for p in (ET, ET_INT8))
        lines.append(
            f"| {r['subnet']} | " + " | ".join(cell_parity(r, p) for p in PATHS if p != ET_AGAIN)
            + f" | {d.get('delegated_subgraphs', '–')} | {kept} | {conv} |"
        )  # fmt: skip
    lines += ["", "Subnets:", ""]
    lines += [
        f"- {r['subnet']} `{r['id']}`: layers {r['config']['layers']}, ffn {r['config']['ffn']}" for r in s["rows"]
    ]
    skipped = [(p, why) for p in PATHS for why in s["skipped"][p]]
    if skipped:
        lines += ["", "Skipped:", "", *(f"- {SHORT[p]}: {why}" for p, why in skipped)]
    lines += [
        "",
        "Absolute figures hold only for this machine and moment (shared and noisy); the ratios, measured side by "
        "side in one run, are what carries over. The table's prediction for ExecuTorch is validated separately "
        "(`elastic-deploy tables validate --target host-cpu-executorch`, latency_tables/*.validation.json).",
        "",
    ]
    return "\n".join(lines)


def print_tables(result: dict[str, Any], console: Console) -> None:
    s = result["summary"]
    table = Table(title=f"median ms (round CV) — {result['host']}, {result['threads']} thread(s)")
    table.add_column("subnet")
    for p in PATHS:
        table.add_column(SHORT[p], justify="right")
    for r in s["rows"]:
        table.add_row(r["subnet"], *(cell_ms(r, p) for p in PATHS))
    console.print(table)
    ratios = Table(title="ratio vs ExecuTorch fp32 (> 1: ExecuTorch fp32 is faster)")
    ratios.add_column("subnet")
    for p in OTHERS:
        ratios.add_column(f"{SHORT[p]} / et", justify="right")
    for r in s["rows"]:
        ratios.add_row(r["subnet"], *(fmt_ratio(r["ratio_vs_et"].get(p)) for p in OTHERS))
    ratios.add_row("geomean", *(fmt_ratio(s["geomean_ratio_vs_et"][p]) for p in OTHERS), style="bold")
    console.print(ratios)
    parity_table = Table(title="parity: max abs diff vs the hub's reference outputs")
    parity_table.add_column("subnet")
    for p in PATHS:
        parity_table.add_column(SHORT[p], justify="right")
    for r in s["rows"]:
        parity_table.add_row(r["subnet"], *(cell_parity(r, p) for p in PATHS))
    console.print(parity_table)
    for p in PATHS:
        for why in s["skipped"][p]:
            console.print(f"  [yellow]{SHORT[p]} skipped:[/] {why}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host-cpu-executorch", help="threads and protocol come from it")
    parser.add_argument("--quick", action="store_true", help="short protocol (smoke test, not to quote)")
    parser.add_argument("--random", type=int, default=RANDOM_SUBNETS, help="number of seeded random subnets")
    parser.add_argument("--seed", type=int, default=SUBNET_SEED, help="seed of the random subnets")
    parser.add_argument("--limit", type=int, default=None, help="only the first N subnets (smoke tests)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for executorch_paths.json and .md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=False, width=None if sys.stdout.isatty() else 150)

    start = time.perf_counter()
    load_before = os.getloadavg()
    try:
        target = load_target(args.target)
        if target.backend != "executorch":
            raise SystemExit(f"target {target.name} uses {target.backend}; pass an executorch (XNNPACK) target")
        protocol = QUICK if args.quick else target.measurement.protocol()
        torch.set_num_threads(target.threads)
        net, weights = load_supernet()
        picked = pick_subnets(net, args.random, args.seed)[: args.limit]
        runner = LocalRunner(target.runner)
        console.print(f"[bold]{MODEL}[/] on {runner.describe()}, {target.threads} thread(s); {weights}")
        with tempfile.TemporaryDirectory(prefix="executorch_paths.") as tmp:
            subnets = prepare(net, picked, target, Path(tmp), console)
            if any(ET in s.skipped for s in subnets):
                bad = next(s for s in subnets if ET in s.skipped)
                raise DeployError(f"ExecuTorch fp32 failed for {bad.label}: {bad.skipped[ET]}")
            apply_global_skips(subnets)
            prepared = time.perf_counter()
            calls = {f"{s.label}|{path}": call for s in subnets for path, call in s.calls.items()}
            with console.status("measuring") as status:
                stats = measure_interleaved(calls, protocol, on_progress=status.update, seed=0, where=runner.where)
    except DeployError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    end = time.perf_counter()

    result = {
        "benchmark": "executorch_paths",
        "model": MODEL,
        "quick": bool(args.quick),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": runner.describe(),
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "cpus": os.cpu_count()},
        "where": runner.where,
        "target": target.name,
        "threads": target.threads,
        "weights": weights,
        "protocol": dataclasses.asdict(protocol),
        "paths": dict(LABELS),
        "versions": versions(),
        "wall_s": round(end - start, 1),
        "prepare_s": round(prepared - start, 1),
        "measure_s": round(end - prepared, 1),
        "loadavg_1m": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        "summary": summarize(subnets, stats, protocol.cv_max),
    }
    print_tables(result, console)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "executorch_paths.json", args.out / "executorch_paths.md"
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, markdown(result))
    console.print(f"wrote {json_path} and {md_path} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
