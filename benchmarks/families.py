"""Every family a target serves, side by side: its space, its accuracy range, how well the table predicts it.

For each model the target serves (default `host-cpu-ort`: matformer_vit_mnist, poa_vit_mnist,
elastic_vit_mnist) this reads what is shipped, measures nothing, and writes
`results/families.md` and one Pareto plot per family (`results/pareto_<variant>.png`):

- the space size and the val accuracies in the shipped accuracy cache (real evaluations of the
  checkpoint on the 750 val images, not the surrogate);
- the table's per-family calibration and validation figures (`tables validate --model <variant>` writes
  them into the table);
- accuracy vs predicted latency of every evaluated subnet, with its Pareto front and the budget.

    python -m benchmarks.families [--target host-cpu-ort]
    python -m benchmarks.families --quick    # smoke test: the target's first model only
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from benchmarks import harness

log = logging.getLogger("benchmarks.families")
LEGACY_TARGET = "host-cpu-ort"  # the target of results written before the harness (a bare list of rows)


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    front: list[tuple[float, float, str]] = []
    for ms, acc, cid in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((ms, acc, cid))
    return front


def family_rows(target_name: str, quick: bool = False) -> tuple[Any, list[dict[str, Any]]]:
    from deploy.accuracy.oracle import accuracy_cache_path
    from deploy.io import read_json
    from deploy.latency.predictor import LatencyPredictor
    from deploy.latency.table import LatencyTable
    from deploy.models.checkpoint import load
    from deploy.search.space import SubnetConfig
    from deploy.targets import load_target

    target = load_target(target_name)
    table = LatencyTable.load(target.table_path, target.name)
    predictor = LatencyPredictor(table)
    rows = []
    for variant in target.served_models[: 1 if quick else None]:
        net, info = load(variant)
        cache = read_json(accuracy_cache_path(info.path))
        points = []
        for entry in cache["entries"]:
            config = SubnetConfig.from_json(entry["config"])
            points.append((predictor.predict(net.blocks(config), net.family).ms, entry["accuracy"], entry["id"]))
        cal = table.calibration
        fit = cal.families.get(net.family) if cal is not None else None
        validation = table.validations.get(net.family)
        rows.append(
            {
                "variant": variant,
                "family": net.family,
                "space_size": net.space().size(),
                "evaluated": len(points),
                "accuracy_min": min(p[1] for p in points),
                "accuracy_max": max(p[1] for p in points),
                "calibration": None if fit is None else fit.model_dump(),
                "validation": None if validation is None else validation.model_dump(),
                "points": points,
                "front": pareto(points),
            }
        )
    return target, rows


def plot(target: Any, row: dict[str, Any], path: Path) -> None:
    """Accuracy vs predicted latency of every evaluated subnet, its Pareto front and the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.packaging.report import save_figure

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ax.scatter(
        [p[0] for p in row["points"]],
        [p[1] * 100 for p in row["points"]],
        s=10,
        alpha=0.5,
        label=f"evaluated subnets ({row['evaluated']})",
    )
    front = row["front"]
    ax.plot([p[0] for p in front], [p[1] * 100 for p in front], "-o", ms=3, color="tab:orange", label="Pareto front")
    ax.axvline(target.budget_ms, color="tab:red", ls="--", label=f"{target.name} budget {target.budget_ms} ms")
    v = row["validation"]
    err = f", table error {v['median_abs_pct_error']:.1f}% median" if v else ", table not validated on this family"
    ax.set_xlabel(f"predicted latency on {target.name} (ms, measured table{err})")
    ax.set_ylabel("val accuracy (%, real evaluation)")
    ax.set_title(f"{row['variant']}: accuracy vs predicted latency")
    save_figure(fig, ax, path)


def markdown(result: harness.Result | list[dict[str, Any]]) -> str:
    if isinstance(result, list):
        result = {"target": LEGACY_TARGET, "rows": result}
    target, rows = result["target"], result["rows"]
    lines = [
        f"# Families on {target}",
        "",
        "Accuracy: the shipped accuracy cache (real val evaluations, 750 images). Latency: predicted by the "
        f"shipped `{target}` table with each family's own calibration. Validation: `tables validate "
        "--model <variant>` (random subnets not used for calibration, each measured twice, interleaved).",
        "",
        "| variant | space | evaluated | val accuracy range | calibration (Σ, per block, Σ², fit) | validated | "
        "median error | within ±5% | within ±10% | worst | repeatability |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, v = r["calibration"], r["validation"]
        cal = (
            "union fit"
            if c is None
            else f"{c['slope']:.3f}, {c['per_block_ms']:.4f} ms, {c['quad_per_ms']:.3f} /ms, {c['residual_pct']:.1f}%"
        )
        size = f"{r['space_size']:,}" if r["space_size"] < 10**7 else f"{r['space_size']:.2e}"
        if v is None:
            val = "— | — | — | — | — | —"
        else:
            val = (
                f"{v['n_samples']} subnets, {v['date']} | {v['median_abs_pct_error']:.1f}% | {v['within_5pct']:.2f} | "
                f"{v['within_10pct']:.2f} | {v['worst_pct_error']:.1f}% | {v['repeatability_pct']:.2f}%"
            )
        lines.append(
            f"| {r['variant']} | {size} | {r['evaluated']} | {r['accuracy_min']:.2%} – "
            f"{r['accuracy_max']:.2%} | {cal} | {val} |"
        )
    lines.append("")
    for r in rows:
        fastest, best = r["front"][0], r["front"][-1]
        lines += [
            f"## {r['variant']}",
            "",
            f"![{r['variant']}](pareto_{r['variant']}.png)",
            "",
            f"Pareto front: {len(r['front'])} of {r['evaluated']} subnets, from {fastest[0]:.3f} ms at "
            f"{fastest[1]:.2%} to {best[0]:.3f} ms at {best[1]:.2%}.",
            "",
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> harness.Result:
    target, rows = family_rows(args.target, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        plot(target, row, args.out / f"pareto_{row['variant']}.png")
    return {"target": target.name, "rows": [{k: v for k, v in r.items() if k != "points"} for r in rows]}


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="host-cpu-ort")


COMPARISON = harness.Comparison("families", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
