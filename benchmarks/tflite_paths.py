"""Our TFLite artifact against onnx2tf and onnxruntime, same subnets, measured side by side.

For the smallest, the largest and a few seeded random subnets of matformer_vit_mnist (picked and loaded
as benchmarks/ort_paths.py does), every path starts from the same hub entry of the extracted subnet:

- ours: TFLiteBackend's artifact (litert-torch from the hub's torch.export program, fp32), run by
  ai-edge-litert's Interpreter with its default XNNPACK delegate, `threads` threads;
- ours int8: the same backend at precision "int8" (full integer, ai-edge-quantizer static_wi8_ai8),
  calibrated on 256 training images; a column only when it converts for every subnet;
- onnx2tf: the hub's ONNX converted by onnx2tf to a float32 .tflite, run by the same interpreter with
  the same threads. onnx2tf pins old numpy/onnx/tensorflow, so it lives in its own venv
  (--onnx2tf-python) and runs as a subprocess, one model per process, with a timeout. It is flaky
  (TOOLCHAIN.md: 2 failures in 22 identical runs, once with silently wrong numbers), so a conversion
  that fails or misses fp32 parity is retried once in a fresh process; a second failure skips that
  (subnet, path) with its reason. No figure is ever filled in for a skipped path;
- onnxruntime: the hub's ONNX through OnnxRuntimeBackend (the target's settings, IOBinding);
- ours again: the same .tflite file in a second Interpreter, a second item: the repeatability floor.

Every (subnet, path) is one item of a single `measure_interleaved` call, each timed call built once.
The TFLite paths are timed the same way (inputs set once, `interpreter.invoke()` timed), so ratios
compare artifacts, not calling conventions. Parity is the max abs diff against the hub's reference
outputs (the torch module on the hub's reference input), via deploy.export.parity.check_parity.

    .venv/bin/python benchmarks/tflite_paths.py            # full protocol (the target's), ~4 min
    .venv/bin/python benchmarks/tflite_paths.py --quick    # short protocol, for a smoke test

onnx2tf's venv (once, ~3 min; about 1.5 GB with tensorflow):

    python3 -m venv .cache/onnx2tf-venv && .cache/onnx2tf-venv/bin/pip install onnx2tf==1.29.24

Writes benchmarks/results/tflite_paths.json and tflite_paths.md (or under --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import os
import platform
import statistics
import subprocess
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
from torch import nn

from deploy.backends.base import Artifact
from deploy.backends.onnxruntime import OnnxRuntimeBackend
from deploy.backends.tflite import PARITY_ATOL, TFLiteBackend
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

log = logging.getLogger("benchmarks.tflite_paths")

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_ONNX2TF_VENV = ROOT / ".cache" / "onnx2tf-venv"
ONNX2TF_VERSION = "1.29.24"  # the newest onnx2tf that installs for Python 3.11 here
SUBNET_SEED = 0  # the random subnets
RANDOM_SUBNETS = 3
CALIBRATION_IMAGES = 256  # int8: training images from deploy.tasks.mnist.load_splits().train.x
ONNX2TF_TIMEOUT_S = 300  # one conversion measured 20-34 s (TOOLCHAIN.md); tensorflow's import adds ~10 s
ONNX2TF_ATTEMPTS = 2  # a failed or wrong conversion gets one more fresh process

OURS, INT8, O2T, ORT, OURS_AGAIN = "ours", "ours_int8", "onnx2tf", "onnxruntime", "ours_repeat"
PATHS = (OURS, INT8, O2T, ORT, OURS_AGAIN)
OTHERS = (INT8, O2T, ORT, OURS_AGAIN)  # compared with ours
LABELS = {
    OURS: "TFLiteBackend fp32 (litert-torch from the hub's torch.export program), LiteRT + XNNPACK",
    INT8: f"TFLiteBackend full int8 (static_wi8_ai8, {CALIBRATION_IMAGES} training images), LiteRT + XNNPACK",
    O2T: "the hub's ONNX → onnx2tf float32 .tflite (NHWC input), the same LiteRT interpreter",
    ORT: "the hub's ONNX through OnnxRuntimeBackend (the target's session options, IOBinding)",
    OURS_AGAIN: "the same .tflite file as ours in a second Interpreter, measured as a second item",
}
SHORT = {OURS: "ours", INT8: "ours int8", O2T: "onnx2tf", ORT: "ORT", OURS_AGAIN: "ours again"}

# --quick: a smoke test of the whole script, not figures to quote.
QUICK = MeasureProtocol(warmup_runs=5, min_runs=10, min_time_s=0.01, rounds=3, cv_max=0.10, max_retries=0)

Call = Callable[[], object]


@dataclass
class Subnet:
    label: str
    config: SubnetConfig
    module: nn.Module
    params: int
    calls: dict[str, Call] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)  # max abs diff vs the hub's reference outputs
    skipped: dict[str, str] = field(default_factory=dict)  # path -> one-line reason
    convert_s: dict[str, float] = field(default_factory=dict)
    tflite: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> {"ops": n, "bytes": n}
    notes: list[str] = field(default_factory=list)


# --- the supernet and its subnets (as benchmarks/ort_paths.py) -------------------------------------


def tflite_target(ort_target: Target, precision: str) -> Target:
    """A tflite Target with the ORT target's device, threads and protocol (as tests/backends/test_tflite.py)."""
    return Target(
        name=f"{ort_target.name}-tflite-{precision.replace('_', '-')}",
        description=f"{ort_target.description} (tflite {precision} for benchmarks/tflite_paths.py)",
        device=ort_target.device,
        backend="tflite",
        runner=ort_target.runner,
        precision=precision,
        threads=ort_target.threads,
        budget_ms=ort_target.budget_ms,
        model=ort_target.model,
        parity_atol=PARITY_ATOL[precision],
        measurement=ort_target.measurement,
    )


