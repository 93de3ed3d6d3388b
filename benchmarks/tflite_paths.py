"""Our LiteRT (TFLite) artifact against onnx2tf and onnxruntime, same subnets, measured side by side.

For the smallest, the largest and a few seeded random subnets of matformer_vit_mnist, every path starts
from the same hub entry of the extracted subnet, all at the ORT target's threads (host-cpu-ort-1t: 1):

- ours: TFLiteBackend's artifact (litert-torch from the hub's torch.export program, fp32), run by
  ai-edge-litert's Interpreter with its default XNNPACK delegate;
- ours int8: the same backend at precision "int8" (full integer, static_wi8_ai8), calibrated on 256
  training images; a column only when it converts for every subnet;
- onnx2tf: the hub's ONNX converted by onnx2tf (`-rtpo Erf`) to a float32 .tflite, NHWC input, the same
  interpreter. onnx2tf pins old numpy/onnx/tensorflow, so it lives in its own venv and runs as a
  subprocess, one model per process, with a timeout; it is flaky, so a conversion that fails or misses
  fp32 parity is retried once in a fresh process; a second failure skips that (subnet, path);
- onnxruntime: the hub's ONNX through OnnxRuntimeBackend (the target's settings, IOBinding);
- ours again: the same .tflite file in a second Interpreter: the repeatability floor.

Both TFLite routes time `interpreter.invoke()` with the input set once. Parity is against the hub's
reference outputs. onnx2tf's venv, once (~3 min, ~1.5 GB with tensorflow):

    python3 -m venv .cache/onnx2tf-venv && .cache/onnx2tf-venv/bin/pip install onnx2tf==1.29.24
    python -m benchmarks.tflite_paths            # full protocol (the target's), ~4 min (mostly conversions)
    python -m benchmarks.tflite_paths --quick    # smoke test: tiny model, one subnet, fp32 paths only
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import Context, PathSet, Subnet
from benchmarks.harness.subnets import Built, compiled, hub_entry, target_variant
from deploy.backends.base import Artifact
from deploy.backends.onnxruntime import OnnxRuntimeBackend
from deploy.backends.tflite import PARITY_ATOL, TFLiteBackend
from deploy.errors import DeployError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ONNX2TF_VENV = ROOT / ".cache" / "onnx2tf-venv"
ONNX2TF_VERSION = "1.29.24"  # the newest onnx2tf that installs for Python 3.11 here
CALIBRATION_IMAGES = 256  # int8: the task's first training images
ONNX2TF_TIMEOUT_S = 300  # one conversion measured 20-34 s; tensorflow's import adds ~10 s
ONNX2TF_ATTEMPTS = 2  # a failed or wrong conversion gets one more fresh process

OURS, INT8, O2T, ORT, OURS_AGAIN = "ours", "ours_int8", "onnx2tf", "onnxruntime", "ours_repeat"
PATHS = PathSet(
    labels={
        OURS: "TFLiteBackend fp32 (litert-torch from the hub's torch.export program), LiteRT + XNNPACK",
        INT8: f"TFLiteBackend full int8 (static_wi8_ai8, {CALIBRATION_IMAGES} training images), LiteRT + XNNPACK",
        O2T: "the hub's ONNX → onnx2tf float32 .tflite (NHWC input), the same LiteRT interpreter",
        ORT: "the hub's ONNX through OnnxRuntimeBackend (the target's session options, IOBinding)",
        OURS_AGAIN: "the same .tflite file as ours in a second Interpreter, measured as a second item",
    },
    short={OURS: "ours", INT8: "ours int8", O2T: "onnx2tf", ORT: "ORT", OURS_AGAIN: "ours again"},
    reference=OURS, repeat=OURS_AGAIN, info_key="tflite",
)  # fmt: skip
ATOL = {OURS: PARITY_ATOL["fp32"], INT8: PARITY_ATOL["int8"], O2T: PARITY_ATOL["fp32"], ORT: 1e-4,
        OURS_AGAIN: PARITY_ATOL["fp32"]}  # fmt: skip
_ENV = {"CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
_PROBE = (
    "import importlib.metadata as m, onnx2tf, tensorflow\n"
    "print(m.version('onnx2tf'), m.version('tensorflow'), m.version('onnx'), m.version('numpy'))"
)


def tflite_size(backend: TFLiteBackend, path: Path, precision: str) -> dict[str, Any]:
    artifact = Artifact(path=path, backend="tflite", precision=precision, input_names=(), output_names=())
    info = backend.inspect(artifact)
    return {"ops": int(info["n_ops"]), "bytes": int(info["size_bytes"]), "op_types": info["ops"]}


def litert_call(path: Path, x_nchw: np.ndarray, threads: int) -> Built:
    """A .tflite file in its own Interpreter, timed as TFLiteBackend.timed_call (input set once, `invoke`
    timed). onnx2tf writes NHWC inputs: the NCHW sample is transposed once, as a user of that file would."""
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
    return interp.invoke, [np.array(interp.get_tensor(out["index"]))], None


def onnx2tf_python(args: Any) -> tuple[Path | None, dict[str, str], str]:
    """The onnx2tf venv's python, its versions, and "" when onnx2tf imports there, else why not."""
    python = args.onnx2tf_python or (DEFAULT_ONNX2TF_VENV / "bin" / "python")
    how = f"create it with: python3 -m venv {DEFAULT_ONNX2TF_VENV} && {DEFAULT_ONNX2TF_VENV}/bin/pip install " \
          f"onnx2tf=={ONNX2TF_VERSION}"  # fmt: skip
    if args.quick:
        return None, {}, "not run with --quick (a conversion takes ~30 s)"
    if not python.is_file():
        return None, {}, f"no onnx2tf python at {python}; {how} (or pass --onnx2tf-python)"
    try:
        proc = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=180,
                              env={**os.environ, **_ENV})  # fmt: skip
    except subprocess.TimeoutExpired:
        return None, {}, f"importing onnx2tf in {python} took over 180 s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return None, {}, f"onnx2tf does not import in {python}: {harness.one_line(last)}"
    o2t, tf, onnx_v, np_v = proc.stdout.split()[-4:]
    return python, {"onnx2tf": o2t, "tensorflow": tf, "onnx (onnx2tf venv)": onnx_v, "numpy (onnx2tf venv)": np_v}, ""


