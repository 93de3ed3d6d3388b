"""Evolutionary search vs an oracle: how much accuracy the bounded search gives up, and how fast.

For several budgets spread between the smallest and the largest subnet's predicted latency and several
seeds, both searches run on the same space with the same latency and accuracy functions. The gap is the
oracle's accuracy minus the evolutionary choice's, in percentage points. The oracle is exhaustive search
where the space has at most 50,000 configs; for a larger space (elastic_vit: ~10^13) it is the best
feasible config of a large seeded random sample (`--oracle-samples`), so a negative gap means evolution
found better than the sample.

    python -m benchmarks.selector_vs_oracle [--model matformer_vit_mnist] [--target host-cpu-ort] [--proxy]
    python -m benchmarks.selector_vs_oracle --quick    # smoke test: poa_vit_mnist, one budget, one seed, a short search

main() wires the real pieces (trained matformer_vit_mnist checkpoint, the target's latency table, the
accuracy surrogate). Where any is missing it falls back to a PROXY (a fixed per-width latency table and
a synthetic monotone accuracy) and says so in the table, the JSON and the Markdown.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks import harness
from deploy.errors import NoFeasibleSubnetError
from deploy.models import build
from deploy.search.select import Candidate, Constraints, EvolutionParams, select
from deploy.search.space import SearchSpace, SubnetConfig

log = logging.getLogger("benchmarks.selector_vs_oracle")

MODEL = "matformer_vit_mnist"
BUDGET_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)  # of the way from the smallest to the largest subnet
SEEDS = (0, 1, 2, 3, 4)

LatencyFn = Callable[[SubnetConfig], tuple[float, float]]
AccuracyFn = Callable[[SubnetConfig], float]

# PROXY pieces: invented numbers with a realistic shape, used only when the real ones are not there.
PROXY_BASE_MS = 0.020  # patch embedding + head
PROXY_BLOCK_MS = {128: 0.030, 256: 0.038, 512: 0.055, 1024: 0.090}  # one ViT block by FFN width


def proxy_latency(config: SubnetConfig) -> tuple[float, float]:
    ms = PROXY_BASE_MS + sum(PROXY_BLOCK_MS[w] for w in config["ffn"])  # type: ignore[union-attr]
    return ms, 0.1 * ms


def proxy_accuracy(config: SubnetConfig) -> float:
    """Monotone in depth and width with diminishing returns; later layers count a little more."""
    capacity = sum(
        (1 + 0.1 * i) * math.log2(w / 64)
        for i, w in zip(config["layers"], config["ffn"], strict=True)  # type: ignore[arg-type]
    )
    return 0.99 - 0.89 * math.exp(-capacity / 10)


EXHAUSTIVE_LIMIT = 50_000


class SampledOracle:
    """The best feasible config of `n` seeded random configs (scored once, reused for every budget)."""

    def __init__(self, space: SearchSpace, latency_fn: LatencyFn, accuracy_fn: AccuracyFn, n: int, seed: int = 99):
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        configs = {c.id: c for c in (space.sample(rng) for _ in range(n))}
        self.scored = [(latency_fn(c)[0], accuracy_fn(c), c) for c in configs.values()]
        self.elapsed_s = time.perf_counter() - start
        self.evaluated = len(self.scored)

    def select(self, budget: float) -> OracleResult:
        feasible = [(acc, ms, c) for ms, acc, c in self.scored if ms <= budget]
        if not feasible:
            raise NoFeasibleSubnetError(f"none of the {self.evaluated} sampled configs fits {budget:.4g} ms")
        acc, ms, config = max(feasible, key=lambda t: t[0])
        choice = Candidate(config, ms, 0.0, acc, "surrogate", None)
        # The sample is scored once for all budgets: its time counts in full for each.
        return OracleResult(choice, self.elapsed_s, self.evaluated, len(feasible))


@dataclass(frozen=True)
class OracleResult:
    choice: Candidate
    elapsed_s: float
    evaluated: int
    feasible: int


def run_benchmark(
    space: SearchSpace,
    latency_fn: LatencyFn,
    accuracy_fn: AccuracyFn,
    budgets: Sequence[float],
    seeds: Sequence[int],
    evolution: EvolutionParams | None = None,
    oracle_samples: int = 100_000,
) -> list[dict[str, Any]]:
    """One row per (budget, seed): both searches' accuracy, the gap in pp, wall time, evaluations."""
    evolution = evolution or EvolutionParams()
    sampled = (
        None if space.size() <= EXHAUSTIVE_LIMIT else SampledOracle(space, latency_fn, accuracy_fn, oracle_samples)
    )
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        constraints = Constraints(budget)
        try:  # the oracle is seed-independent: one run per budget
            if sampled is None:
                oracle = select(space, latency_fn, accuracy_fn, constraints, method="exhaustive")
            else:
                oracle = sampled.select(budget)
        except NoFeasibleSubnetError as exc:
            log.warning("budget %.4g ms: %s", budget, exc)
            continue
        for seed in seeds:
            params = EvolutionParams(**{**evolution.__dict__, "seed": seed})
            evo = select(space, latency_fn, accuracy_fn, constraints, method="evolutionary", evolution=params)
            rows.append(
                {
                    "budget_ms": budget,
                    "seed": seed,
                    "exhaustive_accuracy": oracle.choice.accuracy,
                    "evolutionary_accuracy": evo.choice.accuracy,
                    "gap_pp": 100 * (oracle.choice.accuracy - evo.choice.accuracy),
                    "same_choice": oracle.choice.config == evo.choice.config,
                    "exhaustive_s": oracle.elapsed_s,
                    "evolutionary_s": evo.elapsed_s,
                    "exhaustive_evaluated": oracle.evaluated,
                    "evolutionary_evaluated": evo.evaluated,
                    "feasible": oracle.feasible,
                    "exhaustive_choice": oracle.choice.config.id,
                    "evolutionary_choice": evo.choice.config.id,
                }
            )
    return rows


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    gaps = [r["gap_pp"] for r in rows]
    return {
        "runs": len(rows),
        "mean_gap_pp": statistics.fmean(gaps),
        "max_gap_pp": max(gaps),
        "same_choice_share": sum(r["same_choice"] for r in rows) / len(rows),
        "mean_exhaustive_s": statistics.fmean(r["exhaustive_s"] for r in rows),
        "mean_evolutionary_s": statistics.fmean(r["evolutionary_s"] for r in rows),
        "mean_evolutionary_evaluated": statistics.fmean(r["evolutionary_evaluated"] for r in rows),
        "exhaustive_evaluated": rows[0]["exhaustive_evaluated"],
    }


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# Selector: evolutionary vs oracle ({result['model']})",
        "",
        f"**Pieces: {result['pieces'].upper()}** — {result['note']}",
        "",
        f"Space: {result['space_size']:.3g} configs. Oracle: {result.get('oracle', 'exhaustive')} (the columns "
        f"say 'exh'). Evolution: {result['evolution']}. Seeds: {result['seeds']}.",
        "",
        "| budget ms | seed | exhaustive acc | evolutionary acc | gap pp | same | exh s | evo s "
        "| exh evals | evo evals | feasible |",
        "|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['budget_ms']:.4f} | {r['seed']} | {r['exhaustive_accuracy']:.4f} | "
            f"{r['evolutionary_accuracy']:.4f} | {r['gap_pp']:.3f} | {'yes' if r['same_choice'] else 'no'} | "
            f"{r['exhaustive_s']:.3f} | {r['evolutionary_s']:.3f} | {r['exhaustive_evaluated']} | "
            f"{r['evolutionary_evaluated']} | {r['feasible']} |"
        )
    lines += [
        "",
        f"Mean gap {s['mean_gap_pp']:.3f} pp (max {s['max_gap_pp']:.3f} pp); same choice in "
        f"{s['same_choice_share']:.0%} of {s['runs']} runs. Mean wall time: exhaustive "
        f"{s['mean_exhaustive_s']:.3f} s ({s['exhaustive_evaluated']} configs), evolutionary "
        f"{s['mean_evolutionary_s']:.3f} s ({s['mean_evolutionary_evaluated']:.0f} configs).",
        "",
    ]
    return "\n".join(lines)