# --- helpers -------------------------------------------------------------------------------------


def one_line(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def parity(outputs: Sequence[np.ndarray], entry: hub.HubEntry, atol: float) -> tuple[float, bool]:
    report = check_parity(list(outputs), entry.reference_outputs(), atol=atol)
    return report.max_abs_diff, report.ok


def tflite_size(backend: TFLiteBackend, path: Path, precision: str) -> dict[str, Any]:
    artifact = Artifact(path=path, backend="tflite", precision=precision, input_names=(), output_names=())
    info = backend.inspect(artifact)
    return {"ops": int(info["n_ops"]), "bytes": int(info["size_bytes"]), "op_types": info["ops"]}


def litert_call(path: Path, x_nchw: np.ndarray, threads: int) -> tuple[Call, np.ndarray]:
    """A .tflite file from elsewhere in ai-edge-litert's Interpreter (default XNNPACK delegate), timed
    like TFLiteBackend.timed_call: input set once, `invoke` timed. onnx2tf writes NHWC inputs: the
    NCHW sample is transposed once, as a user of that file would."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=int(threads))
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    (out,) = interp.get_output_details()
    shape = tuple(int(d) for d in inp["shape"])
    if shape == x_nchw.shape:
        value = x_nchw
    elif x_nchw.ndim == 4 and shape == tuple(x_nchw.transpose(0, 2, 3, 1).shape):
        value = x_nchw.transpose(0, 2, 3, 1)
    else:
        raise DeployError(f"{path.name} takes input shape {shape}, not {x_nchw.shape} or its NHWC form")
    interp.set_tensor(inp["index"], np.ascontiguousarray(value, dtype=np.float32))
    interp.invoke()
    return interp.invoke, np.array(interp.get_tensor(out["index"]))


# --- onnx2tf in its own venv ---------------------------------------------------------------------

_ENV = {"CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
_PROBE = (
    "import importlib.metadata as m, onnx2tf, tensorflow\n"
    "print(m.version('onnx2tf'), m.version('tensorflow'), m.version('onnx'), m.version('numpy'))"
)


def onnx2tf_versions(python: Path | None) -> tuple[dict[str, str] | None, str]:
    """(versions, "") when onnx2tf imports in `python`'s environment, else (None, why not)."""
    how = (
        f"create it with: python3 -m venv {DEFAULT_ONNX2TF_VENV} && "
        f"{DEFAULT_ONNX2TF_VENV}/bin/pip install onnx2tf=={ONNX2TF_VERSION}"
    )
    if python is None:
        return None, f"no onnx2tf venv at {DEFAULT_ONNX2TF_VENV}; {how} (or pass --onnx2tf-python)"
    if not python.is_file():
        return None, f"--onnx2tf-python {python} does not exist; {how}"
    try:
        proc = subprocess.run(
            [str(python), "-c", _PROBE],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, **_ENV},
        )
    except subprocess.TimeoutExpired:
        return None, f"importing onnx2tf in {python} took over 180 s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"onnx2tf does not import in {python}: {one_line(last)}"
    o2t, tf, onnx_v, np_v = proc.stdout.split()[-4:]
    return {"onnx2tf": o2t, "tensorflow": tf, "onnx (onnx2tf venv)": onnx_v, "numpy (onnx2tf venv)": np_v}, ""


