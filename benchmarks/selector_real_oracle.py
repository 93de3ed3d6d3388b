"""The selector against an oracle over REAL accuracies, per budget from the smallest subnet to no budget at all.

benchmarks/selector_vs_oracle.py compares two searches over the same surrogate accuracy: it shows the
search loses nothing, not that the choice is the best real subnet. Here every accuracy that decides
a figure is a real evaluation on the validation split:

- real oracle: the best feasible config by real accuracy among every evaluation we have: the shipped
  and user caches, plus an exhaustive evaluation of the feasible set wherever it holds at most
  `--exhaustive-limit` configs (then the oracle is exact, column `oracle` = "exhaustive");
- selector: what a deploy on a fresh clone chooses today (surrogate screening, the shipped cache's real
  accuracies, widening re-scoring), and what it chose before (top 8 re-scored, cached real accuracies
  ignored); each sees only the shipped cache and its own evaluations, never the oracle's;
- the surrogate oracle: the best feasible config by surrogate, the figure selector_vs_oracle.md reports.

Latency is the table's prediction (no measurement: the budget decides feasibility, as in a deploy,
without margin). Budgets: the smallest subnet's predicted latency × a ladder of factors, then none.

    python -m benchmarks.selector_real_oracle [--model M ...] [--target host-cpu-ort]
    python -m benchmarks.selector_real_oracle --quick    # smoke test: poa_vit_mnist, two budgets
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from deploy.accuracy.model import AccuracyModel, build_accuracy_model
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import LatencyTable
from deploy.models.checkpoint import load
from deploy.search.select import Constraints, select
from deploy.search.space import SubnetConfig
from deploy.targets import load_target

log = logging.getLogger("benchmarks.selector_real_oracle")
MODELS = ("matformer_vit_mnist", "poa_vit_mnist", "learngene_mnist", "stitchable_mnist", "elastic_vit_mnist")
FACTORS = (1.0, 1.15, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)  # × the smallest subnet's predicted latency
UNCONSTRAINED_MS = 1e9


@dataclass(frozen=True)
class Row:
    model: str
    budget_ms: float
    feasible: int
    oracle: str  # "exhaustive" (every feasible config evaluated) or "cache" (every evaluation we have)
    oracle_id: str
    oracle_acc: float
    chosen_id: str
    chosen_acc: float
    chosen_evaluated: int
    stable: bool
    before_id: str
    before_acc: float
    surrogate_oracle_acc: float  # what the surrogate claims for its best feasible config

    @property
    def gap_pp(self) -> float:
        return (self.oracle_acc - self.chosen_acc) * 100

    @property
    def before_gap_pp(self) -> float:
        return (self.oracle_acc - self.before_acc) * 100


def run_model(model: str, target_name: str, exhaustive_limit: int, factors: tuple[float, ...] = FACTORS) -> list[Row]:
    net, ckpt = load(model)
    net.eval()
    target = load_target(target_name)
    predictor = LatencyPredictor(LatencyTable.load(target.table_path, target.name))
    accuracy = build_accuracy_model(net, ckpt, progress=False)  # the oracle's: every evaluation we have
    space = net.space()

    def as_deployed() -> AccuracyModel:
        """What a deploy on a fresh clone knows: the shipped cache, plus what it evaluates itself."""
        fresh = Path(tempfile.mkdtemp(prefix="selector-")) / "accuracy.json"
        return build_accuracy_model(net, ckpt, progress=False, cache_path=fresh)

    memo: dict[str, float] = {}

    def latency(config: SubnetConfig) -> tuple[float, float]:
        if config.id not in memo:
            memo[config.id] = predictor.predict(net.blocks(config), net.family).ms
        return memo[config.id], 0.0

    smallest = latency(net.smallest())[0]
    rows = []
    for budget in [smallest * f for f in factors] + [UNCONSTRAINED_MS]:
        constraints = Constraints(budget_ms=budget)
        # Each selector sees only what a deploy would (never the oracle's evaluations below).
        old = as_deployed()  # before the widening (issue 14): top 8 guesses re-scored, cache ignored
        before = select(space, latency, old.surrogate, constraints, exact_accuracy=old.exact, max_finalists=8)
        new = as_deployed()
        now = select(space, latency, new.surrogate, constraints, exact_accuracy=new.exact, known_accuracy=new.known)
        surrogate_best = select(space, latency, new.surrogate, constraints).choice
        small = space.size() <= 50_000
        feasible = [c for c in space.enumerate() if latency(c)[0] <= budget] if small else []
        exhaustive = small and len(feasible) <= exhaustive_limit
        # The oracle: every feasible config where that is affordable, else every evaluation anyone made.
        accuracy.oracle.evaluate_many(
            [
                *(feasible if exhaustive else []),
                *(c for c, _ in old.oracle.entries()),
                *(c for c, _ in new.oracle.entries()),
            ],
            progress=False,
        )
        kind = "exhaustive" if exhaustive else "cache"
        real = [(acc, c) for c, acc in accuracy.oracle.entries() if latency(c)[0] <= budget]
        oracle_acc, oracle_cfg = max(real, key=lambda t: (t[0], -latency(t[1])[0], t[1].id))
        assert now.rescoring is not None
        rows.append(
            Row(
                model=model,
                budget_ms=budget,
                feasible=len(feasible) if small else now.feasible,
                oracle=kind,
                oracle_id=oracle_cfg.id,
                oracle_acc=oracle_acc,
                chosen_id=now.choice.config.id,
                chosen_acc=now.choice.accuracy,
                chosen_evaluated=now.rescoring.evaluated,
                stable=now.rescoring.stable,
                before_id=before.choice.config.id,
                before_acc=before.choice.accuracy,
                surrogate_oracle_acc=surrogate_best.accuracy,
            )
        )
        log.info("%s %.4g ms: oracle %.4f (%s), chosen %.4f, before %.4f", model, budget, oracle_acc, kind,
                 now.choice.accuracy, before.choice.accuracy)  # fmt: skip
    return rows


def markdown(result: harness.Result) -> str:
    meta, rows = result["meta"], result["rows"]
    date, machine = harness.describe(result)
    lines = [
        "# Selector vs an oracle over real accuracies",
        "",
        f"{date}, {machine}. Latency: the `{meta['target']}` table's predictions (no margin). "
        "Accuracy: real evaluations on the validation split. `oracle`: *exhaustive* = every feasible config "
        "evaluated; *cache* = the best of every evaluation we have (the space is too large to evaluate). "
        "`now`: today's selector (real accuracies known to the cache compete; re-scoring widens until stable); "
        "`before`: top 8 surrogate guesses re-scored, cache ignored. `surrogate claims`: what the surrogate "
        "oracle of [selector_vs_oracle.md](selector_vs_oracle.md) reports for the same budget.",
        "",
        *harness.table(
            ["model", "budget ms", "feasible", "oracle", "oracle acc", "now acc", "gap pp", "real evals", "stable",
             "before acc", "before gap pp", "surrogate claims"],
            ([r["model"], "none" if r["budget_ms"] >= UNCONSTRAINED_MS else f"{r['budget_ms']:.3f}", r["feasible"],
              r["oracle"], f"{r['oracle_acc']:.2%}", f"{r['chosen_acc']:.2%}", f"{r['gap_pp']:.2f}",
              r["chosen_evaluated"], "yes" if r["stable"] else "no", f"{r['before_acc']:.2%}",
              f"{r['before_gap_pp']:.2f}", f"{r['surrogate_oracle_acc']:.2%}"] for r in rows),
            "lrrlrrrrlrrr",
        ),
        "",
    ]  # fmt: skip
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    summary = []
    for model, rs in by_model.items():
        now, before = [r["gap_pp"] for r in rs], [r["before_gap_pp"] for r in rs]
        summary.append([model, len(rs), f"{sum(now) / len(now):.2f}", f"{max(now):.2f}",
                        f"{sum(before) / len(before):.2f}", f"{max(before):.2f}"])  # fmt: skip
    headers = ["model", "budgets", "mean gap now pp", "max gap now pp", "mean gap before pp", "max gap before pp"]
    return "\n".join([*lines, *harness.table(headers, summary, "lrrrrr")]) + "\n"


def run(args: argparse.Namespace) -> harness.Result:
    logging.getLogger("deploy").setLevel(logging.WARNING)
    models = ("poa_vit_mnist",) if args.quick else (args.model or MODELS)
    factors = FACTORS[:1] if args.quick else FACTORS
    rows = [row for m in models for row in run_model(m, args.target, args.exhaustive_limit, factors)]
    meta = {"target": args.target, "exhaustive_limit": args.exhaustive_limit, "factors": factors}
    return {"meta": meta, "rows": [{**r.__dict__, "gap_pp": r.gap_pp, "before_gap_pp": r.before_gap_pp} for r in rows]}


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", action="append", help="model variant(s); default: every shipped family")
    parser.add_argument("--target", default="host-cpu-ort")
    parser.add_argument("--exhaustive-limit", type=int, default=400, help="evaluate the feasible set up to this size")


COMPARISON = harness.Comparison("selector_real_oracle", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
