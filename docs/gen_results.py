"""Generate the site's results pages and CLI reference from the data, so that they cannot drift from it.

- `docs/results/<name>.md`: every `benchmarks/results/*.json`, rendered by its comparison's own `markdown()`
  (the same renderer the benchmark ran), headed by the date, the machine and the result file; the plots
  beside the JSON are copied along;
- `docs/results/transfer.md`: the TRANSFERRED tables under `benchmarks/results/transfer/`, when there are any;
- `docs/results/validation.md`: every `latency_tables/*.validation.json` as one row, and a predicted vs
  measured scatter plot per target;
- `docs/results/index.md`: the list of them;
- `docs/reference/cli.md`: the help of every command, generated from the typer app.

Run by the MkDocs hook (`docs/hooks.py`) before every build, or alone: `python docs/gen_results.py`.
The generated files are git-ignored.
"""

from __future__ import annotations

import importlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RESULTS = ROOT / "benchmarks" / "results"
TABLES = ROOT / "latency_tables"
TRANSFER_COLUMNS = ("file", "target", "device", "measured on", "date", "transfer model", "subnets measured",
                    "held-out median", "held-out p90", "within ±10%", "repeatability",
                    "validated after: median (table alone)", "±10% (table alone)", "its repeatability")  # fmt: skip
VALIDATION_COLUMNS = ("file", "target", "variant", "validated", "machine", "subnets", "median error", "±5%", "±10%",
                      "worst", "repeatability")  # fmt: skip


def _import_path() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def benchmark_pages(out: Path) -> list[tuple[str, str, str]]:
    """One page per result JSON; returns (page, title, date and machine) rows for the index."""
    from benchmarks.harness import describe

    index = []
    for path in sorted(RESULTS.glob("*.json")):
        module = importlib.import_module(f"benchmarks.{path.stem.split('.')[0]}")
        result = json.loads(path.read_text())
        text = module.markdown(result)
        title, _, rest = text.partition("\n")
        date, machine = describe(result)
        source = f"*Produced {date} on {machine}. Data: `benchmarks/results/{path.name}`; rendered from it by "
        source += f"`benchmarks/{module.__name__.split('.')[-1]}.py`.*"
        (out / f"{path.stem}.md").write_text(f"{title}\n\n{source}\n{rest}")
        index.append((f"{path.stem}.md", title.lstrip("# "), f"{date}, {machine}"))
    for image in RESULTS.glob("*.png"):
        shutil.copy2(image, out / image.name)
    return index


def transfer_page(out: Path) -> tuple[str, str, str] | None:
    """The TRANSFERRED tables written under benchmarks/results/transfer/ (`tables transfer --out`)."""
    folder = RESULTS / "transfer"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        return None
    from benchmarks.harness import table

    rows = []
    for path in files:
        # `tables validate --json validation/<stem>.validation.json`, run right after the transfer, if it was
        checked = folder / "validation" / f"{path.stem}.validation.json"
        after = json.loads(checked.read_text()) if checked.is_file() else {}
        alone = after.get("uncorrected") or after
        prov = json.loads(path.read_text()).get("provenance", {})
        record = prov.get("transfer") or {}
        held = record.get("heldout") or {}
        rows.append([f"`{path.name}`", prov.get("target", "?"), prov.get("device", "?"), record.get("where", "?"),
                     record.get("date", prov.get("date", "?")), record.get("model", "?"), record.get("n_subnets", "?"),
                     _pct(held.get("median_abs_pct")), _pct(held.get("p90_abs_pct")),
                     held.get("within_10pct", "?"), _pct(record.get("repeatability_pct")),
                     _pct(alone.get("median_abs_pct_error")), alone.get("within_10pct", "?"),
                     _pct(after.get("repeatability_pct"))])  # fmt: skip
    lines = [
        "# Transferred tables",
        "",
        "Tables written by `elastic-deploy tables transfer --out benchmarks/results/transfer/…`: measured source "
        "tables mapped onto a device from N whole subnets measured there, with their held-out error; then, where "
        "it ran, `tables validate` on subnets the transfer did not measure (`validation/<file>.validation.json`; "
        "the table's own predictions, before any drift correction). Measured tables of the same targets, validated "
        "in the same window, are under `validation/*.measured.validation.json`.",
        "",
        *table(TRANSFER_COLUMNS, rows),
        "",
    ]
    (out / "transfer.md").write_text("\n".join(lines))
    return ("transfer.md", "Transferred tables", f"{len(files)} file(s)")


def _pct(value: Any) -> str:
    return f"{value:.2f}%" if isinstance(value, float) else "?"


LM_REGIMES = (  # regime, variant shown, LoopRow fields: predicted, measured, measured again
    ("prefill", "TTFT", ("predicted_ttft_ms", "measured_ttft_ms", "measured_ttft_again_ms")),
    ("decode", "ms/token", ("predicted_ms_per_token", "measured_ms_per_token", "measured_ms_per_token_again")),
)


