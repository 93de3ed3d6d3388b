"""Our ONNX Runtime artifact against the other conversion paths a user could take, same subnets, side by side.

For the smallest, the largest and a few seeded random subnets of matformer_vit_mnist, four paths run the
same extracted dense module on the same input:

- ours: the hub's ONNX (legacy exporter, opset 17, onnxslim) through OnnxRuntimeBackend with the
  target's settings (threads from targets/<target>.yaml, ORT_ENABLE_ALL);
- torch eager: the extracted module under torch.inference_mode with torch.set_num_threads(threads);
- dynamo: torch.onnx.export(dynamo=True, opset 18, external_data=False) straight into onnxruntime with
  default session options except the thread count (what a user gets without our hub);
- legacy, no slim: the legacy exporter's ONNX without onnxslim, same ORT settings as ours (what
  slimming buys).

"ours" is measured twice per subnet: the ratio of the two is the repeatability floor. All onnxruntime
paths are timed the same way (inputs and outputs bound once with IOBinding), so ratios compare
artifacts and session options, not calling conventions. Parity is against the torch module's output.

    python -m benchmarks.ort_paths            # the target's protocol (min_runs 10, one retry), ~2-4 min
    python -m benchmarks.ort_paths --quick    # smoke test: tiny model, one subnet, seconds
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks import harness
from benchmarks.harness import Context, PathSet, Subnet
from deploy.backends.base import Artifact
from deploy.backends.onnxruntime import OnnxRuntimeBackend
from deploy.export import hub

DYNAMO_OPSET = 18
OURS, EAGER, DYNAMO, RAW, OURS_AGAIN = "ours", "torch_eager", "dynamo_ort", "legacy_noslim_ort", "ours_repeat"
PATHS = PathSet(
    labels={
        OURS: "ours (hub: legacy opset 17 + onnxslim, ORT)",
        EAGER: "torch eager",
        DYNAMO: f"dynamo=True opset {DYNAMO_OPSET} → ORT defaults",
        RAW: "legacy opset 17, no onnxslim, ORT",
        OURS_AGAIN: "ours, measured again",
    },
    short={OURS: "ours", EAGER: "torch eager", DYNAMO: "dynamo→ORT", RAW: "no-slim→ORT", OURS_AGAIN: "ours again"},
    reference=OURS, repeat=OURS_AGAIN, info_key="onnx_nodes",
)  # fmt: skip
NO_GATE = math.inf  # parity is recorded for every path here, never a reason to skip one


def node_count(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def iobinding_call(session: Any, feed: Mapping[str, np.ndarray], output_names: Sequence[str]) -> harness.subnets.Call:
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


def eager(module: nn.Module, x: torch.Tensor) -> harness.subnets.Built:
    def call() -> object:
        with torch.inference_mode():
            return module(x)

    return call, [call().numpy()], None  # type: ignore[attr-defined]


def ours(sub: Subnet, x: torch.Tensor, ctx: Context, backend: OnnxRuntimeBackend) -> harness.subnets.Built:
    identity = {"subnet": sub.config.id, "variant": ctx.net.variant, "weights": "benchmark"}
    with harness.quiet():
        entry = hub.get_or_export(sub.module, x, identity, cache_dir=ctx.work / "hub", with_program=False)
    if entry.meta.get("exporter") != "torchscript":
        sub.notes.append(f"the hub fell back to the {entry.meta.get('exporter')} exporter")
    artifact = backend.compile(entry, ctx.target, ctx.work / "ours" / sub.config.id)
    feed = {entry.input_names[0]: x.numpy()}
    sub.info[OURS] = node_count(artifact.path)
    sub.calls[OURS_AGAIN] = backend.timed_call(artifact, feed)  # same session, its own binding
    return backend.timed_call(artifact, feed), backend.run(artifact, feed), entry.meta.get("export_seconds")


def raw(sub: Subnet, x: torch.Tensor, ctx: Context, backend: OnnxRuntimeBackend) -> harness.subnets.Built:
    """The hub's first export step alone: legacy exporter, opset 17, constant folding, no onnxslim."""
    path = ctx.work / "raw" / sub.config.id / "model.onnx"
    path.parent.mkdir(parents=True)
    start = time.perf_counter()
    with harness.quiet():
        torch.onnx.export(sub.module, (x,), str(path), dynamo=False, do_constant_folding=True,
                          opset_version=hub.OPSET, input_names=[hub.INPUT_NAME], output_names=["logits"])  # fmt: skip
    seconds = time.perf_counter() - start
    options = backend.session_options(ctx.target.threads)
    artifact = Artifact(path=path, backend=backend.name, precision="fp32", input_names=(hub.INPUT_NAME,),
                        output_names=("logits",), options=options)  # fmt: skip
    feed = {hub.INPUT_NAME: x.numpy()}
    sub.info[RAW] = node_count(path)
    return backend.timed_call(artifact, feed), backend.run(artifact, feed), seconds


