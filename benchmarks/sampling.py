"""Complexity-aware vs uniform subnet sampling, same training budget: what each leaves the subnets with.

Trains `elastic_vit_mnist` from the same seed twice (per seed), once with each sampler and otherwise
the shipped recipe (sandwich: largest on the labels, smallest and two sampled subnets distilled in place
from it), for the same number of steps; then measures the smallest, a middle (every gene at its middle
option) and the largest subnet on the val and test splits. Also reports where each sampler's subnets lie
in the FLOPs range and how far apart adjacent steps' subnets are, from the samplers alone.

    python -m benchmarks.sampling                  # 6 epochs per run, seed 0: ~10 min here
    python -m benchmarks.sampling --seeds 1 2      # adds seeds to the results of earlier ones
    python -m benchmarks.sampling --epochs 15 --seeds 0 1   # the shipped length, two seeds
    python -m benchmarks.sampling --quick          # smoke test: elastic_vit_tiny, one epoch of a few seconds
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from deploy.accuracy.oracle import evaluate
from deploy.models import build, load_spec
from deploy.tasks.mnist import MnistTask
from deploy.training.recipes import recipe_for
from deploy.training.sampling import SAMPLERS, make_sampler
from deploy.training.train import fit, initial_supernet, middle_config

log = logging.getLogger("benchmarks.sampling")

MODEL = "elastic_vit_mnist"
QUICK_MODEL = "elastic_vit_tiny"
SIZES = ("smallest", "middle", "largest")
SCHEDULE_STEPS = 600  # sampler-only statistics: no training involved


def schedule_stats(name: str, seed: int, model: str = MODEL, steps: int = SCHEDULE_STEPS) -> dict[str, float]:
    """Where a sampler's subnets lie in the FLOPs range, and the FLOPs ratio between adjacent steps."""
    net = build(model)  # FLOPs need no weights or data
    sample = make_sampler(name, net, np.random.default_rng(seed))
    low, high = net.flops(net.smallest()), net.flops(net.largest())
    flops = np.array([net.flops(sample()) for _ in range(steps)], dtype=float)
    position = np.log(flops / low) / np.log(high / low)  # 0 smallest … 1 largest, on a log scale
    ratio = np.exp(np.abs(np.diff(np.log(flops))))
    return {
        "bottom_quarter_frac": float(np.mean(position < 0.25)),
        "top_quarter_frac": float(np.mean(position > 0.75)),
        "min_mflops": float(flops.min() / 1e6),
        "max_mflops": float(flops.max() / 1e6),
        "adjacent_ratio_median": float(np.median(ratio)),
        "adjacent_ratio_max": float(ratio.max()),
    }


def run_one(sampler: str, seed: int, epochs: int, model: str = MODEL, max_minutes: float = 60.0) -> dict[str, Any]:
    recipe = dataclasses.replace(recipe_for(load_spec(model).training), sampling=sampler, epochs=epochs)
    task = MnistTask(0)
    splits = task.splits()
    torch.manual_seed(seed)
    net = initial_supernet(load_spec(model), recipe, splits)
    start = time.monotonic()
    steps = fit(net, splits, recipe, seed=seed, max_minutes=max_minutes)
    train_s = time.monotonic() - start
    configs = {"smallest": net.smallest(), "middle": middle_config(net), "largest": net.largest()}
    row: dict[str, Any] = {"sampler": sampler, "seed": seed, "steps": steps, "train_s": round(train_s, 1)}
    for size, config in configs.items():
        assert config is not None
        row[size] = {
            "mflops": net.flops(config) / 1e6,
            "val": evaluate(net, task, "val", config),
            "test": evaluate(net, task, "test", config),
        }
    log.info("%s seed %d: %s", sampler, seed, {s: round(row[s]["val"] * 100, 2) for s in SIZES})
    return row


