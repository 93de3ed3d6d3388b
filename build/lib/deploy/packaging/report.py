"""What a deploy leaves behind: manifest.json (every number with its origin), report.md, pareto.png."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: CI and servers have no display
import matplotlib.pyplot as plt

from deploy.io import atomic_write_text
from deploy.latency.table import LatencyTable, now_iso
from deploy.packaging.manifest import (
    ArtifactRecord,
    LatencyRecord,
    Manifest,
    MeasuredRecord,
    MetricRecord,
    SubnetRecord,
    TensorSpec,
)
from deploy.tasks.base import Metric

if TYPE_CHECKING:
    from deploy.backends.base import Artifact
    from deploy.export.check import ArtifactCheck
    from deploy.latency.stats import LatencyStats
    from deploy.models.checkpoint import CheckpointInfo
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


def write_manifest(
    out: Path,
    *,
    target: Target,
    variant: str,
    selection: Selection,
    ckpt: CheckpointInfo,
    artifact: Artifact,
    artifact_sha256: str,
    table: LatencyTable,
    margin_pct: float,
    measured: LatencyStats | None,
    not_measured: str | None,
    accuracy: dict[str, Any],
    check: ArtifactCheck,
    inputs: list[dict[str, Any]],
    hub_key: str,
    versions: dict[str, str],
    out_dir: Path,
    drift: dict[str, Any] | None = None,
) -> Manifest:
    """manifest.json in `out`; `accuracy` holds the task's metric record (MetricRecord's fields), `drift` the
    drift correction and measurement (deploy/latency/drift.py)."""
    choice = selection.choice
    prov = table.provenance
    how = None
    if measured is not None:
        how = MeasuredRecord(
            stats=measured.to_json(),
            how=f"median of {measured.n_runs} timed runs in {len(measured.round_medians_ms)} rounds after "
            f"warm-up, {target.threads} threads, on {measured.where}",
        )
    spec = ckpt.spec.model_dump(mode="json", exclude={"path"}) if ckpt.spec is not None else {"name": variant}
    manifest = Manifest(
        target=target.name,
        device=target.device.name,
        backend=target.backend,
        precision=target.precision,
        model=variant,
        model_spec=spec,
        subnet=SubnetRecord(id=choice.config.id, config=choice.config.to_json(), params=choice.params),
        checkpoint_sha256=ckpt.sha256,
        artifact=ArtifactRecord(
            path=str(out_dir / artifact.path.name),
            sha256=artifact_sha256,
            format=artifact.backend,
            backend=artifact.backend,
            status=check.status,
            inputs=[TensorSpec(**i) for i in inputs],
            output_names=list(artifact.output_names),
            options=dict(artifact.options),
        ),
        hub_entry=hub_key,
        latency=LatencyRecord(
            predicted_ms=choice.latency_ms,
            predicted_std_ms=choice.latency_std_ms,
            prediction=f"sum of {prov.method} block latencies from the {target.table_file} table, calibrated on "
            "whole subnets",
            measured_ms=None if measured is None else measured.median_ms,
            not_measured_reason=not_measured,
            measured=how,
            budget_ms=target.budget_ms,
            safety_margin_pct=margin_pct,
            method=prov.method,
            table=table_provenance(table, choice.config.family),
        ),
        accuracy=MetricRecord(**accuracy, val_source=choice.accuracy_source),
        parity=check.to_json()["parity"],
        validation=check.to_json(),
        selection={
            "method": selection.method,
            "space_size": selection.space_size,
            "evaluated": selection.evaluated,
            "feasible": selection.feasible,
            "elapsed_s": selection.elapsed_s,
            "direction": selection.direction,
            # how the choice was confirmed with real scores (None: the surrogate alone decided)
            "rescoring": None if selection.rescoring is None else selection.rescoring.to_json(),
            "pareto_front": [
                {"id": c.config.id, "latency_ms": c.latency_ms, "accuracy": c.accuracy, "source": c.accuracy_source}
                for c in selection.front
            ],
        },
        versions=versions,
        created=now_iso(),
        drift=drift,  # deploy/latency/drift.py: table prediction, drift correction, measurement, observation
    )
    manifest.save(out)
    return manifest


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


def write_report(out: Path, manifest: Manifest, selection: Selection) -> None:
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
    task = acc.task
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
        f"| selection | {selection.method} over {selection.space_size:,} subnets, {selection.evaluated:,} evaluated, "
        f"{selection.feasible:,} feasible, {selection.elapsed_s:.2f} s |",
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
    atomic_write_text(out / "report.md", "\n".join(lines))