def lm_regimes(v: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(variant, figures, points for the plot) of an LM validation: TTFT (prefill) and ms/token (decode)."""
    out = []
    for regime, variant, (pred, a, b) in LM_REGIMES:
        points = [{"measured_ms": (r[a] + r[b]) / 2, "predicted_ms": r[pred]} for r in v["rows"]]
        out.append((variant, v[regime], {"median_abs_pct_error": v[regime]["median_abs_pct_error"], "rows": points}))
    return out


def validation_page(out: Path) -> tuple[str, str, str]:
    """Every validation file as a row, and a predicted vs measured plot per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.harness import table

    files = sorted(TABLES.glob("*.validation.json"))
    by_target: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    rows = []
    for path in files:
        v = json.loads(path.read_text())
        if "prefill" in v:  # a language model's: whole generation loops, one row per regime (deploy/lm/validate.py)
            for variant, f, runs in lm_regimes(v):
                by_target.setdefault(v["target"], []).append((variant, runs))
                rows.append([f"`{path.name}`", v["target"], variant, v["date"], v["host"], v["samples"],
                             f"{f['median_abs_pct_error']:.1f}%", f"{f['within_5pct']:.2f}", f"{f['within_10pct']:.2f}",
                             f"{f['worst_pct_error']:.1f}%", f"{f['repeatability_pct']:.2f}%"])  # fmt: skip
            continue
        variant = path.name.removesuffix(".validation.json").removeprefix(v["target"]).strip(".") or "default"
        by_target.setdefault(v["target"], []).append((variant, v))
        rows.append([f"`{path.name}`", v["target"], variant, v["date"], v["host"], v["samples"],
                     f"{v['median_abs_pct_error']:.1f}%", f"{v['within_5pct']:.2f}", f"{v['within_10pct']:.2f}",
                     f"{v['worst_pct_error']:.1f}%", f"{v['repeatability_pct']:.2f}%"])  # fmt: skip
    lines = [
        "# Latency tables: prediction vs measurement",
        "",
        "Every `latency_tables/*.validation.json`: random subnets the calibration never saw, measured end to end "
        "twice each beside the table's prediction (`make validate-tables`). *variant* is the model (for tables "
        "serving several families), the precision, or for a language model TTFT and ms/token (whole generation "
        "loops, `deploy/lm/validate.py`). How the tables are measured and what limits them: "
        "[Targets and latency tables](../targets-and-tables.md).",
        "",
        *table(VALIDATION_COLUMNS, rows, "lllllrrrrrr"),
        "",
    ]
    for target, runs in sorted(by_target.items()):
        fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=100)
        high = 0.0
        for variant, v in runs:
            xs = [r["measured_ms"] for r in v["rows"]]
            ys = [r["predicted_ms"] for r in v["rows"]]
            high = max(high, *xs, *ys)
            ax.scatter(xs, ys, s=14, alpha=0.7, label=f"{variant} ({v['median_abs_pct_error']:.1f}% median)")
        ax.plot([0, high], [0, high], color="grey", lw=1)
        for f in (0.9, 1.1):
            ax.plot([0, high], [0, high * f], color="grey", lw=0.5, ls="--")
        ax.set_xlabel("measured (ms, median)")
        ax.set_ylabel("predicted by the table (ms)")
        ax.set_title(f"{target}: predicted vs measured (±10% dashed)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"validation_{target}.png")
        plt.close(fig)
        lines += [f"## {target}", "", f"![{target}](validation_{target}.png)", ""]
    (out / "validation.md").write_text("\n".join(lines))
    return ("validation.md", "Latency tables: prediction vs measurement", f"{len(files)} validation files")


def cli_page(path: Path) -> None:
    """The help of every command, from the typer app itself."""
    import typer
    from typer.cli import get_docs_for_click

    from deploy.cli import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="elastic-deploy")
    text = get_docs_for_click(obj=command, ctx=ctx, name="elastic-deploy", title="CLI reference")
    intro = (
        "Generated from the typer app (`deploy/cli/`) at every documentation build. `python -m deploy …` is the "
        "same as `elastic-deploy …`; the `make` targets that wrap these commands are in "
        "[Getting started](../getting-started.md#commands).\n\n"
    )
    title, _, rest = text.partition("\n")
    path.write_text(f"{title}\n\n{intro}{rest}")


def generate() -> None:
    _import_path()
    out = DOCS / "results"
    out.mkdir(parents=True, exist_ok=True)
    pages = [validation_page(out), *benchmark_pages(out)]
    transfer = transfer_page(out)
    if transfer:
        pages.append(transfer)
    from benchmarks.harness import table

    index = [
        "# Results",
        "",
        "Generated from the JSON files at every build (`make docs`), so these pages cannot drift from the data. "
        "Each page says when and on which machine its figures were produced and which file holds them. "
        "Absolute latencies hold only for that machine and moment; ratios measured side by side in one run "
        "are what carries over.",
        "",
        *table(["page", "what", "produced"], ([f"[{p}]({p})", title, when] for p, title, when in pages)),
        "",
    ]
    (out / "index.md").write_text("\n".join(index))
    (DOCS / "reference").mkdir(exist_ok=True)
    cli_page(DOCS / "reference" / "cli.md")


if __name__ == "__main__":
    generate()
    print(f"wrote {DOCS / 'results'} and {DOCS / 'reference' / 'cli.md'}")
