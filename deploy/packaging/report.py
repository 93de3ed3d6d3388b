"""What a deploy leaves behind: manifest.json (every number with its origin), report.md, pareto.png."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt

from deploy.io import atomic_write_text
from deploy.latency.table import LatencyTable
from deploy.packaging.manifest import (
    ImageManifest,
    LMManifest,
)
from deploy.tasks.base import Metric

if TYPE_CHECKING:
    from deploy.search.select import Selection
    from deploy.targets import Target


def table_provenance(table: LatencyTable, family: str | None = None) -> dict[str, Any]:
    """The table's provenance with its calibration and the validation figures of `family` (if it has its own)."""
    prov = table.provenance.model_dump()
    prov["calibration"] = None if table.calibration is None else table.calibration.model_dump(exclude={"samples"})
    validation = table.validation_for(family)
    prov["validation"] = None if validation is None else validation.model_dump()
    prov["validation_family"] = family if family in table.validations else None
    return prov


def plot_pareto(selection: Selection, target: Target, path: Path, method: str = "measured") -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    seen = [c for c in selection.seen if c.accuracy_source != "exact"]
    exact = [c for c in selection.seen if c.accuracy_source == "exact"]
    ax.scatter(
        [c.latency_ms for c in seen],
        [c.accuracy * 100 for c in seen],
        s=6,
        alpha=0.35,
        color="tab:gray",
        label=f"subnets, surrogate accuracy ({len(seen)} shown)",
    )
    front = sorted(selection.front, key=lambda c: c.latency_ms)
    ax.plot(
        [c.latency_ms for c in front],
        [c.accuracy * 100 for c in front],
        "-o",
        ms=3,
        color="tab:blue",
        label="Pareto front of what was seen",
    )
    ax.scatter(
        [c.latency_ms for c in exact],
        [c.accuracy * 100 for c in exact],
        s=28,
        facecolors="none",
        edgecolors="black",
        label=f"finalists, measured val accuracy ({len(exact)})",
    )
    ax.axvline(target.budget_ms, color="tab:red", ls="--", label=f"budget {target.budget_ms} ms")
    eff = selection.constraints.effective_budget_ms
    if eff < target.budget_ms:
        ax.axvline(eff, color="tab:red", ls=":", label=f"budget − margin {eff:.3f} ms")
    c = selection.choice
    ax.scatter(
        [c.latency_ms],
        [c.accuracy * 100],
        s=120,
        marker="*",
        color="tab:orange",
        zorder=5,
        label=f"chosen {c.config.id}",
    )
    origin = "measured table" if method == "measured" else f"{method.upper()} table"
    ax.set_xlabel(f"predicted latency (ms, {origin}, {target.precision})")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"{target.name}: accuracy vs predicted latency")
    save_figure(fig, ax, path)


