"""Validating a compiled artifact: run it where it can run, check its structure where it cannot.

Three situations, each recorded as what was and was not done:
- the artifact runs here (ONNX Runtime, LiteRT): parity vs the hub references and test accuracy of
  the artifact itself;
- it was compiled but cannot run here (a CoreML package on Linux): its spec (input/output shapes) is
  read back and compared with the hub references, and the hub's ONNX is run on ONNX Runtime so the
  export itself is validated;
- it could not be compiled here (TensorRT without a GPU): the hub's ONNX and references are packaged
  for building on the device (`elastic-deploy compile`), after the same ONNX Runtime check.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from deploy.backends.base import Artifact, Backend
from deploy.errors import BackendUnavailableError, ParityError, RunnerError
from deploy.export.parity import ParityReport, check_parity
from deploy.io import atomic_write_bytes
from deploy.latency.lock import measuring
from deploy.runners import get_runner

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.latency.stats import LatencyStats
    from deploy.targets import Target
    from deploy.tasks.base import Split, Task

log = logging.getLogger(__name__)

ONNX_CHECK_ATOL = 1e-4  # the hub's ONNX on ONNX Runtime CPU, fp32: the export must match torch


@dataclass(frozen=True)
class ArtifactCheck:
    status: str  # "compiled" or "deferred" (only the ONNX could be prepared here)
    ran_here: bool
    not_run_reason: str | None
    parity: ParityReport | None  # the artifact itself vs the hub references
    onnx_parity: ParityReport | None  # the hub's ONNX on ONNX Runtime (when the artifact could not run)
    spec_problems: tuple[str, ...]
    inspection: dict[str, Any] = field(default_factory=dict)
    artifact_test_accuracy: float | None = None
    build_on_device: str | None = None

    def to_json(self) -> dict[str, Any]:
        def par(p: ParityReport | None) -> dict[str, Any] | None:
            if p is None:
                return None
            return {"max_abs_diff": p.max_abs_diff, "tolerance": p.tolerance, "per_output": dict(p.per_output)}

        return {
            "status": self.status,
            "ran_here": self.ran_here,
            "not_run_reason": self.not_run_reason,
            "parity": par(self.parity),
            "onnx_parity_onnxruntime": par(self.onnx_parity),
            "spec_problems": list(self.spec_problems),
            "build_on_device": self.build_on_device,
            "inspection": self.inspection,
        }


def package_onnx(entry: HubEntry, out_dir: Path) -> Artifact:
    """The hub's ONNX and its references, ready to be compiled on the device."""
    path = Path(out_dir) / "model.onnx"
    atomic_write_bytes(path, entry.onnx_path.read_bytes())
    atomic_write_bytes(Path(out_dir) / entry.references_path.name, entry.references_path.read_bytes())
    return Artifact(path, "onnx", "fp32", tuple(entry.input_names), tuple(entry.output_names), {"deferred": True})


def spec_problems(inspection: dict[str, Any], entry: HubEntry) -> list[str]:
    """Input/output shapes read back from the artifact vs the hub references, by position."""
    refs = [("input", v) for v in entry.reference_inputs().values()]
    refs += [("output", v) for v in entry.reference_outputs().values()]
    found = [("input", s) for s in inspection.get("inputs", [])] + [
        ("output", s) for s in inspection.get("outputs", [])
    ]
    problems = []
    for kind in ("input", "output"):
        want = [v.shape for k, v in refs if k == kind]
        have = [s for k, s in found if k == kind]
        if len(want) != len(have):
            problems.append(f"{len(have)} {kind}s in the artifact, {len(want)} in the hub entry")
            continue
        for i, (shape, spec) in enumerate(zip(want, have, strict=True)):
            got = spec.get("shape")
            if got is not None and [int(d) if str(d).isdigit() else d for d in got] != list(shape):
                problems.append(f"{kind} {i} ({spec.get('name', '?')}) has shape {got}, the hub's is {list(shape)}")
    return problems


def onnx_check(entry: HubEntry, target: Target, work_dir: Path) -> ParityReport:
    """Run the hub's ONNX on ONNX Runtime CPU against the torch references."""
    from deploy.backends import get_backend

    ort = get_backend("onnxruntime")
    artifact = ort.compile(entry, target.model_copy(update={"precision": "fp32"}), work_dir)
    return check_parity(ort.run(artifact, entry.reference_inputs()), entry.reference_outputs(), ONNX_CHECK_ATOL)