def earlier_runs(path: Path, epochs: int, seeds: list[int], model: str = MODEL) -> list[dict[str, Any]]:
    """Runs of other seeds at the same length from an earlier invocation: seeds add up across runs."""
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    if earlier.get("model") != model or earlier.get("epochs") != epochs:
        return []
    return [r for r in earlier["runs"] if r["seed"] not in seeds]


def markdown(result: dict[str, Any]) -> str:
    date, machine = harness.describe(result)
    torch_version = result["environment"]["versions"]["torch"] if "environment" in result else result["torch"]
    runs, seeds = result["runs"], result["seeds"]
    lines = [
        f"# Complexity-aware vs uniform sampling ({result['model']})",
        "",
        f"{date}, {machine}, torch {torch_version}, 2 threads. Same recipe, seed and number "
        f"of steps ({result['epochs']} epochs) for both samplers; accuracies on the MNIST val / test splits "
        "(750 images each: one image is 0.13 pp).",
        "",
        "| sampler | seed | subnet | MFLOPs | val | test |",
        "|---|---|---|---|---|---|",
    ]
    for row in runs:
        for size in SIZES:
            r = row[size]
            lines.append(
                f"| {row['sampler']} | {row['seed']} | {size} | {r['mflops']:.2f} | {r['val'] * 100:.2f}% "
                f"| {r['test'] * 100:.2f}% |"
            )
    lines += [
        "",
        "Complexity-aware minus uniform (pp), mean over seeds (each seed in brackets):",
        "",
        "| subnet | val | test |",
        "|---|---|---|",
    ]
    for size in SIZES:
        cells = []
        for split in ("val", "test"):
            acc = {(r["sampler"], r["seed"]): r[size][split] for r in runs}
            per_seed = [
                (acc[("complexity", s)] - acc[("uniform", s)]) * 100
                for s in seeds
                if ("complexity", s) in acc and ("uniform", s) in acc
            ]
            cells.append(f"{statistics.mean(per_seed):+.2f} ({', '.join(f'{d:+.2f}' for d in per_seed)})")
        lines.append(f"| {size} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        f"Where the samplers put their subnets ({result.get('schedule_steps', SCHEDULE_STEPS)} draws each, FLOPs "
        "position on a log scale "
        "between the smallest and the largest subnet):",
        "",
        "| sampler | bottom quarter | top quarter | min MFLOPs | max MFLOPs | adjacent-step ratio, median | max |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in result["schedule"].items():
        lines.append(
            f"| {name} | {s['bottom_quarter_frac']:.2f} | {s['top_quarter_frac']:.2f} | {s['min_mflops']:.2f} | "
            f"{s['max_mflops']:.2f} | {s['adjacent_ratio_median']:.2f}× | {s['adjacent_ratio_max']:.2f}× |"
        )
    lines += ["", f"Seeds: {', '.join(map(str, seeds))}. Training wall time per run: "]
    lines[-1] += ", ".join(f"{r['sampler']}/{r['seed']} {r['train_s']:.0f} s" for r in runs) + "."
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> harness.Result:
    model, epochs = (QUICK_MODEL, 1) if args.quick else (MODEL, args.epochs)
    seeds = args.seeds[:1] if args.quick else args.seeds
    minutes = 0.02 if args.quick else 60.0  # --quick: a few seconds of training per sampler
    runs = [run_one(sampler, seed, epochs, model, minutes) for seed in seeds for sampler in SAMPLERS]
    runs = earlier_runs(args.out / "sampling.json", epochs, seeds, model) + runs
    steps = 50 if args.quick else SCHEDULE_STEPS
    return {
        "model": model,
        "epochs": epochs,
        "seeds": sorted({r["seed"] for r in runs}),
        "schedule": {name: schedule_stats(name, 0, model, steps) for name in SAMPLERS},
        "schedule_steps": steps,
        "runs": runs,
    }


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])


COMPARISON = harness.Comparison("sampling", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