def real_pieces(
    target_name: str, model_name: str = MODEL
) -> tuple[SearchSpace, LatencyFn, AccuracyFn, list[float], str]:
    """The trained supernet, the target's latency predictor and the accuracy surrogate."""
    from deploy.accuracy.model import build_accuracy_model
    from deploy.latency.predictor import LatencyPredictor
    from deploy.latency.table import LatencyTable
    from deploy.models.checkpoint import load
    from deploy.targets import load_target

    target = load_target(target_name)
    predictor = LatencyPredictor(LatencyTable.load(target.table_path, target.name))
    supernet, info = load(model_name)
    supernet.eval()
    predictor.require(supernet.all_blocks())
    model = build_accuracy_model(supernet, info)

    def latency(config: SubnetConfig) -> tuple[float, float]:
        p = predictor.predict(supernet.blocks(config), supernet.family)
        return p.ms, p.std_ms

    lo, hi = latency(supernet.smallest())[0], latency(supernet.largest())[0]
    budgets = [lo + (hi - lo) * f for f in BUDGET_FRACTIONS]
    note = (
        f"latency predicted from the {target.name} table ({predictor.method}), accuracy from the "
        f"surrogate of checkpoint {info.sha256[:12]}"
    )
    return supernet.space(), latency, model.surrogate, budgets, note


