"""deploy(target) = select → extract → export (hub) → compile → validate → package into dist/<target>/."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy import hub, paths
from deploy.accuracy import EvalOracle, build_accuracy_model, describe, user_cache_path
from deploy.artifact_check import check_artifact, package_onnx
from deploy.backends import get_backend
from deploy.checkpoint import load as load_checkpoint
from deploy.checkpoint import sha256_tree
from deploy.data import load_splits
from deploy.errors import BackendUnavailableError
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import LatencyTable
from deploy.report import plot_pareto, write_manifest, write_report
from deploy.runners import get_runner
from deploy.select import Constraints, Selection, select
from deploy.space import SubnetConfig
from deploy.targets import Target, load_target

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 256  # int8 calibration / representative dataset, from the training split


@dataclass(frozen=True)
class DeployResult:
    out_dir: Path
    manifest: dict[str, Any]
    selection: Selection


def safety_margin_pct(table: LatencyTable) -> float:
    """Budget margin from the table's out-of-sample error (p90), or the calibration fit if unvalidated."""
    if table.validation is not None:
        return table.validation.p90_abs_pct_error
    source_p90 = (table.provenance.estimate or {}).get("source_validation_p90_pct")
    if source_p90 is not None:  # estimated: the source's own error; the device factor's error is systematic
        return float(source_p90)
    if table.calibration is not None:
        return 2 * table.calibration.residual_pct
    return 25.0


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
    target: Target = load_target(target_name)
    variant = model or target.model
    out_dir = out_dir or paths.dist_dir() / target.name
    table = LatencyTable.load(target.table_path, target.name)
    if table.provenance.method == "estimated":
        say(f"ESTIMATED latency table for {target.name}: {table.provenance.estimation}")
    supernet, ckpt = load_checkpoint(variant)
    supernet.eval()
    predictor = LatencyPredictor(table)
    predictor.require(supernet.all_blocks())

    # 1. select
    accuracy = build_accuracy_model(supernet, ckpt, progress=progress)
    margin = safety_margin_pct(table)
    constraints = Constraints(budget_ms=target.budget_ms, margin_pct=margin, max_params=target.max_params)

    def latency(config: SubnetConfig) -> tuple[float, float]:
        p = predictor.predict(supernet.blocks(config))
        return p.ms, p.std_ms

    selection = select(
        supernet.space(),
        latency,
        accuracy.surrogate,
        constraints,
        params=supernet.param_count,
        exact_accuracy=accuracy.exact,
    )
    choice = selection.choice
    say(
        f"selected {choice.config.id} {choice.config}: predicted {choice.latency_ms:.3f} ± "
        f"{choice.latency_std_ms:.3f} ms (budget {target.budget_ms} ms − {margin:.1f}% margin), "
        f"val accuracy {choice.accuracy:.2%} ({selection.method}, {selection.evaluated} evaluated)"
    )

    # 2. extract, 3. export once through the hub
    subnet = supernet.extract(choice.config)
    entry = hub.get_or_export(
        subnet, supernet.example_input(), {"subnet": choice.config.id, "checkpoint": ckpt.sha256}, cache_dir=cache_dir
    )
    say(f"hub entry {entry.key} ({'reused' if entry.reused else 'exported'})")

    # 4. compile into a staging folder, swapped into place at the end (a failed deploy leaves the old one)
    backend = get_backend(target.backend)
    splits = load_splits()
    calibration = splits.train.x[:CALIBRATION_IMAGES].numpy()  # int8: representative data, training split
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out_dir.parent))
    try:
        deferred = build_command = None
        try:
            artifact = backend.compile(entry, target, staging, calibration=calibration)
        except BackendUnavailableError as exc:
            deferred = str(exc)
            artifact = package_onnx(entry, staging)
            build_command = f"elastic-deploy compile --target {target.name} {out_dir / artifact.path.name}"
            say(f"{backend.name} cannot build here ({deferred.rstrip('.')}); packaged the hub's ONNX instead")

        # 5. validate: parity and accuracy of the artifact where it runs, its structure where it cannot
        check = check_artifact(
            backend,
            artifact,
            entry,
            target,
            splits.test,
            deferred_reason=deferred,
            build_command=build_command,
            work_dir=staging / ".onnx-check",
        )
        shutil.rmtree(staging / ".onnx-check", ignore_errors=True)
        if check.parity is not None:
            say(f"parity: max abs diff {check.parity.max_abs_diff:.2e} ≤ {target.parity_atol:.0e}")
        else:
            say(f"not run here: {check.not_run_reason}")
            say(
                f"checked instead: the hub's ONNX on onnxruntime matches torch (max abs diff "
                f"{check.onnx_parity.max_abs_diff:.2e}); {artifact.path.name} spec "  # type: ignore[union-attr]
                + ("matches the hub entry" if not check.spec_problems else f"problems: {check.spec_problems}")
            )
        test_cache = user_cache_path(variant, ckpt.sha256, "test")
        test_acc = EvalOracle(supernet, splits.test.x, splits.test.y, test_cache, ckpt.sha256, "test")(choice.config)
        artifact_test = check.artifact_test_accuracy
        say(
            f"test accuracy: torch subnet {test_acc:.2%}, compiled artifact "
            + (f"{artifact_test:.2%}" if artifact_test is not None else "not measured here (it cannot run here)")
        )

        measured = None
        not_measured = None
        if not measure:
            not_measured = "--no-measure"
        elif check.ran_here or target.runner.kind != "local":
            runner = get_runner(target.runner)
            measured = runner.benchmark(backend, artifact, entry.reference_inputs(), target.measurement.protocol())
            err = (choice.latency_ms - measured.median_ms) / measured.median_ms * 100
            say(
                f"measured {measured.median_ms:.3f} ms (p90 {measured.p90_ms:.3f}, cv {measured.cv:.1%}, "
                f"{measured.n_runs} runs on {measured.where}); prediction off by {err:+.1f}%"
            )
        else:
            not_measured = f"the artifact cannot run on this machine ({check.not_run_reason})"

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
                "val": choice.accuracy,
                "test": test_acc,
                "artifact_test": artifact_test,
                "predictor": describe(accuracy),
            },
            check=check,
            hub_key=entry.key,
            versions={**entry.meta.get("versions", {}), backend.name: backend.version()},
            out_dir=out_dir,
        )
        plot_pareto(selection, target, staging / "pareto.png")
        write_report(staging, manifest, selection)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    say(f"wrote {out_dir}/ ({artifact.path.name}, manifest.json, report.md, pareto.png)")
    if build_command:
        say(f"next, on the device: {build_command}")
    return DeployResult(out_dir, manifest, selection)