def onnx2tf_convert(python: Path, onnx_path: Path, out_dir: Path, timeout_s: float) -> tuple[Path, float]:
    """One conversion in a fresh process; returns (float32 .tflite, seconds) or raises DeployError(reason).

    `-rtpo Erf`: the exact GELU's Erf otherwise becomes a TF-only (Flex) op that LiteRT cannot run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), "-m", "onnx2tf", "-i", str(onnx_path), "-o", str(out_dir), "-rtpo", "Erf", "-n"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=out_dir,
            env={**os.environ, **_ENV},
        )
    except subprocess.TimeoutExpired:
        raise DeployError(f"onnx2tf timed out after {timeout_s:.0f} s") from None
    seconds = time.perf_counter() - start
    (out_dir / "onnx2tf.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    found = sorted(out_dir.glob("*_float32.tflite"))
    if proc.returncode != 0 or not found:
        lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "error" in ln.lower()]
        why = (errors or lines or ["no output"])[-1]
        raise DeployError(f"onnx2tf exit {proc.returncode}, no *_float32.tflite: {one_line(why)}")
    return found[0], seconds


# --- the paths -----------------------------------------------------------------------------------


def add_ours(sub: Subnet, entry: hub.HubEntry, target: Target, backend: TFLiteBackend, work: Path) -> None:
    artifact = backend.compile(entry, target, work / "ours" / sub.config.id)
    feed = entry.reference_inputs()
    sub.parity[OURS], ok = parity(backend.run(artifact, feed), entry, PARITY_ATOL["fp32"])
    if not ok:
        sub.notes.append(f"ours misses fp32 parity ({sub.parity[OURS]:.1e} > {PARITY_ATOL['fp32']:.0e})")
    sub.convert_s[OURS] = float(artifact.options["convert_seconds"])
    sub.tflite[OURS] = tflite_size(backend, artifact.path, "fp32")
    sub.calls[OURS] = backend.timed_call(artifact, feed)
    # The same file in a second Interpreter, built as the backend builds its own: the floor then also
    # covers what differs between two interpreters (memory placement), as between ours and onnx2tf.
    (x,) = feed.values()
    sub.calls[OURS_AGAIN], got = litert_call(artifact.path, x, int(artifact.options["threads"]))
    sub.parity[OURS_AGAIN], _ = parity([got], entry, PARITY_ATOL["fp32"])


def add_int8(
    sub: Subnet,
    entry: hub.HubEntry,
    target: Target,
    backend: TFLiteBackend,
    work: Path,
    calibration: np.ndarray,
) -> None:
    try:
        artifact = backend.compile(entry, target, work / "int8" / sub.config.id, calibration=calibration)
        feed = entry.reference_inputs()
        sub.parity[INT8], ok = parity(backend.run(artifact, feed), entry, PARITY_ATOL["int8"])
        if not ok:
            raise DeployError(f"parity {sub.parity[INT8]:.2f} > {PARITY_ATOL['int8']} (a broken conversion)")
        sub.calls[INT8] = backend.timed_call(artifact, feed)
    except DeployError as exc:
        sub.skipped[INT8] = one_line(str(exc))
        sub.parity.pop(INT8, None)
        return
    sub.convert_s[INT8] = float(artifact.options["convert_seconds"])
    sub.tflite[INT8] = tflite_size(backend, artifact.path, "int8")


def add_onnx2tf(
    sub: Subnet,
    entry: hub.HubEntry,
    python: Path,
    threads: int,
    backend: TFLiteBackend,
    work: Path,
    timeout_s: float,
    console: Console,
) -> None:
    (x,) = entry.reference_inputs().values()
    reasons = []
    for attempt in range(1, ONNX2TF_ATTEMPTS + 1):
        out = work / "onnx2tf" / sub.config.id / f"attempt{attempt}"
        try:
            path, seconds = onnx2tf_convert(python, entry.onnx_path, out, timeout_s)
            call, got = litert_call(path, x, threads)
        except DeployError as exc:
            reasons.append(str(exc))
            console.print(f"  [yellow]{sub.label}: onnx2tf attempt {attempt} failed:[/] {one_line(str(exc))}")
            continue
        diff, ok = parity([got], entry, PARITY_ATOL["fp32"])
        if not ok:
            reasons.append(f"converted but wrong numbers (max abs diff {diff:.2g} > {PARITY_ATOL['fp32']:.0e})")
            console.print(f"  [yellow]{sub.label}: onnx2tf attempt {attempt}:[/] {reasons[-1]}")
            continue
        sub.parity[O2T], sub.convert_s[O2T], sub.calls[O2T] = diff, seconds, call
        sub.tflite[O2T] = tflite_size(backend, path, "fp32")
        if reasons:
            sub.notes.append(f"onnx2tf attempt 1 failed ({one_line(reasons[0], 120)}); attempt {attempt} worked")
        return
    sub.skipped[O2T] = f"{ONNX2TF_ATTEMPTS} attempts failed; last: {one_line(reasons[-1], 140)}"


def add_ort(sub: Subnet, entry: hub.HubEntry, target: Target, backend: OnnxRuntimeBackend, work: Path) -> None:
    artifact = backend.compile(entry, target, work / "ort" / sub.config.id)
    feed = entry.reference_inputs()
    sub.parity[ORT], ok = parity(backend.run(artifact, feed), entry, target.parity_atol)
    if not ok:
        sub.notes.append(f"onnxruntime misses parity ({sub.parity[ORT]:.1e} > {target.parity_atol:.0e})")
    sub.calls[ORT] = backend.timed_call(artifact, feed)


def calibration_images() -> tuple[np.ndarray | None, str]:
    try:
        from deploy.tasks.mnist import load_splits

        return load_splits().train.x[:CALIBRATION_IMAGES].numpy(), ""
    except DeployError as exc:
        return None, f"no calibration data: {one_line(str(exc))}"


def prepare(
    net: Supernet,
    picked: Sequence[tuple[str, SubnetConfig]],
    ort_target: Target,
    onnx2tf_python: Path | None,
    timeout_s: float,
    work: Path,
    console: Console,
) -> list[Subnet]:
    tfl, ort = TFLiteBackend(), OnnxRuntimeBackend()
    fp32, int8 = tflite_target(ort_target, "fp32"), tflite_target(ort_target, "int8")
    calibration, no_int8 = calibration_images()
    x = net.example_inputs()[0]
    subnets = []
    for label, config in picked:
        module = net.extract(config).eval()
        sub = Subnet(label, config, module, net.param_count(config))
        identity = {"subnet": config.id, "variant": net.variant, "weights": "benchmark"}
        with console.status(f"{label}: hub export, litert-torch fp32 + int8, onnxruntime"):
            with quiet():
                entry = hub.get_or_export(module, x, identity, cache_dir=work / "hub", with_program=True)
            if entry.meta.get("exporter") != "torchscript":
                sub.notes.append(f"the hub fell back to the {entry.meta.get('exporter')} exporter")
            add_ours(sub, entry, fp32, tfl, work)
            if calibration is None:
                sub.skipped[INT8] = no_int8
            else:
                add_int8(sub, entry, int8, tfl, work, calibration)
            add_ort(sub, entry, ort_target, ort, work)
        if onnx2tf_python is not None:
            with console.status(f"{label}: onnx2tf (subprocess, ≤ {timeout_s:.0f} s)"):
                add_onnx2tf(sub, entry, onnx2tf_python, ort_target.threads, tfl, work, timeout_s, console)
        took = ", ".join(f"{SHORT[p]} {sub.convert_s[p]:.1f}" for p in (OURS, INT8, O2T) if p in sub.convert_s)
        console.print(f"  {label:9} {config}  ({sub.params / 1e6:.2f} M params) convert s: {took}")
        subnets.append(sub)
    return subnets


def apply_global_skips(subnets: Sequence[Subnet], onnx2tf_reason: str) -> None:
    """int8 is a column only if it converted for every subnet; onnx2tf is skipped everywhere when absent."""
    failed = [s for s in subnets if INT8 in s.skipped]
    if failed:
        why = f"int8 did not convert for {', '.join(s.label for s in failed)} ({failed[0].skipped[INT8]})"
        for s in subnets:
            s.calls.pop(INT8, None)
            s.parity.pop(INT8, None)
            s.skipped[INT8] = s.skipped.get(INT8, why)
    if onnx2tf_reason:
        for s in subnets:
            s.skipped[O2T] = onnx2tf_reason


# --- measuring and summarising -------------------------------------------------------------------


def measure_all(
    subnets: Sequence[Subnet], protocol: MeasureProtocol, where: str, console: Console
) -> dict[str, LatencyStats]:
    calls = {f"{s.label}|{path}": call for s in subnets for path, call in s.calls.items()}
    measure_log = logging.getLogger("deploy.latency.measure")
    level = measure_log.level
    measure_log.setLevel(logging.ERROR)  # the tables show every item's round CV
    try:
        with console.status("measuring") as status:
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
                # A skipped path carries "skipped: <reason>" instead of a number, everywhere.
                "median_ms": {p: lat[p].median_ms if p in lat else f"skipped: {s.skipped[p]}" for p in PATHS},
                "p90_ms": {p: v.p90_ms for p, v in lat.items()},
                "round_cv": {p: v.cv for p, v in lat.items()},
                "median_rse": {p: relative_standard_error(v) for p, v in lat.items()},
                "round_medians_ms": {p: list(v.round_medians_ms) for p, v in lat.items()},
                "n_runs": {p: v.n_runs for p, v in lat.items()},
                "ratio_vs_ours": {p: lat[p].median_ms / ours for p in OTHERS if p in lat},
                "parity_max_abs_diff": {p: s.parity[p] if p in s.parity else f"skipped: {s.skipped[p]}" for p in PATHS},
                "convert_s": {p: round(v, 2) for p, v in s.convert_s.items()},
                "tflite": dict(s.tflite),
                "skipped": dict(s.skipped),
                "notes": list(s.notes),
            }
        )
    ratios, ranges, counted = {}, {}, {}
    for p in OTHERS:
        values = [r["ratio_vs_ours"][p] for r in rows if p in r["ratio_vs_ours"]]
        counted[p] = len(values)
        ranges[p] = [min(values), max(values)] if values else None
        # A path skipped everywhere gets its reason(s), not a number.
        ratios[p] = geomean(values) if values else "skipped: " + "; ".join(sorted({s.skipped[p] for s in subnets}))
    rses = [v for r in rows for v in r["median_rse"].values()]
    cvs = [v for r in rows for v in r["round_cv"].values()]
    worst = {}
    for p in PATHS:
        got = [r["parity_max_abs_diff"][p] for r in rows if not isinstance(r["parity_max_abs_diff"][p], str)]
        worst[p] = max(got) if got else None
    return {
        "rows": rows,
        "geomean_ratio_vs_ours": ratios,
        "ratio_range_vs_ours": ranges,
        "subnets_in_geomean": counted,
        "repeatability_floor": max(abs(r["ratio_vs_ours"][OURS_AGAIN] - 1) for r in rows),
        "round_cv_median": statistics.median(cvs),
        "round_cv_max": max(cvs),
        "median_rse_max": max(rses),
        "items_above_gate": sum(v > cv_max for v in rses),
        "items": len(rses),
        "worst_parity": worst,
        "skipped": {p: sorted({s.skipped[p] for s in subnets if p in s.skipped}) for p in PATHS},
    }


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(onnx2tf: Mapping[str, str] | None, onnx2tf_reason: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "onnxruntime", "torch", "onnx", "numpy"):
        out[name] = dist_version(name)
    if onnx2tf:
        out.update(onnx2tf)
    else:
        out["onnx2tf"] = out["tensorflow"] = f"not run ({onnx2tf_reason})"
    return out


def fmt_ratio(r: Any) -> str:
    return f"{r:.2f}×" if isinstance(r, float) else "skipped"


def cell_ms(r: Mapping[str, Any], p: str) -> str:
    v = r["median_ms"][p]
    return f"{v:.3f} ({r['round_cv'][p]:.1%})" if isinstance(v, float) else "skipped (see Skipped)"


def cell_parity(r: Mapping[str, Any], p: str) -> str:
    v = r["parity_max_abs_diff"][p]
    return f"{v:.1e}" if isinstance(v, float) else "skipped"


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    proto = result["protocol"]
    lines = [
        f"# TFLite paths: our LiteRT artifact vs onnx2tf and onnxruntime ({result['model']})"
        + (" — QUICK protocol, smoke test only" if result["quick"] else ""),
        "",
        f"Date {result['date']} · host {result['host']} · target {result['target']} "
        f"({result['threads']} thread{'s' if result['threads'] != 1 else ''}) · weights: {result['weights']}",
        "",
        f"Load average (1 min) {result['loadavg_1m']['start']} at start, {result['loadavg_1m']['end']} "
        f"at end (the machine has 2 cores); run took {result['wall_s']} s (conversions "
        f"{result['prepare_s']} s, measurement {result['measure_s']} s).",
        "",
        "Paths: " + "; ".join(f"**{SHORT[p]}** = {LABELS[p]}" for p in PATHS) + ".",
        "",
        f"Protocol: {proto['rounds']} interleaved rounds (every subnet × path item per round, shuffled), "
        f"each item ≥ {proto['min_runs']} runs and ≥ {proto['min_time_s']} s per round after "
        f"{proto['warmup_runs']} warm-up runs; while an item's median is known to worse than "
        f"±{proto['cv_max']:.0%} (round CV / √rounds) all items get more rounds, up to {proto['max_retries']} times. "
        "Median over all timed runs. TFLite paths time `interpreter.invoke()` with inputs set once; ORT "
        "times `run_with_iobinding`. Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()) + ".",
        "",
        "## Median latency (ms) and round CV",
        "",
        "| subnet | params | " + " | ".join(SHORT[p] for p in PATHS) + " |",
        "|---|---:|" + "---:|" * len(PATHS),
    ]
    for r in s["rows"]:
        cells = [cell_ms(r, p) for p in PATHS]
        lines.append(f"| {r['subnet']} `{r['id']}` | {r['params'] / 1e6:.2f} M | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Ratios vs ours (path median / ours median; > 1 means ours is faster)",
        "",
        "| subnet | " + " | ".join(f"{SHORT[p]} / ours" for p in OTHERS) + " |",
        "|---|" + "---:|" * len(OTHERS),
    ]
    for r in s["rows"]:
        q = r["ratio_vs_ours"]
        lines.append(f"| {r['subnet']} | " + " | ".join(fmt_ratio(q.get(p)) for p in OTHERS) + " |")
    g, rng, n = s["geomean_ratio_vs_ours"], s["ratio_range_vs_ours"], s["subnets_in_geomean"]
    cells = []
    for p in OTHERS:
        if rng[p] is None:
            cells.append("skipped")
        else:
            of = f", {n[p]} of {len(s['rows'])}" if n[p] != len(s["rows"]) else ""
            cells.append(f"**{fmt_ratio(g[p])}** ({rng[p][0]:.2f}–{rng[p][1]:.2f}{of})")
    lines.append("| **geomean** (range) | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Repeatability floor: the same .tflite in a second interpreter differed from ours by up to "
        f"{s['repeatability_floor']:.1%}; a ratio within that of 1.00 is no measurable difference. "
        f"Round CV: median {s['round_cv_median']:.1%}, max {s['round_cv_max']:.1%}; "
        f"{s['items_above_gate']} of {s['items']} items stayed above the ±{proto['cv_max']:.0%} precision gate "
        f"after retries (worst ±{s['median_rse_max']:.1%}).",
        "",
        "## Parity (max abs diff vs the hub's reference outputs) and conversion",
        "",
        f"Tolerances: fp32 {PARITY_ATOL['fp32']:.0e}; int8 {PARITY_ATOL['int8']} (catches broken conversions only; "
        "accuracy decides whether int8 is usable, see deploy/backends/tflite.py).",
        "",
        "| subnet | " + " | ".join(SHORT[p] for p in (OURS, INT8, O2T, ORT)) + " | convert s ours / int8 / onnx2tf "
        "| .tflite ops ours / int8 / onnx2tf | .tflite KB ours / int8 / onnx2tf |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in s["rows"]:
        c, t = r["convert_s"], r["tflite"]
        conv = " / ".join(f"{c[p]:.1f}" if p in c else "–" for p in (OURS, INT8, O2T))
        ops = " / ".join(str(t[p]["ops"]) if p in t else "–" for p in (OURS, INT8, O2T))
        kb = " / ".join(f"{t[p]['bytes'] / 1024:.0f}" if p in t else "–" for p in (OURS, INT8, O2T))
        lines.append(
            f"| {r['subnet']} | " + " | ".join(cell_parity(r, p) for p in (OURS, INT8, O2T, ORT)) + f" | {conv} "
            f"| {ops} | {kb} |"
        )
    largest = max(s["rows"], key=lambda r: r["params"])
    if OURS in largest["tflite"] and O2T in largest["tflite"]:
        ours_ops, o2t_ops = largest["tflite"][OURS]["op_types"], largest["tflite"][O2T]["op_types"]
        diff = {k: o2t_ops.get(k, 0) - ours_ops.get(k, 0) for k in sorted({*ours_ops, *o2t_ops})}
        shown = ", ".join(f"{k} {ours_ops.get(k, 0)} / {o2t_ops.get(k, 0)}" for k, d in diff.items() if d)
        lines += ["", f"Op types whose counts differ in the {largest['subnet']} subnet (ours / onnx2tf): {shown}."]
        if ours_ops.get("GELU") and not o2t_ops.get("GELU"):
            lines[-1] += (
                " onnx2tf has a GELU fusion for the pattern the hub's ONNX holds (Div 1.4142135 → Erf → Add 1 → "
                "Mul → Mul 0.5) but it did not fire here: each GELU became `-rtpo Erf`'s polynomial erf, ~10 "
                "elementwise ops (without `-rtpo Erf` the file holds a TF-only FlexErf op that LiteRT cannot run)."
            )
    lines += ["", "Subnets:", ""]
    for r in s["rows"]:
        lines.append(f"- {r['subnet']} `{r['id']}`: layers {r['config']['layers']}, ffn {r['config']['ffn']}")
    skipped = [(p, why) for p in PATHS for why in s["skipped"][p]]
    if skipped:
        lines += ["", "Skipped:", "", *(f"- {SHORT[p]}: {why}" for p, why in skipped)]
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
    table = Table(title=f"median ms (round CV) — {result['host']}, {result['threads']} thread(s)")
    table.add_column("subnet")
    for p in PATHS:
        table.add_column(SHORT[p], justify="right")
    for r in s["rows"]:
        table.add_row(r["subnet"], *(cell_ms(r, p) if p in r["round_cv"] else "skipped (below)" for p in PATHS))
    console.print(table)
    ratios = Table(title="ratio vs ours (> 1: ours is faster)")
    ratios.add_column("subnet")
    for p in OTHERS:
        ratios.add_column(f"{SHORT[p]} / ours", justify="right")
    for r in s["rows"]:
        ratios.add_row(r["subnet"], *(fmt_ratio(r["ratio_vs_ours"].get(p)) for p in OTHERS))
    g = s["geomean_ratio_vs_ours"]
    ratios.add_row("geomean", *(fmt_ratio(g[p]) for p in OTHERS), style="bold")
    console.print(ratios)
    parity_table = Table(title="parity: max abs diff vs the hub's reference outputs")
    parity_table.add_column("subnet")
    for p in (OURS, INT8, O2T, ORT):
        parity_table.add_column(SHORT[p], justify="right")
    for r in s["rows"]:
        parity_table.add_row(r["subnet"], *(cell_parity(r, p) for p in (OURS, INT8, O2T, ORT)))
    w = s["worst_parity"]
    worst = [f"{w[p]:.1e}" if w[p] is not None else "skipped" for p in (OURS, INT8, O2T, ORT)]
    parity_table.add_row("worst", *worst, style="bold")
    console.print(parity_table)
    console.print(
        f"repeatability floor {s['repeatability_floor']:.1%}; round CV median {s['round_cv_median']:.1%}, "
        f"max {s['round_cv_max']:.1%}; {s['items_above_gate']}/{s['items']} items above the "
        f"±{result['protocol']['cv_max']:.0%} precision gate"
    )
    for p in PATHS:
        for why in s["skipped"][p]:
            console.print(f"  [yellow]{SHORT[p]} skipped:[/] {why}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--target", default="host-cpu-ort-1t", help="ORT target: threads (all paths) and protocol come from it"
    )
    parser.add_argument("--quick", action="store_true", help="short protocol (smoke test, not to quote)")
    parser.add_argument("--random", type=int, default=RANDOM_SUBNETS, help="number of seeded random subnets")
    parser.add_argument("--seed", type=int, default=SUBNET_SEED, help="seed of the random subnets")
    parser.add_argument(
        "--onnx2tf-python",
        type=Path,
        default=None,
        help=f"python of a venv with onnx2tf (default: {DEFAULT_ONNX2TF_VENV}/bin/python if it exists)",
    )
    parser.add_argument("--onnx2tf-timeout", type=float, default=ONNX2TF_TIMEOUT_S, help="seconds per conversion")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for tflite_paths.json and .md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console(stderr=False, width=None if sys.stdout.isatty() else 150)

    start = time.perf_counter()
    load_before = os.getloadavg()
    python = args.onnx2tf_python
    if python is None and (DEFAULT_ONNX2TF_VENV / "bin" / "python").exists():
        python = DEFAULT_ONNX2TF_VENV / "bin" / "python"
    try:
        target = load_target(args.target)
        if target.backend != "onnxruntime":
            raise SystemExit(f"target {target.name} uses {target.backend}; pass an onnxruntime target")
        protocol = QUICK if args.quick else target.measurement.protocol()
        torch.set_num_threads(target.threads)
        o2t_versions, o2t_reason = onnx2tf_versions(python)
        if o2t_reason:
            console.print(f"[yellow]onnx2tf skipped:[/] {o2t_reason}")
        net, weights = load_supernet()
        picked = pick_subnets(net, args.random, args.seed)
        runner = LocalRunner(target.runner)
        console.print(f"[bold]{MODEL}[/] on {runner.describe()}, {target.threads} thread(s); {weights}")
        with tempfile.TemporaryDirectory(prefix="tflite_paths.") as tmp:
            subnets = prepare(
                net, picked, target, None if o2t_reason else python, args.onnx2tf_timeout, Path(tmp), console
            )
            apply_global_skips(subnets, o2t_reason)
            prepared = time.perf_counter()
            stats = measure_all(subnets, protocol, runner.where, console)
    except DeployError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    end = time.perf_counter()

    result = {
        "benchmark": "tflite_paths",
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
        "onnx2tf": {
            "python": str(python) if python else None,
            "command": "python -m onnx2tf -i model.onnx -o OUT -rtpo Erf -n",
            "attempts": ONNX2TF_ATTEMPTS,
            "timeout_s": args.onnx2tf_timeout,
        },
        "versions": versions(o2t_versions, o2t_reason),
        "wall_s": round(end - start, 1),
        "prepare_s": round(prepared - start, 1),
        "measure_s": round(end - prepared, 1),
        "loadavg_1m": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        "summary": summarize(subnets, stats, protocol.cv_max),
    }
    print_tables(result, console)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out / "tflite_paths.json", args.out / "tflite_paths.md"
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, markdown(result))
    console.print(f"wrote {json_path} and {md_path} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