def dynamo(sub: Subnet, x: torch.Tensor, ctx: Context) -> harness.subnets.Built:
    """What a user gets without the hub: torch.onnx.export's default exporter, ORT's default session."""
    import onnxruntime as ort

    path = ctx.work / "dynamo" / sub.config.id / "model.onnx"
    path.parent.mkdir(parents=True)
    start = time.perf_counter()
    with harness.quiet():
        torch.onnx.export(sub.module, (x,), str(path), dynamo=True, opset_version=DYNAMO_OPSET, external_data=False,
                          input_names=[hub.INPUT_NAME], output_names=["logits"], verbose=False)  # fmt: skip
    seconds = time.perf_counter() - start
    extra = sorted(p.name for p in path.parent.iterdir() if p != path)
    if extra:
        sub.notes.append(f"dynamo export wrote extra files {extra}")
    so = ort.SessionOptions()  # defaults, except the thread count
    so.intra_op_num_threads = ctx.target.threads
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    sub.info[DYNAMO] = node_count(path)
    feed = {name: x.numpy()}
    return iobinding_call(session, feed, outputs), session.run(outputs, feed), seconds


def prepare(sub: Subnet, ctx: Context) -> None:
    backend = ctx.shared.setdefault("backend", OnnxRuntimeBackend())
    x = ctx.net.example_inputs()[0]
    with torch.inference_mode():
        reference = [sub.module(x).numpy()]
    harness.add_path(sub, EAGER, lambda: eager(sub.module, x), reference, NO_GATE)
    harness.add_path(sub, OURS, lambda: ours(sub, x, ctx, backend), reference, NO_GATE)
    sub.parity[OURS_AGAIN] = sub.parity.get(OURS, math.nan)
    harness.add_path(sub, RAW, lambda: raw(sub, x, ctx, backend), reference, NO_GATE)
    harness.add_path(sub, DYNAMO, lambda: dynamo(sub, x, ctx), reference, NO_GATE)


def run(args: Any) -> harness.Result:
    target, _ = harness.subnets.paths_target(args, "onnxruntime")
    # The target's protocol with min_runs 10 and one retry: torch eager with 2 threads can take ~100 ms a
    # call while another process holds both cores, which would otherwise stretch the run to 10+ minutes.
    full = dataclasses.replace(target.measurement.protocol(), min_runs=10, max_retries=1)
    protocol = harness.QUICK_PROTOCOL if args.quick else full
    return harness.compare_paths(args, PATHS, target, protocol, prepare)


def conversions(result: harness.Result) -> list[str]:
    rows = result["summary"]["rows"]
    return [
        "## Conversion (export s: hub = export + checks + onnxslim) and ONNX nodes",
        "",
        *harness.table(
            ["subnet", "export s hub / no-slim / dynamo", "ONNX nodes ours / no-slim / dynamo"],
            ([r["subnet"],
              " / ".join(f"{r['convert_s'][p]:.2f}" if p in r["convert_s"] else "–" for p in (OURS, RAW, DYNAMO)),
              " / ".join(str(r["onnx_nodes"].get(p, "–")) for p in (OURS, RAW, DYNAMO))] for r in rows),
            "lrr",
        ),
    ]  # fmt: skip


def markdown(result: harness.Result) -> str:
    return harness.paths_markdown(
        result, "ONNX Runtime paths: our artifact vs the other conversion paths", PATHS.short, OURS, conversions
    )


def arguments(parser: Any) -> None:
    harness.add_subnet_arguments(parser, "host-cpu-ort")


COMPARISON = harness.Comparison("ort_paths", __doc__, run, markdown, arguments, distributions=("onnx", "onnxslim"))

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
