"""On an NVIDIA GPU: our torch_cuda artifact (CUDA graph, fp16) against the paths a user has without
TensorRT, same subnets, measured side by side with CUDA events in one interleaved run.

Paths, each on the extracted dense module of matformer_vit_mnist (smallest, largest, 3 seeded random):
- ours: TorchCudaBackend, the hub's torch.export program replayed as a CUDA graph in fp16;
- graph fp32: the same in fp32;
- eager fp16 / eager fp32: the module called directly on the GPU (one kernel launch per op);
- ours again: the fp16 graph compiled a second time: the repeatability floor.
TensorRT is not installed on the machine this ran on, so it is not among the paths.

    python -m benchmarks.gpu_paths            # needs a CUDA GPU (says "skipped" and writes nothing without)
    python -m benchmarks.gpu_paths --quick    # smoke test on the GPU: tiny model, one subnet
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from benchmarks import harness
from benchmarks.harness import Context, PathSet, Subnet
from benchmarks.harness.subnets import Built, hub_entry
from deploy.latency.stats import MeasureProtocol
from deploy.targets import load_target

OURS, AGAIN, GRAPH32, EAGER16, EAGER32 = "graph_fp16", "ours_repeat", "graph_fp32", "eager_fp16", "eager_fp32"
PATHS = PathSet(
    labels={
        OURS: "TorchCudaBackend fp16: the hub's torch.export program replayed as a CUDA graph (ours)",
        GRAPH32: "the same CUDA graph in fp32",
        EAGER16: "the module called eagerly on the GPU in fp16",
        EAGER32: "the module called eagerly on the GPU in fp32",
        AGAIN: "ours compiled and measured again",
    },
    short={
        OURS: "graph fp16 (ours)",
        GRAPH32: "graph fp32",
        EAGER16: "eager fp16",
        EAGER32: "eager fp32",
        AGAIN: "ours again",
    },
    reference=OURS, repeat=AGAIN,
)  # fmt: skip
PROTOCOL = MeasureProtocol(warmup_runs=50, min_runs=200, min_time_s=0.02, rounds=10)
NO_GATE = math.inf  # parity is recorded (fp16 differs from the fp32 reference by ~1e-2), never a reason to skip


def eager(module: torch.nn.Module, x: torch.Tensor) -> Built:
    """The module on the GPU, timed by CUDA events around one call."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def call() -> float:
        with torch.no_grad():
            start.record()
            module(x)
            end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    with torch.no_grad():
        out = module(x).float().cpu().numpy()
    return call, [out], None


def prepare(sub: Subnet, ctx: Context) -> None:
    from deploy.backends import get_backend

    backend = ctx.shared.setdefault("backend", get_backend("torch_cuda"))
    entry = hub_entry(sub, ctx)
    refs, reference = entry.reference_inputs(), entry.reference_outputs()

    def graph(precision: str, folder: str) -> Built:
        target = ctx.target.model_copy(update={"precision": precision})
        artifact = backend.compile(entry, target, ctx.work / sub.config.id / folder)
        return backend.device_timed_call(artifact, refs), backend.run(artifact, refs), None

    harness.add_path(sub, OURS, lambda: graph("fp16", "fp16"), reference, NO_GATE)
    harness.add_path(sub, AGAIN, lambda: graph("fp16", "fp16b"), reference, NO_GATE)
    harness.add_path(sub, GRAPH32, lambda: graph("fp32", "fp32"), reference, NO_GATE)
    (name,) = refs
    x = torch.from_numpy(refs[name]).cuda()
    harness.add_path(sub, EAGER32, lambda: eager(copy.deepcopy(sub.module).cuda().float(), x), reference, NO_GATE)
    harness.add_path(sub, EAGER16, lambda: eager(copy.deepcopy(sub.module).cuda().half(), x.half()), reference, NO_GATE)


def run(args: Any) -> harness.Result:
    if not torch.cuda.is_available():
        raise harness.Skipped("needs an NVIDIA GPU and a CUDA build of torch")
    target = load_target(args.target)
    protocol = harness.QUICK_PROTOCOL if args.quick else PROTOCOL
    where = f"CUDA events on {torch.cuda.get_device_name()}"
    body = harness.compare_paths(args, PATHS, target, protocol, prepare, where=where, self_timed=True)
    return {**body, "device": torch.cuda.get_device_name()}


def upgrade(result: harness.Result) -> harness.Result:
    """A result written before the harness (rows of medians keyed by path label) in today's shape."""
    if "summary" in result:
        return result
    by_label = {v: k for k, v in PATHS.short.items()}
    rows = []
    for r in result["rows"]:
        medians = {by_label[k]: v for k, v in r.items() if k in by_label}
        parity = {p: result["parity_max_abs_diff"].get(f"{r['subnet']} {PATHS.short[p].split(' (')[0]}", "not recorded")
                  for p in medians}  # fmt: skip
        ratios = {p: v / medians[OURS] for p, v in medians.items() if p != OURS}
        rows.append({"subnet": r["subnet"], "id": r["subnet"], "config": {"config": r["config"]}, "params": math.nan,
                     "median_ms": medians, "ratio_vs_" + OURS: ratios, "parity_max_abs_diff": parity})  # fmt: skip
    geo = {by_label[k]: v for k, v in result["geomean_ratio_vs_ours"].items() if by_label[k] != OURS}
    spans = {p: [min(r["ratio_vs_" + OURS][p] for r in rows), max(r["ratio_vs_" + OURS][p] for r in rows)] for p in geo}
    floor = max(abs(r["ratio_vs_" + OURS][AGAIN] - 1) for r in rows)
    summary = {
        "rows": rows,
        f"geomean_ratio_vs_{OURS}": geo,
        f"ratio_range_vs_{OURS}": spans,
        "repeatability_floor": floor,
    }
    return {**result, "model": "matformer_vit_mnist", "target": "h100-torch-cuda", "host": result["device"],
            "paths": dict(PATHS.labels), "reference": OURS, "summary": summary}  # fmt: skip


def markdown(result: harness.Result) -> str:
    return harness.paths_markdown(upgrade(result), "GPU paths: CUDA graph fp16 vs the paths without TensorRT",
                                  PATHS.short, OURS)  # fmt: skip


def arguments(parser: Any) -> None:
    harness.add_subnet_arguments(parser, "h100-torch-cuda")


COMPARISON = harness.Comparison("gpu_paths", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
