"""The image-classifier workload: a (subnet, precision) pair under one latency budget, one artifact timed per call.

The stages it answers for the deploy skeleton (deploy/flows/workload.py): its checkpoint, task and one latency
table per precision; the drift check per precision; `choose_precision` (each precision's best subnet, its
artifact's own accuracy measured where it runs); the hub entry compiled and checked (parity and the task's
metric); one call timed by the target's runner; the observation and the over-budget rule
(deploy/flows/settle.py); `ImageManifest`, report.md and pareto.png.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from deploy.accuracy.model import AccuracyModel, build_accuracy_model, describe
from deploy.accuracy.oracle import EvalOracle, user_cache_path
from deploy.backends import get_backend
from deploy.backends.base import Artifact, Backend
from deploy.errors import ConfigFileError, DeployError, NoFeasibleSubnetError
from deploy.export import hub
from deploy.export.check import ArtifactCheck, build_and_check, measure_artifact
from deploy.flows.precision import PrecisionOption, choose_precision
from deploy.flows.settle import reselect_failed, settle_measurement
from deploy.flows.workload import Chosen, DeployRequest, Loaded, Reselect, RunRecord
from deploy.latency.drift import deploy_corrections
from deploy.latency.table import LatencyTable, now_iso
from deploy.models.checkpoint import load as load_checkpoint
from deploy.models.checkpoint import sha256_tree, task_for
from deploy.packaging.manifest import (
    ArtifactRecord,
    ImageManifest,
    LatencyRecord,
    MeasuredRecord,
    MetricRecord,
    SubnetRecord,
    TensorSpec,
)
from deploy.packaging.report import plot_pareto, table_provenance, write_report
from deploy.search.select import Candidate, Selection
from deploy.targets import Target, load_target

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.latency.drift import Correction
    from deploy.latency.stats import LatencyStats

CALIBRATION_IMAGES = 256  # int8 calibration / representative dataset, from the training split


@dataclass(frozen=True)
class ImageLoaded(Loaded):
    accuracy: AccuracyModel
    calibration: np.ndarray | None


@dataclass(frozen=True)
class ImageChosen(Chosen):
    target: Target  # at the chosen precision
    table: LatencyTable  # that precision's
    margin_pct: float
    options: tuple[PrecisionOption, ...]

    @property
    def choice(self) -> Candidate:
        return self.selection.choice


@dataclass(frozen=True)
class ImageBuilt:
    entry: HubEntry
    backend: Backend
    artifact: Artifact
    check: ArtifactCheck
    test_metric: float
    artifact_sha256: str


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


class ImageWorkload:
    kind: ClassVar[str] = "image"

    def load(self, request: DeployRequest) -> ImageLoaded:
        target, say = request.target, request.say
        check_not_language_model(target, request.variant)
        supernet, ckpt = load_checkpoint(request.variant)  # a bad spec, family or checkpoint fails first
        supernet.eval()
        task = task_for(ckpt)  # the checkpoint's task, read with the data seed it was trained on
        primary = LatencyTable.load(target.table_path, target.name)
        if primary.provenance.method == "estimated":
            say(f"ESTIMATED latency table for {target.name}: {primary.provenance.estimation}")
        elif primary.provenance.method == "transferred":
            from deploy.latency.transfer_table import describe_transferred

            say(describe_transferred(primary))
        calibration = task.calibration_array(CALIBRATION_IMAGES)  # int8: representative data, training split
        accuracy = build_accuracy_model(supernet, ckpt, progress=request.progress)
        return ImageLoaded(supernet, ckpt, task, primary, accuracy, calibration)

    def drift_check(self, request: DeployRequest, loaded: Loaded) -> dict[str, Correction]:
        return deploy_corrections(
            request.target, loaded.supernet, measure=request.measure, cache_dir=request.cache_dir, say=request.say
        )

    def select(
        self, request: DeployRequest, loaded: Loaded, corrections: Mapping[str, Correction]
    ) -> ImageChosen:
        assert isinstance(loaded, ImageLoaded)
        target, say = request.target, request.say
        if len(target.search_precisions) > 1:
            say(f"selecting per precision ({', '.join(target.search_precisions)}), then measuring each artifact:")
        chosen, options = choose_precision(
            target, loaded.supernet, loaded.ckpt, loaded.accuracy, loaded.calibration, request.cache_dir, say,
            corrections=corrections,
        )  # fmt: skip
        assert chosen.table is not None and chosen.selection is not None
        at = target.at_precision(chosen.precision)
        choice, metric = chosen.selection.choice, loaded.task.metric
        say(
            f"selected {choice.config.id} {choice.config} at {at.precision}: predicted {choice.latency_ms:.3f} ± "
            f"{choice.latency_std_ms:.3f} ms (budget {at.budget_ms} ms − {chosen.margin_pct:.1f}% margin), "
            f"val {metric.name} {metric.format(choice.accuracy)} ({chosen.selection.method}, "
            f"{chosen.selection.evaluated} evaluated)"
        )
        return ImageChosen(
            config=choice.config, selection=chosen.selection, target=at, table=chosen.table,
            margin_pct=chosen.margin_pct, options=tuple(options),
        )

    def build(self, record: RunRecord, staging: Path) -> ImageBuilt:
        req, loaded, chosen = record.request, record.loaded, record.chosen
        assert isinstance(chosen, ImageChosen) and isinstance(loaded, ImageLoaded)
        entry = hub.export_subnet(loaded.supernet, chosen.config, loaded.ckpt.sha256, req.cache_dir)
        req.say(f"hub entry {entry.key} ({'reused' if entry.reused else 'exported'})")
        backend = get_backend(chosen.target.backend)
        task = loaded.task
        artifact, check = build_and_check(
            backend, entry, chosen.target, staging, req.out_dir, (task, task.split("test")), req.say,
            calibration=loaded.calibration,
        )  # fmt: skip
        test_cache = user_cache_path(req.variant, loaded.ckpt.sha256, "test")
        test = EvalOracle(loaded.supernet, task, "test", test_cache, loaded.ckpt.sha256)(chosen.config)
        on_artifact = check.artifact_test_accuracy
        req.say(
            f"test {task.metric.name}: torch subnet {task.metric.format(test)}, compiled artifact "
            + (task.metric.format(on_artifact) if on_artifact is not None else "not measured here (it cannot run here)")
        )
        return ImageBuilt(entry, backend, artifact, check, test, sha256_tree(artifact.path))

    def measure(self, record: RunRecord) -> tuple[LatencyStats | None, str | None]:
        built, chosen, req = record.built, record.chosen, record.request
        assert isinstance(built, ImageBuilt) and isinstance(chosen, ImageChosen)
        measured, not_measured = measure_artifact(
            built.backend, built.artifact, built.entry, chosen.target, built.check, req.measure, req.say
        )
        if measured is not None:  # the sign the drift and bench lines use: measured relative to the prediction
            predicted = chosen.choice.latency_ms
            off = (measured.median_ms - predicted) / predicted * 100
            req.say(
                f"measured {measured.median_ms:.3f} ms (p90 {measured.p90_ms:.3f}, cv {measured.cv:.1%}, "
                f"{measured.n_runs} runs on {measured.where}): {off:+.1f}% vs the predicted {predicted:.3f} ms"
            )
        return measured, not_measured

    def settle(self, record: RunRecord) -> dict[str, Any]:
        chosen, built, req = record.chosen, record.built, record.request
        assert isinstance(chosen, ImageChosen) and isinstance(built, ImageBuilt)
        return settle_measurement(
            target=chosen.target, table=chosen.table, supernet=record.loaded.supernet, model=req.variant,
            choice=chosen.choice, correction=record.corrections.get(chosen.target.precision),
            corrections=record.corrections, measured=record.measured, not_measured=record.not_measured,
            artifact_sha256=built.artifact_sha256, retry=record.retry, cache_dir=req.cache_dir, say=req.say,
        )  # fmt: skip

    def manifest(self, record: RunRecord) -> ImageManifest:
        chosen, built, loaded, req = record.chosen, record.built, record.loaded, record.request
        assert isinstance(chosen, ImageChosen) and isinstance(built, ImageBuilt) and isinstance(loaded, ImageLoaded)
        target, choice, measured = chosen.target, chosen.choice, record.measured
        metric = loaded.task.metric
        how = None
        if measured is not None:
            how = MeasuredRecord(
                stats=measured.to_json(),
                how=f"median of {measured.n_runs} timed runs in {len(measured.round_medians_ms)} rounds after "
                f"warm-up, {target.threads} threads, on {measured.where}",
            )
        ckpt = loaded.ckpt
        spec = ckpt.spec.model_dump(mode="json", exclude={"path"}) if ckpt.spec is not None else {"name": req.variant}
        references = built.entry.reference_inputs()
        inputs = [TensorSpec(name=n, shape=list(v.shape), dtype=str(v.dtype)) for n, v in references.items()]
        return ImageManifest(
            target=target.name, device=target.device.name, backend=target.backend, precision=target.precision,
            model=req.variant, model_spec=spec,
            subnet=SubnetRecord(id=choice.config.id, config=choice.config.to_json(), params=choice.params),
            checkpoint_sha256=ckpt.sha256,
            artifact=ArtifactRecord(
                path=str(req.out_dir / built.artifact.path.name), sha256=built.artifact_sha256,
                format=built.artifact.backend, backend=built.artifact.backend, status=built.check.status,
                inputs=inputs, output_names=list(built.artifact.output_names), options=dict(built.artifact.options),
            ),
            hub_entry=built.entry.key,
            latency=LatencyRecord(
                predicted_ms=choice.latency_ms, predicted_std_ms=choice.latency_std_ms,
                prediction=f"sum of {chosen.table.provenance.method} block latencies from the {target.table_file} "
                "table, calibrated on whole subnets",
                measured_ms=None if measured is None else measured.median_ms, not_measured_reason=record.not_measured,
                measured=how, budget_ms=target.budget_ms, safety_margin_pct=chosen.margin_pct,
                method=chosen.table.provenance.method, table=table_provenance(chosen.table, choice.config.family),
            ),
            accuracy=MetricRecord(
                **metric.to_json(), val=choice.accuracy, test=built.test_metric,
                artifact_test=built.check.artifact_test_accuracy, predictor=describe(loaded.accuracy),
                precisions=[o.to_json() for o in chosen.options], task=loaded.task.describe(),
                val_source=choice.accuracy_source,
            ),
            parity=built.check.to_json()["parity"], validation=built.check.to_json(),
            selection=_selection_record(chosen.selection),
            versions={**built.entry.meta.get("versions", {}), built.backend.name: built.backend.version()},
            created=now_iso(), drift=record.settled,
        )  # fmt: skip

    def package(self, record: RunRecord, manifest: ImageManifest | Any, staging: Path) -> list[str]:
        chosen = record.chosen
        assert isinstance(chosen, ImageChosen)
        plot_pareto(chosen.selection, chosen.target, staging / "pareto.png", chosen.table.provenance.method)
        write_report(staging, manifest)
        return [record.built.artifact.path.name, "manifest.json", "report.md", "pareto.png"]

    def reselect_failed(self, request: DeployRequest, retry: Reselect, second: Exception) -> DeployError:
        if isinstance(second, DeployError) and not isinstance(second, NoFeasibleSubnetError):
            return second  # settle's own MeasuredOverBudgetError names both numbers already
        return reselect_failed(retry, second, request.target.budget_ms)


def _selection_record(selection: Selection) -> dict[str, Any]:
    return {
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
    }