def proxy_pieces(reason: str) -> tuple[SearchSpace, LatencyFn, AccuracyFn, list[float], str]:
    supernet = build(MODEL)  # the space needs no weights
    lo, hi = proxy_latency(supernet.smallest())[0], proxy_latency(supernet.largest())[0]
    budgets = [lo + (hi - lo) * f for f in BUDGET_FRACTIONS]
    note = (
        "PROXY latency (fixed per-width block costs) and PROXY accuracy (synthetic monotone function), "
        f"not measurements or a trained model; real pieces unavailable: {reason}"
    )
    return supernet.space(), proxy_latency, proxy_accuracy, budgets, note


def run(args: Any) -> dict[str, Any]:
    # The real pieces or, only when asked, the labelled proxy: never a silent fallback.
    if args.quick:  # a space of 24 subnets: the exhaustive oracle takes milliseconds
        args.model = "poa_vit_mnist"
    if args.proxy and args.model != MODEL:
        raise SystemExit(f"error: the proxy pieces model {MODEL} only; drop --proxy for {args.model}")
    pieces = "proxy" if args.proxy else "real"
    if args.proxy:
        space, latency_fn, accuracy_fn, budgets, note = proxy_pieces("--proxy given")
    else:
        space, latency_fn, accuracy_fn, budgets, note = real_pieces(args.target, args.model)
    seeds = list(range(1 if args.quick else args.seeds))
    oracle_samples = 2_000 if args.quick else args.oracle_samples
    budgets = budgets[len(budgets) // 2 :][:1] if args.quick else budgets  # --quick: the middle budget alone
    evolution = EvolutionParams(population=16, generations=3, parents=4) if args.quick else EvolutionParams()
    rows = run_benchmark(space, latency_fn, accuracy_fn, budgets, seeds, evolution, oracle_samples)
    if not rows:
        raise SystemExit("no budget had a feasible subnet; nothing to compare")
    exhaustive = space.size() <= EXHAUSTIVE_LIMIT
    return {
        "model": args.model,
        "oracle": "exhaustive" if exhaustive else f"best of {oracle_samples} seeded random configs",
        "pieces": pieces,
        "note": note,
        "space_size": build(args.model).space().size(),  # distinct configs (gene vectors may repeat some)
        "evolution": {k: v for k, v in evolution.__dict__.items() if k != "seed"},
        "seeds": seeds,
        "budgets_ms": budgets,
        "summary": summarize(rows),
        "rows": rows,
    }


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="host-cpu-ort", help="whose latency table to use")
    parser.add_argument("--model", default=MODEL, help="a trained variant the target serves")
    parser.add_argument("--oracle-samples", type=int, default=100_000, help="random oracle size (large spaces)")
    parser.add_argument("--proxy", action="store_true", help="use the proxy pieces even if real ones exist")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="number of seeds (0..n-1)")


COMPARISON = harness.Comparison(
    "selector_vs_oracle", __doc__, run, markdown, arguments,
    stem=lambda args: "selector_vs_oracle" if args.model == MODEL else f"selector_vs_oracle.{args.model}",
)  # fmt: skip

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
