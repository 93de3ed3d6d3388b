"""SN-Net and TLEG on this machine: accuracy and measured latency of every subnet, side by side.

Stitchable (`stitchable_mnist`): every anchor alone and every stitch position, in both directions. SN-Net
claims a smooth accuracy/latency curve between the anchors; the plot shows whether ours is one.
Learngene (`learngene_mnist`): every descendant depth read off the learngene without training, and the
fine-tuned descendant (`learngene_mnist_tuned`, `make train MODEL=learngene_mnist DEPTH=L`).

Accuracy: the shipped checkpoints evaluated on the 750 val and 750 test images. Latency: every subnet
exported, compiled and MEASURED on the target (default host-cpu-ort-1t, ONNX Runtime, 1 thread) in one
interleaved run (all subnets in every round), next to the table's PREDICTION for it.
Writes results/stitch_and_learngene.{md,json} and results/{stitchable,learngene}_curve.png.

    python -m benchmarks.stitch_and_learngene [--target host-cpu-ort-1t]
    python -m benchmarks.stitch_and_learngene --quick    # smoke test: one subnet of each family, short protocol
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from benchmarks import harness

log = logging.getLogger("benchmarks.stitch_and_learngene")
MODELS = ("stitchable_mnist", "learngene_mnist", "learngene_mnist_tuned")


def label(config: Any) -> str:
    c = config.as_dict()
    if config.family == "stitchable":
        return f"anchor {c['front']}" if c["front"] == c["back"] else f"{c['front']}→{c['back']} @{c['position']}"
    return f"depth {c['depth']}"


def measure_all(target_name: str, quick: bool = False) -> tuple[Any, list[dict[str, Any]]]:
    from deploy.accuracy.oracle import evaluate
    from deploy.latency.build import subnet_identity
    from deploy.latency.predictor import LatencyPredictor
    from deploy.latency.session import MeasureSession
    from deploy.latency.table import LatencyTable
    from deploy.models.checkpoint import load
    from deploy.targets import load_target
    from deploy.tasks.mnist import MnistTask

    target = load_target(target_name)
    target = harness.subnets.quick_target(target) if quick else target
    predictor = LatencyPredictor(LatencyTable.load(target.table_path, target.name))
    task = MnistTask(0)
    if quick:  # 100 val images stand for both splits: the figures of a smoke test mean nothing
        from deploy.tasks.base import ArrayTask
        from deploy.tasks.mnist import load_splits

        val = load_splits(0).val
        task = ArrayTask.of(val.x[:100], val.y[:100])
    session = MeasureSession.open(target)
    rows, items = [], []
    for variant in MODELS[:2] if quick else MODELS:
        net, _info = load(variant)
        for config in list(net.space().enumerate())[: 1 if quick else None]:
            rows.append(
                {
                    "model": variant,
                    "config": config.to_json(),
                    "label": label(config),
                    "params": net.param_count(config),
                    "val": evaluate(net, task, "val", config),
                    "test": evaluate(net, task, "test", config),
                    "predicted_ms": predictor.predict(net.blocks(config), net.family).ms,
                }
            )
            items.append(session.compile(net.extract(config), net.example_inputs()[0], subnet_identity(net, config)))
    log.info("measuring %d subnets interleaved on %s", len(items), target.name)
    for row, stats in zip(rows, session.measure(items), strict=True):
        row["measured_ms"], row["measured_cv"] = stats.median_ms, stats.cv
    return target, rows


def plot(rows: list[dict[str, Any]], model: str, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deploy.packaging.report import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    mine = [r for r in rows if r["model"] == model]
    if model == "stitchable_mnist":
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in mine:
            c = r["config"]["choices"]
            key = "anchors" if c["front"] == c["back"] else f"stitch {c['front']}→{c['back']}"
            groups.setdefault(key, []).append(r)
        for key, group in sorted(groups.items()):
            group.sort(key=lambda r: r["measured_ms"])
            style = {"marker": "*", "s": 160, "zorder": 3} if key == "anchors" else {"marker": "o", "s": 30}
            ax.scatter([r["measured_ms"] for r in group], [100 * r["test"] for r in group], label=key, **style)
            if key != "anchors":
                ax.plot([r["measured_ms"] for r in group], [100 * r["test"] for r in group], alpha=0.4)
    else:
        mine.sort(key=lambda r: r["config"]["choices"]["depth"])
        xs, ys = [r["measured_ms"] for r in mine], [100 * r["test"] for r in mine]
        ax.plot(xs, ys, "o-", label="descendants, no training")
        for r in mine:
            ax.annotate(str(r["config"]["choices"]["depth"]), (r["measured_ms"], 100 * r["test"]), fontsize=7)
        for r in (r for r in rows if r["model"] == "learngene_mnist_tuned"):
            tuned = f"fine-tuned {r['label']}"
            ax.scatter([r["measured_ms"]], [100 * r["test"]], marker="*", s=160, color="C3", label=tuned)
    ax.set_xlabel("measured latency (ms, median)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    save_figure(fig, ax, path)


def markdown(result: harness.Result) -> str:
    rows = result["rows"]
    description = result.get("description") or describe_target(result["target"])
    out = [
        "# Stitchable (SN-Net) and learngene (TLEG) subnets: accuracy and measured latency",
        "",
        f"Target `{result['target']}` ({description}); latency MEASURED here, every subnet exported, compiled and "
        "run in one interleaved measurement (median of the runs; CV = spread of the round medians); "
        "`predicted` is the shipped table's prediction. "
        "Accuracy: shipped checkpoints on the 750 val and 750 test images.",
        "",
        "![stitchable](stitchable_curve.png)",
        "",
        "![learngene](learngene_curve.png)",
        "",
        "| model | subnet | params | val % | test % | measured ms | CV | predicted ms | error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["model"], r["measured_ms"])):
        err = (r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] * 100
        out.append(
            f"| {r['model']} | {r['label']} | {r['params']:,} | {100 * r['val']:.2f} | {100 * r['test']:.2f} | "
            f"{r['measured_ms']:.3f} | {100 * r['measured_cv']:.1f}% | {r['predicted_ms']:.3f} | {err:+.1f}% |"
        )
    return "\n".join(out) + "\n"


def describe_target(name: str) -> str:
    """A result written before the harness names its target only: its description from the target file."""
    from deploy.targets import load_target

    return load_target(name).description


def run(args: argparse.Namespace) -> harness.Result:
    target, rows = measure_all(args.target, args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(rows, "stitchable_mnist", args.out / "stitchable_curve.png", f"SN-Net stitches on {target.name}")
    plot(rows, "learngene_mnist", args.out / "learngene_curve.png", f"TLEG descendants on {target.name}")
    return {"target": target.name, "description": target.description, "rows": rows}


def arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="host-cpu-ort-1t")


COMPARISON = harness.Comparison("stitch_and_learngene", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
