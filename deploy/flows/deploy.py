"""deploy(target) = select → extract → export (hub) → compile → validate → package into dist/<target>/."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import workspace
from deploy.accuracy.model import build_accuracy_model, describe
from deploy.accuracy.oracle import EvalOracle, user_cache_path
from deploy.backends import get_backend
from deploy.errors import ConfigFileError, NoFeasibleSubnetError
from deploy.export import hub
from deploy.export.check import build_and_check, measure_artifact
from deploy.export.parity import check_extraction
from deploy.flows.precision import choose_precision
from deploy.latency.drift import Reselect, deploy_corrections, reselect_failed, settle_measurement
from deploy.latency.table import LatencyTable
from deploy.models.checkpoint import load as load_checkpoint
from deploy.models.checkpoint import sha256_tree, task_for
from deploy.packaging.manifest import Manifest
from deploy.packaging.output import check_output_dir, staged_dir
from deploy.packaging.report import plot_pareto, write_manifest, write_report
from deploy.search.select import Selection
from deploy.targets import Target, load_target

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256  # int8 calibration / representative dataset, from the training split


@dataclass(frozen=True)
class DeployResult:
    out_dir: Path
    manifest: Manifest
    selection: Selection


def check_not_language_model(target: Target, variant: str) -> None:
    """A language model needs a target with an `lm:` section (TTFT / per-token budgets, prompt buckets)."""
    from deploy.models.spec import family_class, load_spec
    from deploy.targets import known_targets

    if not getattr(family_class(load_spec(variant).family), "language_model", False):
        return
    lm_targets = [n for n in known_targets() if load_target(n).lm is not None]
    same = [n for n in lm_targets if load_target(n).backend == target.backend]
    raise ConfigFileError(
        f"{variant} is a language model but target {target.name} has no `lm:` section (prompt buckets, TTFT and "
        f"per-token budgets); deploy it with --target {(same or lm_targets or ['<an lm target>'])[0]} "
        f"(language-model targets: {', '.join(lm_targets) or 'none'})"
    )


def deploy(
    target_name: str,
    model: str | None = None,
    *,
    out_dir: Path | None = None,
    measure: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = log.info,
) -> DeployResult:
    """Select, build, validate, measure and package. An artifact measured over the budget is never shipped:
    the deploy selects once more with the correction that measurement implies, or stops (deploy/latency/drift.py)."""
    options: dict[str, Any] = dict(out_dir=out_dir, measure=measure, cache_dir=cache_dir, progress=progress, say=say)
    target = load_target(target_name)
    if target.lm is not None:  # a language model: TTFT / per-token budgets, KV-cache artifacts (deploy/lm)
        from deploy.flows.deploy_lm import deploy_lm

        return deploy_lm(target, model, **options)  # type: ignore[return-value]
    check_not_language_model(target, model or target.model)
    try:
        return _deploy_once(target_name, model, **options)
    except Reselect as retry:
        try:
            return _deploy_once(target_name, model, **options, retry=retry)
        except NoFeasibleSubnetError as exc:
            raise reselect_failed(retry, exc, load_target(target_name).budget_ms) from None


def _deploy_once(
    target_name: str,
    model: str | None = None,
    *,
    out_dir: Path | None = None,
    measure: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = log.info,
    retry: Reselect | None = None,
) -> DeployResult:
    target: Target = load_target(target_name)
    variant = model or target.model
    out_dir = check_output_dir(out_dir or workspace.dist_dir() / target.name)  # before any work
    supernet, ckpt = load_checkpoint(variant)  # a bad spec, family or checkpoint fails before anything else
    supernet.eval()
    task = task_for(ckpt)  # the checkpoint's task, read with the data seed it was trained on
    primary = LatencyTable.load(target.table_path, target.name)
    if primary.provenance.method == "estimated":
        say(f"ESTIMATED latency table for {target.name}: {primary.provenance.estimation}")
    elif primary.provenance.method == "transferred":
        from deploy.latency.transfer_table import describe_transferred

        say(describe_transferred(primary))
    metric = task.metric
    calibration = task.calibration_array(CALIBRATION_IMAGES)  # int8: representative data, training split

    # 1. select a subnet per precision the target lists, then the (subnet, precision) pair
    accuracy = build_accuracy_model(supernet, ckpt, progress=progress)
    if len(target.search_precisions) > 1:
        say(f"selecting per precision ({', '.join(target.search_precisions)}), then measuring each artifact:")
    # drift (deploy/latency/drift.py): reference blocks timed on the device first; predictions rescaled if it moved
    corrections = (
        retry.corrections
        if retry
        else deploy_corrections(target, supernet, measure=measure, cache_dir=cache_dir, say=say)
    )
    chosen, options = choose_precision(
        target, supernet, ckpt, accuracy, calibration, cache_dir, say, corrections=corrections
    )
    target = target.at_precision(chosen.precision)
    table, selection, margin = chosen.table, chosen.selection, chosen.margin_pct
    assert table is not None and selection is not None
    choice = selection.choice
    say(
        f"selected {choice.config.id} {choice.config} at {target.precision}: predicted {choice.latency_ms:.3f} ± "
        f"{choice.latency_std_ms:.3f} ms (budget {target.budget_ms} ms − {margin:.1f}% margin), "
        f"val {metric.name} {metric.format(choice.accuracy)} ({selection.method}, {selection.evaluated} evaluated)"
    )

    # 2. extract (checked against the supernet), 3. export once through the hub
    check_extraction(supernet, choice.config)
    entry = hub.export_subnet(supernet, choice.config, ckpt.sha256, cache_dir)
    say(f"hub entry {entry.key} ({'reused' if entry.reused else 'exported'})")

    # 4. compile into a staging folder, swapped into place at the end (a failed deploy leaves the old one)
    backend = get_backend(target.backend)
    with staged_dir(out_dir) as staging:
        # 5. validate: parity and accuracy where the artifact runs here, its structure where it cannot
        artifact, check = build_and_check(
            backend, entry, target, staging, out_dir, (task, task.split("test")), say, calibration=calibration
        )
        test_cache = user_cache_path(variant, ckpt.sha256, "test")
        test_acc = EvalOracle(supernet, task, "test", test_cache, ckpt.sha256)(choice.config)
        artifact_test = check.artifact_test_accuracy
        say(
            f"test {metric.name}: torch subnet {metric.format(test_acc)}, compiled artifact "
            + (metric.format(artifact_test) if artifact_test is not None else "not measured here (it cannot run here)")
        )

        measured, not_measured = measure_artifact(backend, artifact, entry, target, check, measure, say)
        if measured is not None:
            # the sign the drift and bench lines use: measured relative to the prediction
            off = (measured.median_ms - choice.latency_ms) / choice.latency_ms * 100
            say(
                f"measured {measured.median_ms:.3f} ms (p90 {measured.p90_ms:.3f}, cv {measured.cv:.1%}, "
                f"{measured.n_runs} runs on {measured.where}): {off:+.1f}% vs the predicted {choice.latency_ms:.3f} ms"
            )

        # drift: record the measurement, refit where it disagrees, never ship over budget silently (drift.py)
        drift = settle_measurement(
            target=target, table=table, supernet=supernet, model=variant, choice=choice,
            correction=corrections.get(target.precision), corrections=corrections, measured=measured,
            not_measured=not_measured, artifact_sha256=sha256_tree(artifact.path), retry=retry, cache_dir=cache_dir,
            say=say,
        )  # fmt: skip

        manifest = write_manifest(
            staging,
            target=target,
            variant=variant,
            selection=selection,
            ckpt=ckpt,
            artifact=artifact,
            artifact_sha256=sha256_tree(artifact.path),
            table=table,
            margin_pct=margin,
            measured=measured,
            not_measured=not_measured,
            accuracy={
                **metric.to_json(),
                "val": choice.accuracy,
                "test": test_acc,
                "artifact_test": artifact_test,
                "predictor": describe(accuracy),
                "precisions": [o.to_json() for o in options],
                "task": task.describe(),
            },
            check=check,
            inputs=[
                {"name": n, "shape": list(v.shape), "dtype": str(v.dtype)} for n, v in entry.reference_inputs().items()
            ],
            hub_key=entry.key,
            versions={**entry.meta.get("versions", {}), backend.name: backend.version()},
            out_dir=out_dir,
            drift=drift,
        )
        plot_pareto(selection, target, staging / "pareto.png", table.provenance.method)
        write_report(staging, manifest, selection)
    say(f"wrote {out_dir}/ ({artifact.path.name}, manifest.json, report.md, pareto.png)")
    if check.build_on_device:
        say(f"next, on the device: {check.build_on_device}")
    return DeployResult(out_dir, manifest, selection)
