"""ExecuTorch (XNNPACK) fp32 and int8 against our LiteRT artifacts and ONNX Runtime, same subnets, side by side.

For the smallest, the largest and a few seeded random subnets of matformer_vit_mnist, every path starts
from the same hub entry of the extracted subnet, at the target's threads (host-cpu-executorch: 1):

- et: ExecuTorchBackend's .pte (the hub's torch.export program lowered with the XNNPACK partitioner,
  fp32), run by executorch.runtime; `method.execute` is timed with the input tensor built once;
- et int8: the same backend at precision "int8" (XNNPACK quantizer, pt2e) on 256 training images;
- litert / litert int8: TFLiteBackend's artifacts (litert-torch; full int8 on the same 256 images);
- onnxruntime: the hub's ONNX through OnnxRuntimeBackend (IOBinding);
- et again: the same .pte loaded into a second executorch Program: the repeatability floor.

For each subnet the ExecuTorch delegation report is recorded: how many XNNPACK subgraphs, which ops stayed
on ExecuTorch's portable kernels (each one splits the delegate). A path is a column only when it worked
for every subnet.

    python -m benchmarks.executorch_paths            # full protocol (host-cpu-executorch's)
    python -m benchmarks.executorch_paths --quick    # smoke test: tiny model, one subnet, et fp32 and ORT only
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import Context, PathSet, Subnet
from benchmarks.harness.subnets import Built, compiled, hub_entry, target_variant
from deploy.backends import executorch as et_module
from deploy.backends.tflite import PARITY_ATOL as TFLITE_ATOL

CALIBRATION_IMAGES = 256
ET, ET_INT8, LITERT, LITERT_INT8, ORT, ET_AGAIN = "et", "et_int8", "litert", "litert_int8", "onnxruntime", "et_repeat"
PATHS = PathSet(
    labels={
        ET: "ExecuTorchBackend fp32: the hub's torch.export program, XNNPACK partitioner, executorch.runtime",
        ET_INT8: f"ExecuTorchBackend int8: XNNPACK quantizer (pt2e, {CALIBRATION_IMAGES} training images), XNNPACK",
        LITERT: "TFLiteBackend fp32 (litert-torch), LiteRT interpreter + XNNPACK",
        LITERT_INT8: f"TFLiteBackend full int8 (static_wi8_ai8, {CALIBRATION_IMAGES} training images), "
        "LiteRT + XNNPACK",
        ORT: "the hub's ONNX through OnnxRuntimeBackend (IOBinding)",
        ET_AGAIN: "the same .pte as et in a second executorch Program, measured as a second item",
    },
    short={
        ET: "et",
        ET_INT8: "et int8",
        LITERT: "litert",
        LITERT_INT8: "litert int8",
        ORT: "ORT",
        ET_AGAIN: "et again",
    },
    reference=ET, repeat=ET_AGAIN, info_key="delegation",
)  # fmt: skip
ATOL = {ET: et_module.PARITY_ATOL["fp32"], ET_INT8: et_module.PARITY_ATOL["int8"], LITERT: TFLITE_ATOL["fp32"],
        LITERT_INT8: TFLITE_ATOL["int8"], ORT: 1e-4, ET_AGAIN: et_module.PARITY_ATOL["fp32"]}  # fmt: skip
BACKEND = {ET: "executorch", ET_INT8: "executorch", LITERT: "tflite", LITERT_INT8: "tflite", ORT: "onnxruntime"}
QUICK_SKIPS = {p: "not run with --quick (a conversion takes 5-20 s)" for p in (ET_INT8, LITERT, LITERT_INT8)}


def et_again(path: Path, x: np.ndarray) -> Built:
    """The .pte in a second Program and Method (the backend's are cached per file), timed like the backend."""
    from executorch.runtime import Runtime

    with et_module.quiet_executorch():
        method = Runtime.get().load_program(str(path)).load_method(et_module.METHOD)
    tensors = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))]
    (out,) = method.execute(tensors)
    return (lambda: method.execute(tensors)), [np.array(out.numpy(), copy=True)], None


def setup(ctx: Context) -> dict[str, str]:
    from deploy.backends import get_backend
    from deploy.tasks.mnist import MnistTask

    for path, backend in BACKEND.items():
        precision = "int8" if path.endswith("int8") else "fp32"
        ctx.shared[path] = (get_backend(backend), target_variant(ctx.target, backend, precision, ATOL[path]))
    ctx.shared["calibration"] = None if ctx.args.quick else MnistTask(0).calibration_array(CALIBRATION_IMAGES)
    return QUICK_SKIPS if ctx.args.quick else {}


def prepare(sub: Subnet, ctx: Context) -> None:
    entry = hub_entry(sub, ctx)
    reference = entry.reference_outputs()
    (x,) = entry.reference_inputs().values()
    skip = QUICK_SKIPS if ctx.args.quick else {}

    def build(path: str) -> Built:
        backend, target = ctx.shared[path]
        calibration = ctx.shared["calibration"] if path.endswith("int8") else None
        artifact, built = compiled(backend, target, entry, ctx.work / path / sub.config.id, calibration)
        if path in (ET, ET_INT8):
            sub.info[path] = artifact.options["delegation"]
        if path == ET:
            harness.add_path(sub, ET_AGAIN, lambda: et_again(artifact.path, x), reference, ATOL[ET_AGAIN])
        return built

    for path in (p for p in BACKEND if p not in skip):
        harness.add_path(sub, path, lambda path=path: build(path), reference, ATOL[path])
    report = sub.info.get(ET, {})
    harness.subnets.log.info("  %s: %s XNNPACK subgraphs, not delegated %s", sub.label,
                             report.get("delegated_subgraphs", "?"), report.get("not_delegated_ops", "?"))  # fmt: skip


def run(args: Any) -> harness.Result:
    target, protocol = harness.subnets.paths_target(args, "executorch")
    return harness.compare_paths(args, PATHS, target, protocol, prepare, setup=setup)


def delegation(result: harness.Result) -> list[str]:
    rows = []
    for r in result["summary"]["rows"]:
        d = r["delegation"].get(ET, {})
        kept = ", ".join(f"{k} ×{v}" for k, v in d.get("not_delegated_ops", {}).items()) or "none"
        conv = " / ".join(f"{r['convert_s'][p]:.1f}" if p in r["convert_s"] else "–" for p in (ET, ET_INT8))
        rows.append([r["subnet"], d.get("delegated_subgraphs", "–"), kept, conv])
    return [
        "## ExecuTorch delegation (fp32)",
        "",
        "Tolerances: " + ", ".join(f"{PATHS.short[p]} {ATOL[p]:g}" for p in PATHS.paths if p != ET_AGAIN) + ".",
        "",
        *harness.table(["subnet", "XNNPACK subgraphs", "not delegated", "convert s et / et int8"], rows, "lrlr"),
        "",
        "The table's prediction for ExecuTorch is validated separately (`elastic-deploy tables validate --target "
        "host-cpu-executorch`, latency_tables/*.validation.json).",
    ]


def markdown(result: harness.Result) -> str:
    title = "ExecuTorch paths: ExecuTorch XNNPACK vs our LiteRT artifacts and ONNX Runtime"
    return harness.paths_markdown(result, title, PATHS.short, ET, delegation)


def arguments(parser: Any) -> None:
    harness.add_subnet_arguments(parser, "host-cpu-executorch")


COMPARISON = harness.Comparison(
    "executorch_paths", __doc__, run, markdown, arguments,
    distributions=("executorch", "torchao", "litert-torch", "ai-edge-litert", "ai-edge-quantizer"),
)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
