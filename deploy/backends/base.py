"""The backend contract: compile a hub entry for a target, run it, make it timeable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.targets import Target


@dataclass(frozen=True)
class Artifact:
    """A compiled model on disk and what is needed to load it again."""

    path: Path
    backend: str
    precision: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)  # e.g. threads, optimisation level


def check_precision(backend_name: str, supported: tuple[str, ...], target: Target) -> None:
    """Raise UnsupportedPrecisionError naming what the backend can do and the file to change."""
    if target.precision not in supported:
        from deploy.errors import UnsupportedPrecisionError

        raise UnsupportedPrecisionError(
            f"target {target.name} asks for precision {target.precision} but the {backend_name} backend "
            f"supports {', '.join(supported)}; set precision in targets/{target.name}.yaml to one of them"
        )


class Backend(Protocol):
    """compile / run / timed_call, plus what the pipeline must know where a runtime cannot run here.

    A backend whose runtime has its own device clock (CUDA events) may also define
    `device_timed_call(artifact, inputs) -> Callable[[], float]` (one run, returning its duration in
    ms on the device's clock) and `device_clock() -> str` (e.g. "CUDA events on NVIDIA H100"); the
    local runner then times with it instead of the host's wall clock around `timed_call`.
    `needs_program` says whether compile reads the hub's torch.export program (else only its ONNX).
    """

    name: str
    precisions: tuple[str, ...]  # what compile accepts as target.precision
    needs_program: bool  # compile reads entry.load_program() (the hub must export it), not only the ONNX
    # compile must run on the device itself (a TensorRT engine is built for one GPU): where its toolchain is
    # missing here, a deploy packages the hub's ONNX and says which command builds it there. Every other
    # backend compiles here, so a missing toolchain is an error that names the install command.
    compiles_on_device: bool

    def version(self) -> str:
        """Version of the runtime/converter (recorded in tables and manifests)."""

    def runs_here(self) -> str | None:
        """None when artifacts can run on this machine; else why not and what would make it possible."""

    def inspect(self, artifact: Artifact) -> dict[str, Any]:
        """Structural facts for the manifest, read back from the artifact file itself:
        inputs/outputs (names, shapes, dtypes), precision, and op counts by type."""

    def compile(
        self, entry: HubEntry, target: Target, out_dir: Path, calibration: np.ndarray | None = None
    ) -> Artifact:
        """Convert the hub entry into this backend's artifact under out_dir.

        `calibration` (N × the entry's input shape, float32) feeds int8 quantisation (TFLite's
        representative dataset, TensorRT's entropy calibrator); the pipeline passes training-split
        images. When None, backends that need it use the entry's reference inputs (enough for latency
        tables, whose numbers do not depend on the values). A wrong shape raises DataShapeError."""

    def run(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the artifact once here; raises BackendUnavailableError where its runtime cannot run here."""

    def timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """A zero-argument callable that runs one inference (loaded once), for the local runner to time."""
