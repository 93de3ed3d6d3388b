"""On an NVIDIA GPU: our torch_cuda artifact (CUDA graph, fp16) against the paths a user would take
without TensorRT, same subnets, measured side by side with CUDA events in one interleaved run.

Paths, each on the extracted dense module of matformer_vit_mnist (smallest, largest, 3 seeded random):
- ours: TorchCudaBackend, the hub's torch.export program replayed as a CUDA graph in fp16;
- graph fp32: the same in fp32;
- eager fp16 / eager fp32: the module called directly on the GPU (one kernel launch per op).
"ours" is measured twice per subnet: the ratio of the two is the repeatability floor.
TensorRT is not installed on the machine this ran on, so it is not among the paths.

    python3 benchmarks/gpu_paths.py        # needs a CUDA GPU; writes benchmarks/results/gpu_paths.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from deploy.backends.torch_cuda import TorchCudaBackend
from deploy.export import hub
from deploy.export.parity import check_parity
from deploy.io import atomic_write_json, atomic_write_text
from deploy.latency.measure import measure_interleaved
from deploy.latency.stats import MeasureProtocol
from deploy.latency.table import now_iso
from deploy.models.checkpoint import load
from deploy.targets import load_target

OUT = Path(__file__).resolve().parent / "results"


def eager_call(module: torch.nn.Module, x: torch.Tensor):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def call() -> float:
        with torch.no_grad():
            start.record()
            module(x)
            end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return call


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("skipped: needs an NVIDIA GPU and a CUDA build of torch", file=sys.stderr)
        return 0
    net, ckpt = load("matformer_vit_mnist")
    net.eval()
    space, rng = net.space(), np.random.default_rng(0)
    configs = [net.smallest(), net.largest()] + [space.sample(rng) for _ in range(3)]
    target = load_target("h100-torch-cuda")
    backend = TorchCudaBackend()
    calls, parity = {}, {}
    tmp = Path(tempfile.mkdtemp())
    for config in configs:
        sub = net.extract(config).eval()
        entry = hub.get_or_export(sub, net.example_inputs()[0], {"subnet": config.id, "checkpoint": ckpt.sha256}, tmp)
        refs = entry.reference_inputs()
        for prec in ("fp16", "fp32"):
            art = backend.compile(entry, target.model_copy(update={"precision": prec}), tmp / config.id / prec)
            out = backend.run(art, refs)
            parity[f"{config.id} graph {prec}"] = check_parity(out, entry.reference_outputs(), 1.0).max_abs_diff
            calls[f"{config.id}|graph {prec}" + (" (ours)" if prec == "fp16" else "")] = backend.device_timed_call(
                art, refs
            )
        calls[f"{config.id}|ours again"] = backend.device_timed_call(
            art_fp16 := backend.compile(entry, target, tmp / config.id / "fp16b"), refs
        )
        del art_fp16
        x = torch.from_numpy(refs["input"]).cuda()
        calls[f"{config.id}|eager fp32"] = eager_call(copy.deepcopy(sub).cuda().float(), x)
        calls[f"{config.id}|eager fp16"] = eager_call(copy.deepcopy(sub).cuda().half(), x.half())
    protocol = MeasureProtocol(warmup_runs=50, min_runs=200, min_time_s=0.02, rounds=10)
    stats = measure_interleaved(
        calls, protocol, self_timed=True, where=f"CUDA events on {torch.cuda.get_device_name()}"
    )
    paths = ["graph fp16 (ours)", "ours again", "graph fp32", "eager fp16", "eager fp32"]
    rows, ratios = [], {p: [] for p in paths}
    for config in configs:
        base = stats[f"{config.id}|graph fp16 (ours)"].median_ms
        row = {"subnet": config.id, "config": str(config)}
        for p in paths:
            ms = stats[f"{config.id}|{p}"].median_ms
            row[p] = ms
            ratios[p].append(ms / base)
        rows.append(row)
    geo = {p: math.exp(statistics.fmean(math.log(r) for r in ratios[p])) for p in paths}
    result = {
        "date": now_iso(),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "protocol": protocol.to_json(),
        "rows": rows,
        "geomean_ratio_vs_ours": geo,
        "parity_max_abs_diff": parity,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "gpu_paths.json", result)
    lines = [
        f"# GPU paths ({result['device']}, torch {result['torch']}, {result['date']})",
        "",
        "Median ms per run (CUDA events), batch 1, interleaved in one run; ratio = geometric mean vs ours.",
        "",
        "| subnet | " + " | ".join(paths) + " |",
        "|---|" + "---|" * len(paths),
        *(f"| {r['subnet']} | " + " | ".join(f"{r[p]:.4f}" for p in paths) + " |" for r in rows),
        "| **ratio vs ours** | " + " | ".join(f"**{geo[p]:.2f}×**" for p in paths) + " |",
        "",
    ]
    atomic_write_text(args.out / "gpu_paths.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