def artifact_metric(backend: Backend, artifact: Artifact, task: Task, split: Split) -> float:
    """The task's metric of the compiled artifact itself, one example at a time (as it is deployed: batch 1).

    The artifact's inputs are the hub entry's, named as the family declares them, which is how the
    task names its data."""

    def predict(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        feed = {name: inputs[name].numpy() for name in artifact.input_names}
        return torch.from_numpy(np.asarray(backend.run(artifact, feed)[0]))

    return task.evaluate(predict, split, batch_size=1)


def parity_tolerance(backend: Backend, target: Target) -> float:
    """The target's parity_atol for its primary precision; for the other precisions it lists, the
    backend's declared tolerance for that precision (quantised logits move by far more than 1e-4)."""
    if target.precision == target.search_precisions[0]:
        return target.parity_atol
    return max(target.parity_atol, float(backend.parity_atol.get(target.precision, target.parity_atol)))


def check_artifact(
    backend: Backend,
    artifact: Artifact,
    entry: HubEntry,
    target: Target,
    test: tuple[Task, Split] | None,
    *,
    deferred_reason: str | None = None,
    build_command: str | None = None,
    work_dir: Path,
) -> ArtifactCheck:
    """Validate `artifact` as far as this machine allows; raises ParityError on a failed comparison.

    `test` (the task and the split to score the artifact on) None skips the artifact's metric (a plain model
    from `convert` has no labelled split)."""
    reason = deferred_reason or backend.runs_here()
    if reason is None:
        parity = check_parity(
            backend.run(artifact, entry.reference_inputs()),
            entry.reference_outputs(),
            parity_tolerance(backend, target),
        )
        parity.raise_if_failed(f"{backend.name} artifact {artifact.path.name}")
        inspection = backend.inspect(artifact)
        acc = None if test is None else artifact_metric(backend, artifact, *test)
        return ArtifactCheck(
            "compiled", True, None, parity, None, tuple(spec_problems(inspection, entry)), inspection, acc
        )

    onnx_parity = onnx_check(entry, target, work_dir)
    onnx_parity.raise_if_failed(f"the hub's ONNX of {entry.key} on onnxruntime")
    if deferred_reason is not None:
        from deploy.backends.onnxruntime import onnx_summary

        inspection = onnx_summary(artifact.path, "fp32")
        status = "deferred"
    else:
        inspection = backend.inspect(artifact)
        status = "compiled"
    problems = tuple(spec_problems(inspection, entry))
    if problems and status == "compiled":
        raise ParityError(
            f"{backend.name} artifact {artifact.path.name} does not match the hub entry: {'; '.join(problems)}"
        )
    return ArtifactCheck(status, False, reason, None, onnx_parity, problems, inspection, None, build_command)


def build_and_check(
    backend: Backend,
    entry: HubEntry,
    target: Target,
    staging: Path,
    final_dir: Path,
    test: tuple[Task, Split] | None,
    say: Callable[[str], None],
    calibration: np.ndarray | None = None,
) -> tuple[Artifact, ArtifactCheck]:
    """Compile into `staging` (or package the ONNX where the backend cannot build here), validate it
    as far as this machine allows, and say what was and was not checked."""
    deferred = build_command = None
    try:
        artifact = backend.compile(entry, target, staging, calibration=calibration)
    except BackendUnavailableError as exc:
        if not backend.compiles_on_device:
            raise  # it compiles here or nowhere: the error names the install command
        deferred = str(exc)
        artifact = package_onnx(entry, staging)
        build_command = f"elastic-deploy compile --target {target.name} {final_dir / artifact.path.name}"
        say(f"{backend.name} cannot build here ({deferred.rstrip('.')}); packaged the hub's ONNX instead")
    work = staging / ".onnx-check"
    try:
        check = check_artifact(
            backend, artifact, entry, target, test, deferred_reason=deferred, build_command=build_command, work_dir=work
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if check.parity is not None:
        say(f"parity: max abs diff {check.parity.max_abs_diff:.2e} ≤ {check.parity.tolerance:.0e}")
    else:
        onnx_diff = check.onnx_parity.max_abs_diff if check.onnx_parity else float("nan")
        say(f"not run here: {check.not_run_reason}")
        say(
            f"checked instead: the hub's ONNX on onnxruntime matches torch (max abs diff {onnx_diff:.2e}); "
            f"{artifact.path.name} spec "
            + ("matches the hub entry" if not check.spec_problems else f"problems: {list(check.spec_problems)}")
        )
    for warning in check.inspection.get("warnings", []):  # e.g. ops an ExecuTorch delegate did not take
        say(f"warning: {warning}")
    return artifact, check


def measure_artifact(
    backend: Backend,
    artifact: Artifact,
    entry: HubEntry,
    target: Target,
    check: ArtifactCheck,
    measure: bool,
    say: Callable[[str], None],
) -> tuple[LatencyStats | None, str | None]:
    """(stats, None) where the target's runner could measure the artifact, else (None, why not)."""
    if not measure:
        return None, "--no-measure"
    if not check.ran_here and target.runner.measures_in_process:
        return None, f"the artifact cannot run on this machine ({check.not_run_reason})"
    runner = get_runner(target.runner)
    try:
        with measuring(runner, f"deploy {target.name}"):
            stats = runner.benchmark(backend, artifact, entry.reference_inputs(), target.measurement.protocol())
    except RunnerError as exc:
        if target.runner.measures_in_process:
            raise
        # No device attached is normal for a deploy: the artifact is built and validated here.
        reason = f"not measured on the device ({exc})"
        say(f"{reason}; measure it later with `make bench TARGET={target.name}`")
        return None, reason
    return stats, None
