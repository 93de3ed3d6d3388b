"""Scale probe: what each stage costs for a model at a size people deploy (MatFormer-ViT at DeiT-Tiny
dimensions, 224x224x3, 12 layers, width 192, 5.7 M parameters; seeded random weights: its accuracy means
nothing), on this machine's measured targets.

For each target (a copy of host-cpu-ort-1t and of host-cpu-litert's fp32, serving only the probe, in a
throwaway workspace so the shipped tables are untouched):
- table build: wall time of the block phase and of the calibration window, blocks measured, fit residual;
- `tables validate`: median error, within ±5% / ±10%, and the repeatability of the same run;
- export and conversion: the hub export (ONNX + torch.export program) and the backend's compile, for the
  largest subnet;
- a deploy in a child process: its wall time, peak resident memory (ru_maxrss of the child), parity.

    python -m benchmarks.scale_probe [--targets host-cpu-ort-1t host-cpu-litert] [--samples 10]
    python -m benchmarks.scale_probe --quick    # smoke test: a tiny probe on host-cpu-ort-1t, short protocol
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks import harness
from deploy import workspace
from deploy.backends import get_backend
from deploy.export import hub
from deploy.latency.build import build_table
from deploy.latency.table import LatencyTable
from deploy.latency.validate import validate_table
from deploy.models.checkpoint import load
from deploy.targets import load_target

MODEL = "deit_tiny_probe"
QUICK_MODEL = "probe_tiny"  # --quick: written into the throwaway workspace
QUICK_SPEC = {
    "name": QUICK_MODEL,
    "family": "matformer_vit",
    "dims": {"image": 28, "channels": 1, "patch": 7, "dim": 16, "depth": 2, "heads": 2, "ffn_max": 32, "classes": 10},
    "random_weights": {"seed": 0, "why": "quick scale probe: a smoke test, its figures mean nothing"},
    "task": {"name": "synthetic_images", "seed": 0, "options": {"image": 28, "channels": 1, "classes": 10,
                                                                 "per_split": 8}},
    "accuracy_samples": 8,
}  # fmt: skip
log = logging.getLogger("benchmarks.scale_probe")


def probe_target(ws: Path, source: str, model: str, quick: bool) -> str:
    """A copy of the shipped target `source`, serving only the probe, at its first precision."""
    data = yaml.safe_load(workspace.resolve("targets", f"{source}.yaml").read_text())
    name = f"probe-{source}"
    data.update(name=name, model=model, description=f"scale probe on {source}'s settings")
    if quick:
        data["measurement"] = harness.subnets.quick_target(load_target(source)).measurement.model_dump()
    for key in ("models", "precisions", "estimate"):
        data.pop(key, None)
    (ws / "targets" / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return name


def run_target(ws: Path, source: str, samples: int, model: str = MODEL, quick: bool = False) -> dict[str, Any]:
    name = probe_target(ws, source, model, quick)
    target = load_target(name)
    net, info = load(model)
    start = time.perf_counter()
    built = build_table(target, [net], progress=False)
    build_s = time.perf_counter() - start
    log.info("%s: table built in %.0f s", name, build_s)
    report = validate_table(target, net, samples=samples, progress=False)
    log.info("%s: validated (%.1f%% median)", name, report.median_abs_pct_error)

    # the copied target's budget was set for MNIST models: one whose effective budget (less the table's
    # margin) is the geometric mean of this model's smallest and largest subnet gives the deploy a real choice
    from deploy.latency.predictor import LatencyPredictor
    from deploy.latency.table import safety_margin_pct

    table = LatencyTable.load(target.table_path, name)
    predictor = LatencyPredictor(table)
    ends = [predictor.predict(net.blocks(c), net.family).ms for c in (net.smallest(), net.largest())]
    path = ws / "targets" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    margin = min(safety_margin_pct(table, net.family), 90.0) / 100
    # --quick deploys beside make test's other worker: headroom for that load, so the smoke test tests the code
    middle = (ends[0] * ends[1]) ** 0.5 if not quick else 3 * ends[1]
    data["budget_ms"] = round(float(middle / (1 - margin)), 4)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    target = load_target(name)

    backend = get_backend(target.backend)
    with tempfile.TemporaryDirectory(prefix="probe-export-") as tmp:
        t0 = time.perf_counter()
        entry = hub.export_subnet(net, net.largest(), info.sha256, Path(tmp) / "cache")
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        backend.compile(entry, target, Path(tmp) / "artifact")
        compile_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if quick:  # in this process: a child's interpreter and imports would cost more than the deploy
        from deploy.flows.deploy import deploy

        deploy(name, out_dir=ws / "dist" / name, say=lambda _m: None)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    else:
        env = {**os.environ, "ELASTIC_DEPLOY_ROOT": str(ws)}
        proc = subprocess.run(
            [sys.executable, "-m", "deploy", "deploy", "--target", name], env=env, capture_output=True, text=True
        )
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            raise SystemExit(f"deploy on {name} failed: {proc.stderr.strip().splitlines()[-1]}")
    deploy_s = time.perf_counter() - t0
    manifest = json.loads((ws / "dist" / name / "manifest.json").read_text())
    return {
        "target": name,
        "settings_of": source,
        "backend": target.backend,
        "precision": target.precision,
        "threads": target.threads,
        "table": {
            "blocks_measured": built.measured,
            "blocks_s": round(built.blocks_s, 1),
            "calibration_s": round(built.calibration_s, 1),
            "calibration_subnets": built.calibration.n_subnets,
            "fit_residual_pct": round(built.calibration.residual_pct, 2),
            "total_s": round(build_s, 1),
        },
        "validation": {
            "samples": report.samples,
            "median_abs_pct_error": round(report.median_abs_pct_error, 2),
            "within_5pct": report.within_5pct,
            "within_10pct": report.within_10pct,
            "repeatability_pct": round(report.repeatability_pct, 2),
            "worst_pct_error": round(report.worst_pct_error, 1),
        },
        "largest_subnet": {
            "export_s": round(export_s, 2),
            "onnx_bytes": entry.meta.get("onnx_bytes"),
            "compile_s": round(compile_s, 2),
        },
        "deploy": {
            "wall_s": round(deploy_s, 1),
            "peak_rss_mib": round(max(peak_kib, before) / 1024, 0),
            "chosen": manifest["subnet"]["id"],
            "predicted_ms": manifest["latency"]["predicted_ms"],
            "measured_ms": manifest["latency"]["measured_ms"],
            "parity_max_abs_diff": (manifest["parity"] or {}).get("max_abs_diff"),
            "budget_ms": manifest["latency"]["budget_ms"],
        },
    }


def markdown(result: harness.Result) -> str:
    rows, meta = result["rows"], result["meta"]
    lines = harness.report.heading(result, "Scale probe: MatFormer-ViT at DeiT-Tiny dimensions")
    lines[-1] += (
        f" Model `{meta['model']}`: 224×224×3, patch 16, width 192, 12 layers, 3 heads, "
        "FFN 96–768 per layer, 1,000 classes, 5.7 M parameters at its largest; seeded random weights and a "
        "synthetic task (its accuracy means nothing). Each target is a copy of the shipped one's settings "
        "(protocol, threads) serving only the probe, in a throwaway workspace."
    )
    lines += [
        "",
        "| target | table: blocks (s) | calibration window (s) | fit residual | validate: median err | ±5% | ±10% "
        "| repeatability | export largest (s) | compile largest (s) | deploy wall (s) | deploy peak RSS (MiB) "
        "| budget ms | predicted / measured ms | parity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        t, v, s, d = r["table"], r["validation"], r["largest_subnet"], r["deploy"]
        parity = "—" if d["parity_max_abs_diff"] is None else f"{d['parity_max_abs_diff']:.1e}"
        measured = "—" if d["measured_ms"] is None else f"{d['measured_ms']:.2f}"
        lines.append(
            f"| {r['settings_of']} ({r['backend']} {r['precision']}, {r['threads']} thr) | {t['blocks_measured']} "
            f"({t['blocks_s']}) | {t['calibration_s']} ({t['calibration_subnets']} subnets) | {t['fit_residual_pct']}% "
            f"| {v['median_abs_pct_error']}% ({v['samples']}) | {v['within_5pct']:.2f} | {v['within_10pct']:.2f} "
            f"| {v['repeatability_pct']}% | {s['export_s']} | {s['compile_s']} | {d['wall_s']} "
            f"| {d['peak_rss_mib']:.0f} | {d['budget_ms']:.2f} | {d['predicted_ms']:.2f} / {measured} | {parity} |"
        )
    slowest = max(rows, key=lambda r: r["table"]["total_s"])
    lines += [
        "",
        f"Reading it: a table measures each distinct block shape once ({slowest['table']['blocks_measured']} here, "
        "however deep the model), so the block phase takes seconds; the calibration window, whole subnets timed "
        f"end to end, is what costs minutes ({slowest['table']['calibration_s']:.0f} s on {slowest['settings_of']}) "
        "and grows with the subnets' latency, not with the size of the space. The deploy's choice is arbitrary "
        "(with random weights every subnet scores at chance, so the one picked under the budget is whichever "
        "the surrogate ranks first); what it shows is its predicted against its measured latency, and what a deploy "
        "of this size costs in time and memory.",
    ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> harness.Result:
    model = QUICK_MODEL if args.quick else MODEL
    sources = args.targets[:1] if args.quick else args.targets
    samples = 2 if args.quick else args.samples
    logging.getLogger("benchmarks.scale_probe").setLevel(logging.INFO)
    previous = os.environ.get(workspace.ENV)
    with tempfile.TemporaryDirectory(prefix="scale-probe-") as tmp:
        ws = Path(tmp)
        for kind in workspace.KINDS:
            (ws / kind).mkdir()
        if args.quick:
            (ws / "models" / f"{QUICK_MODEL}.yaml").write_text(yaml.safe_dump(QUICK_SPEC, sort_keys=False))
        os.environ[workspace.ENV] = str(ws)
        try:
            rows = [run_target(ws, source, samples, model, args.quick) for source in sources]
        finally:
            if previous is None:
                os.environ.pop(workspace.ENV, None)
            else:
                os.environ[workspace.ENV] = previous
    return {"meta": {"model": model, "samples": samples}, "rows": rows}


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--targets", nargs="+", default=["host-cpu-ort-1t", "host-cpu-litert"])
    parser.add_argument("--samples", type=int, default=10, help="subnets `tables validate` measures end to end")


COMPARISON = harness.Comparison("scale_probe", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