def onnx2tf_convert(python: Path, onnx_path: Path, out_dir: Path, timeout_s: float) -> tuple[Path, float]:
    """One conversion in a fresh process: (float32 .tflite, seconds), or DeployError(reason).

    `-rtpo Erf`: the exact GELU's Erf otherwise becomes a TF-only (Flex) op that LiteRT cannot run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(python), "-m", "onnx2tf", "-i", str(onnx_path), "-o", str(out_dir), "-rtpo", "Erf", "-n"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=out_dir,
                              env={**os.environ, **_ENV})  # fmt: skip
    except subprocess.TimeoutExpired:
        raise DeployError(f"onnx2tf timed out after {timeout_s:.0f} s") from None
    seconds = time.perf_counter() - start
    (out_dir / "onnx2tf.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    found = sorted(out_dir.glob("*_float32.tflite"))
    if proc.returncode != 0 or not found:
        lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        why = ([ln for ln in lines if "error" in ln.lower()] or lines or ["no output"])[-1]
        raise DeployError(f"onnx2tf exit {proc.returncode}, no *_float32.tflite: {harness.one_line(why)}")
    return found[0], seconds


def onnx2tf_path(sub: Subnet, entry: Any, ctx: Context) -> Built:
    """onnx2tf with one retry in a fresh process when a conversion fails or computes wrong numbers."""
    (x,) = entry.reference_inputs().values()
    reasons = []
    for attempt in range(1, ONNX2TF_ATTEMPTS + 1):
        out = ctx.work / "onnx2tf" / sub.config.id / f"attempt{attempt}"
        try:
            path, seconds = onnx2tf_convert(ctx.shared["onnx2tf"], entry.onnx_path, out, ctx.args.onnx2tf_timeout)
            call, outputs, _ = litert_call(path, x, ctx.target.threads)
        except DeployError as exc:
            reasons.append(str(exc))
            continue
        diff = harness.max_abs_diff(outputs, entry.reference_outputs())
        if diff > ATOL[O2T]:
            reasons.append(f"converted but wrong numbers (max abs diff {diff:.2g} > {ATOL[O2T]:.0e})")
            continue
        sub.info[O2T] = tflite_size(ctx.shared["tflite"], path, "fp32")
        if reasons:
            sub.notes.append(
                f"onnx2tf attempt 1 failed ({harness.one_line(reasons[0], 120)}); attempt {attempt} worked"
            )
        return call, outputs, seconds
    raise DeployError(f"{ONNX2TF_ATTEMPTS} attempts failed; last: {harness.one_line(reasons[-1], 140)}")


def setup(ctx: Context) -> dict[str, str]:
    from deploy.tasks.mnist import MnistTask

    ctx.shared["tflite"], ctx.shared["ort"] = TFLiteBackend(), OnnxRuntimeBackend()
    ctx.shared["fp32"] = target_variant(ctx.target, "tflite", "fp32", PARITY_ATOL["fp32"])
    ctx.shared["int8"] = target_variant(ctx.target, "tflite", "int8", PARITY_ATOL["int8"])
    python, versions, why = onnx2tf_python(ctx.args)
    ctx.shared["onnx2tf"] = python
    ctx.record["onnx2tf"] = {"python": str(python) if python else None, "versions": versions,
                             "command": "python -m onnx2tf -i model.onnx -o OUT -rtpo Erf -n",
                             "attempts": ONNX2TF_ATTEMPTS, "timeout_s": ctx.args.onnx2tf_timeout}  # fmt: skip
    skips = {O2T: why} if why else {}
    if ctx.args.quick:
        skips[INT8] = "not run with --quick (full int8 conversion takes ~20 s a subnet)"
    else:
        ctx.shared["calibration"] = MnistTask(0).calibration_array(CALIBRATION_IMAGES)
    return skips


def prepare(sub: Subnet, ctx: Context) -> None:
    s, entry = ctx.shared, hub_entry(sub, ctx)
    reference = entry.reference_outputs()
    (x,) = entry.reference_inputs().values()

    def ours() -> Built:
        artifact, built = compiled(s["tflite"], s["fp32"], entry, ctx.work / "ours" / sub.config.id)
        sub.info[OURS] = tflite_size(s["tflite"], artifact.path, "fp32")
        # The same file in a second Interpreter: the floor then also covers what differs between two
        # interpreters (memory placement), as between ours and onnx2tf.
        harness.add_path(sub, OURS_AGAIN, lambda: litert_call(artifact.path, x, ctx.target.threads), reference,
                         ATOL[OURS_AGAIN])  # fmt: skip
        return built

    def int8() -> Built:
        out = ctx.work / "int8" / sub.config.id
        artifact, built = compiled(s["tflite"], s["int8"], entry, out, calibration=s["calibration"])
        sub.info[INT8] = tflite_size(s["tflite"], artifact.path, "int8")
        return built

    harness.add_path(sub, OURS, ours, reference, ATOL[OURS])
    if "calibration" in s:
        harness.add_path(sub, INT8, int8, reference, ATOL[INT8])
    harness.add_path(sub, ORT, lambda: compiled(s["ort"], ctx.target, entry, ctx.work / "ort" / sub.config.id)[1],
                     reference, ATOL[ORT])  # fmt: skip
    if s["onnx2tf"] is not None:
        harness.add_path(sub, O2T, lambda: onnx2tf_path(sub, entry, ctx), reference, ATOL[O2T])


def run(args: Any) -> harness.Result:
    target, protocol = harness.subnets.paths_target(args, "onnxruntime")
    return harness.compare_paths(args, PATHS, target, protocol, prepare, setup=setup)


def conversions(result: harness.Result) -> list[str]:
    rows, three = result["summary"]["rows"], (OURS, INT8, O2T)

    def per(r: dict[str, Any], fmt: Any) -> str:
        return " / ".join(fmt(r, p) if p in r["tflite"] or p in r["convert_s"] else "–" for p in three)

    lines = [
        "## Conversion and .tflite files",
        "",
        f"Tolerances: fp32 {PARITY_ATOL['fp32']:.0e}; int8 {PARITY_ATOL['int8']} (catches broken conversions "
        "only; accuracy decides whether int8 is usable).",
        "",
        *harness.table(
            ["subnet", "convert s ours / int8 / onnx2tf", ".tflite ops", ".tflite KB"],
            ([r["subnet"], per(r, lambda r, p: f"{r['convert_s'].get(p, 0):.1f}"),
              per(r, lambda r, p: str(r["tflite"].get(p, {}).get("ops", "–"))),
              per(r, lambda r, p: f"{r['tflite'].get(p, {}).get('bytes', 0) / 1024:.0f}")] for r in rows),
            "lrrr",
        ),
    ]  # fmt: skip
    largest = max(rows, key=lambda r: r["params"])
    if OURS in largest["tflite"] and O2T in largest["tflite"]:
        ours_ops, o2t_ops = largest["tflite"][OURS]["op_types"], largest["tflite"][O2T]["op_types"]
        kinds = sorted({*ours_ops, *o2t_ops})
        shown = ", ".join(f"{k} {ours_ops.get(k, 0)} / {o2t_ops.get(k, 0)}" for k in kinds
                          if ours_ops.get(k, 0) != o2t_ops.get(k, 0))  # fmt: skip
        lines += ["", f"Op types whose counts differ in the {largest['subnet']} subnet (ours / onnx2tf): {shown}."]
    return lines


def markdown(result: harness.Result) -> str:
    title = "TFLite paths: our LiteRT artifact vs onnx2tf and onnxruntime"
    return harness.paths_markdown(result, title, PATHS.short, OURS, conversions)


def arguments(parser: Any) -> None:
    harness.add_subnet_arguments(parser, "host-cpu-ort-1t")
    parser.add_argument("--onnx2tf-python", type=Path, default=None,
                        help=f"python of a venv with onnx2tf (default {DEFAULT_ONNX2TF_VENV}/bin/python)")  # fmt: skip
    parser.add_argument("--onnx2tf-timeout", type=float, default=ONNX2TF_TIMEOUT_S, help="seconds per conversion")


COMPARISON = harness.Comparison(
    "tflite_paths", __doc__, run, markdown, arguments,
    distributions=("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "onnx"),
)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