def save_figure(fig: Any, ax: Any, path: Path) -> None:
    """Grid, legend, tight layout, then write the PNG atomically and free the figure."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _parity_row(par: dict[str, Any] | None, check: dict[str, Any]) -> str:
    if par is not None:
        return f"| parity | max abs diff {par['max_abs_diff']:.2e} (tolerance {par['tolerance']:.0e}) |"
    onnx = check["onnx_parity_onnxruntime"]
    spec = "spec matches the hub entry" if not check["spec_problems"] else f"spec problems: {check['spec_problems']}"
    next_step = f"; build on the device: `{check['build_on_device']}`" if check.get("build_on_device") else ""
    return (
        f"| parity | artifact not run here ({check['not_run_reason']}); the hub's ONNX on onnxruntime: max abs diff "
        f"{onnx['max_abs_diff']:.2e}; {spec}{next_step} |"
    )


def _precision_rows(options: list[dict[str, Any]]) -> list[str]:
    """The (subnet, precision) candidates, each with its compiled artifact's measured accuracy."""
    if len(options) < 2:
        return []

    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.2%}"

    rows = [
        "## Precisions (best subnet per precision, artifact accuracy measured)",
        "",
        "| precision | subnet | predicted ms | torch val | artifact val | drop (pp) | artifact test | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for o in options:
        drop = "—" if o["accuracy_drop_pp"] is None else f"{o['accuracy_drop_pp']:+.2f}"
        ms = "—" if o["predicted_ms"] is None else f"{o['predicted_ms']:.3f}"
        rows.append(
            f"| {o['precision']} | {o['subnet'] or '—'} | {ms} | {pct(o['torch_val_accuracy'])} | "
            f"{pct(o['artifact_val_accuracy'])} | {drop} | {pct(o['artifact_test_accuracy'])} | "
            f"{'rejected: ' + o['rejected'] if o['rejected'] else 'ok'} |"
        )
    return [*rows, ""]


def _drift_rows(drift: dict[str, Any] | None) -> list[str]:
    """The drift correction (deploy/latency/drift.py), when the deploy applied or re-selected with one."""
    if not drift or (drift["correction_factor"] == 1.0 and not drift.get("reselected")):
        return []
    row = (
        f"| drift correction | table predicted {drift['table_prediction_ms']:.3f} ms, "
        f"×{drift['correction_factor']:.3f} = {drift['corrected_prediction_ms']:.3f} ms"
    )
    if drift.get("reselected"):
        r = drift["reselected"]
        row += f"; re-selected after {r['subnet']} measured {r['measured_ms']:.3f} ms over the budget"
    return [row + " |"]


def write_report(out: Path, manifest: ImageManifest | LMManifest) -> None:
    """report.md beside the manifest: the same record, for people (one writer; a section per kind)."""
    lines = _lm_lines(manifest) if isinstance(manifest, LMManifest) else _image_lines(manifest)
    atomic_write_text(out / "report.md", "\n".join(lines))


def _image_lines(manifest: ImageManifest) -> list[str]:
    lat, acc = manifest.latency, manifest.accuracy
    prov = lat.table
    par, check = manifest.parity, manifest.validation
    fmt = Metric(acc.name, "higher" if acc.direction == "higher" else "lower", acc.percent).format
    effective = lat.budget_ms * (1 - lat.safety_margin_pct / 100)
    measured = (
        f"not measured: {lat.not_measured_reason or 'remote runner'}"
        if lat.measured_ms is None
        else f"{lat.measured_ms:.3f} ms"
    )
    if lat.measured_ms is not None and lat.measured is not None:
        err = (lat.predicted_ms - lat.measured_ms) / lat.measured_ms * 100
        measured += f" (prediction {err:+.1f}%; {lat.measured.how})"
    val = prov.get("validation")
    val_line = (
        f"{val['median_abs_pct_error']:.1f}% median abs error, {val['within_10pct']:.0%} within ±10%, "
        f"{val['within_5pct']:.0%} within ±5% on {val['n_samples']} random subnets "
        f"(repeatability of the measurement itself: {val['repeatability_pct']:.1f}%; blocks then ran "
        f"{val.get('drift_pct', 0.0):+.1f}% vs the table; {val['date']})"
        if val
        else "not validated yet (`elastic-deploy tables validate`)"
    )
    task, sel = acc.task, manifest.selection
    params = "" if manifest.subnet.params is None else f" ({manifest.subnet.params:,} params)"
    lines = [
        f"# {manifest.target}: {manifest.model} subnet {manifest.subnet.id}",
        "",
        f"Latency table: **{lat.method.upper()}** ({prov.get('backend')} {prov.get('backend_version')}, "
        f"{prov.get('threads')} threads, {prov.get('runner')} runner on {prov.get('host')}, {prov.get('date')}).",
        "",
        "| | |",
        "|---|---|",
        f"| backend | {manifest.backend} ({manifest.precision}) |",
        f"| subnet | `{manifest.subnet.config['choices']}`{params} |",
        f"| predicted latency | {lat.predicted_ms:.3f} ± {lat.predicted_std_ms:.3f} ms |",
        f"| budget | {lat.budget_ms} ms (selected under {effective:.3f} ms: "
        f"{lat.safety_margin_pct:.1f}% safety margin from the table's validation error) |",
        f"| measured latency | {measured} |",
        *_drift_rows(manifest.drift),
        f"| table accuracy | {val_line} |",
        f"| {acc.name} ({acc.direction} is better) | val {fmt(acc.val)} ({acc.val_source}), test {fmt(acc.test)}, "
        "compiled artifact "
        + (f"on test {fmt(acc.artifact_test)} |" if acc.artifact_test is not None else "not run here |"),
        f"| task | {task.get('task')} (seed {task.get('seed')}): {task.get('source', '')} {task.get('split', '')} |",
        _parity_row(par, check),
        f"| selection | {sel['method']} over {sel['space_size']:,} subnets, {sel['evaluated']:,} evaluated, "
        f"{sel['feasible']:,} feasible, {sel['elapsed_s']:.2f} s |",
        "",
        *_precision_rows(acc.precisions),
        f"![{acc.name} vs latency](pareto.png)",
        "",
        f"## Pareto front (predicted latency, val {acc.name})",
        "",
        f"| id | latency (ms) | {acc.name} | source |",
        "|---|---|---|---|",
        *(
            f"| {c['id']} | {c['latency_ms']:.3f} | {fmt(c['accuracy'])} | {c['source']} |"
            for c in manifest.selection["pareto_front"]
        ),
        "",
    ]
    return lines


def _lm_lines(m: LMManifest) -> list[str]:
    lat, acc = m.latency, m.accuracy
    measured = (
        f"{lat.measured.ttft_ms:.3f} ms TTFT, {lat.measured.ms_per_token:.3f} ms/token, "
        f"{lat.measured.tokens_per_s:.0f} tokens/s ({lat.measured.loops} loops on {lat.measured.where})"
        if lat.measured
        else f"not measured ({lat.not_measured_reason})"
    )
    na = "n/a"
    return [
        f"# {m.model} on {m.target}: slice {m.subnet.id}",
        "",
        "| | |",
        "|---|---|",
        f"| slice | {m.subnet.config['choices']} ({m.subnet.params} params) |",
        f"| artifact | `{m.artifact.dir}/` ({m.backend}, {m.artifact.cache} KV cache, max context "
        f"{m.artifact.max_context}, prompt buckets {m.artifact.prompt_buckets}) |",
        f"| predicted ({lat.method} table) | TTFT {lat.predicted_ttft_ms:.3f} ± {lat.predicted_ttft_std_ms:.3f} ms at "
        f"{lat.ttft_prompt} tokens; {lat.predicted_ms_per_token:.3f} ms/token at {lat.decode_context} of context |",
        f"| budgets | {lat.budgets} (margins {lat.margins_pct}) |",
        *(
            [f"| re-selected | {lat.reselected_from} measured over a budget; predictions rescaled {lat.corrections} |"]
            if lat.reselected_from
            else []
        ),
        f"| measured | {measured} |",
        f"| {acc.name} ({acc.direction} is better) | torch slice: val {acc.val:.4g}, test {acc.test:.4g}; on "
        f"{acc.artifact_windows or 'no'} test windows through the KV cache: artifact "
        f"{na if acc.artifact_test is None else f'{acc.artifact_test:.4g}'}, torch slice "
        f"{na if acc.torch_windows is None else f'{acc.torch_windows:.4g}'}; next-token accuracy "
        f"{na if acc.next_token_accuracy is None else f'{acc.next_token_accuracy:.1%}'} |",
        f"| parity | {m.parity['identical'] if m.parity else na} of {m.parity['prompts'] if m.parity else na} "
        f"prompts identical, max logit diff {m.parity['max_abs_logit_diff'] if m.parity else na} |",
        "",
        f'Run it: `elastic-deploy generate --dist dist/{m.target} "def main("`',
        "",
    ]
