"""The backend contract: compile a hub entry for a target, run it, make it timeable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.lm.artifact import LMBackend
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


def calibration_rows(backend: str, sample: np.ndarray, calibration: np.ndarray | None, where: str) -> list[np.ndarray]:
    """int8 calibration data as batch-1 inputs shaped like `sample` (the model's one input).

    Accepts N × the input's per-sample shape (e.g. N×1×28×28 training images for a 1×1×28×28 input) or
    N × the full input shape; None uses the sample itself (enough for latency tables)."""
    if calibration is None:
        return [np.ascontiguousarray(sample, np.float32)]
    data = np.asarray(calibration)
    per_sample = tuple(sample.shape[1:]) if sample.shape[:1] == (1,) else tuple(sample.shape)
    if data.size and tuple(data.shape[1:]) in (per_sample, tuple(sample.shape)):
        return [np.ascontiguousarray(row.reshape(sample.shape), np.float32) for row in data]
    from deploy.errors import DataShapeError

    raise DataShapeError(
        f"{backend} int8 calibration data from {where} has shape {tuple(data.shape)}, expected "
        f"(N, {', '.join(map(str, per_sample))}) with N >= 1 (N × the model's input shape {tuple(sample.shape)})"
    )


class NoOptions(BaseModel):
    """A backend without options: `backend_options` in a target must be empty."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Backend(Protocol):
    """What a backend declares and does. Declared (class attributes, checked by the backend registry sweep):

    - `precisions` it can compile, and `parity_atol`: the documented tolerance (max abs difference of
      outputs against the torch references) per precision, as optimum's ATOL_FOR_VALIDATION;
    - `options_model`: the pydantic schema of a target's `backend_options` (validated when it loads);
    - `needs_program`: compile reads the hub's torch.export program (else only its ONNX);
    - `compiles_on_device`: compile must run on the device itself (a TensorRT engine is built for one
      GPU); where its toolchain is missing here a deploy packages the hub's ONNX and says which
      command builds it there. Every other backend compiles here, and a missing toolchain is an error;
    - `times_on_device`: `device_timed_call` returns each run's duration on the device's own clock
      (CUDA events), which the local runner then uses instead of the host's clock around `timed_call`;
    - `language_model()`: its half for language models (an `LMBackend`: KV-cache artifacts, deploy/lm/artifact.py),
      or None where it has none. The half lives in a sibling module (`<backend>_lm.py`) the method imports.
    """

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    parity_atol: ClassVar[Mapping[str, float]]
    options_model: ClassVar[type[BaseModel]]
    needs_program: ClassVar[bool]
    compiles_on_device: ClassVar[bool]
    times_on_device: ClassVar[bool]

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

    def device_timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], float]:
        """Where `times_on_device`: one run per call, returning its duration in ms on the device's clock."""

    def device_clock(self) -> str:
        """What times the runs: the device's clock (e.g. "CUDA events on NVIDIA H100") or the host's."""

    @classmethod
    def language_model(cls) -> type[LMBackend] | None:
        """This backend's language-model half, or None (it deploys image models only)."""


class BackendBase:
    """Defaults for the declarations a backend may leave out: no options, compiled here, host-timed."""

    options_model: ClassVar[type[BaseModel]] = NoOptions
    needs_program: ClassVar[bool] = False
    compiles_on_device: ClassVar[bool] = False
    times_on_device: ClassVar[bool] = False

    def device_timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], float]:
        raise NotImplementedError(f"{type(self).__name__} times on the host clock (times_on_device is False)")

    def device_clock(self) -> str:
        return "host wall clock"

    @classmethod
    def language_model(cls) -> type[LMBackend] | None:
        return None


def backend_options(backend: type[Backend] | Backend, target: Target) -> Any:
    """The target's `backend_options` as the backend's validated options model (the target checked them
    when it loaded; this gives them their type)."""
    return backend.options_model.model_validate(dict(target.backend_options))
