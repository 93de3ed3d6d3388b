"""deploy(target) = select → extract → export (hub) → compile → validate → package into dist/<target>/."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deploy import hub, paths
from deploy.accuracy import EvalOracle, build_accuracy_model, describe, user_cache_path
from deploy.backends import get_backend
from deploy.checkpoint import load as load_checkpoint
from deploy.checkpoint import sha256_file
from deploy.data import load_splits
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import LatencyTable
from deploy.parity import check_parity
from deploy.report import plot_pareto, write_manifest, write_report
from deploy.runners import get_runner
from deploy.select import Constraints, Selection, select
from deploy.space import SubnetConfig
from deploy.targets import Target, load_target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeployResult:
    out_dir: Path
    manifest: dict[str, Any]
    selection: Selection


def safety_margin_pct(table: LatencyTable) -> float:
    """Budget margin from the table's out-of-sample error (p90), or the calibration fit if unvalidated."""
    if table.validation is not None:
        return table.validation.p90_abs_pct_error
    if table.calibration is not None:
        return 2 * table.calibration.residual_pct
    return 25.0


def artifact_accuracy(run: Callable[[np.ndarray], np.ndarray], x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy of the compiled artifact itself, one image at a time (as it is deployed: batch 1)."""
    correct = 0
    for i in range(len(x)):
        logits = run(x[i : i + 1].numpy())
        correct += int(np.argmax(logits) == int(y[i]))
    return correct / len(x)


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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=out_dir.parent))
    try:
        artifact = backend.compile(entry, target, staging)

        # 5. validate: parity against the hub references, then accuracy of the artifact itself
        refs_in, refs_out = entry.reference_inputs(), entry.reference_outputs()
        outputs = backend.run(artifact, refs_in)
        parity = check_parity(outputs, refs_out, target.parity_atol)
        parity.raise_if_failed(f"{backend.name} artifact of {choice.config.id}")
        say(f"parity: max abs diff {parity.max_abs_diff:.2e} ≤ {target.parity_atol:.0e}")

        splits = load_splits()
        input_name = artifact.input_names[0]
        artifact_test = artifact_accuracy(
            lambda x: backend.run(artifact, {input_name: x})[0], splits.test.x, splits.test.y
        )
        test_cache = user_cache_path(variant, ckpt.sha256, "test")
        test_acc = EvalOracle(supernet, splits.test.x, splits.test.y, test_cache, ckpt.sha256, "test")(choice.config)
        say(f"test accuracy: torch subnet {test_acc:.2%}, compiled artifact {artifact_test:.2%}")

        measured = None
        if measure:
            runner = get_runner(target.runner)
            measured = runner.benchmark(backend, artifact, refs_in, target.measurement.protocol())
            err = (choice.latency_ms - measured.median_ms) / measured.median_ms * 100
            say(
                f"measured {measured.median_ms:.3f} ms (p90 {measured.p90_ms:.3f}, cv {measured.cv:.1%}, "
                f"{measured.n_runs} runs on {measured.where}); prediction off by {err:+.1f}%"
            )

        manifest = write_manifest(
            staging,
            target=target,
            variant=variant,
            selection=selection,
            ckpt=ckpt,
            artifact=artifact,
            artifact_sha256=sha256_file(artifact.path),
            table=table,
            margin_pct=margin,
            measured=measured,
            accuracy={
                "val": choice.accuracy,
                "test": test_acc,
                "artifact_test": artifact_test,
                "predictor": describe(accuracy),
            },
            parity=parity,
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
    return DeployResult(out_dir, manifest, selection)
