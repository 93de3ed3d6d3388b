"""manifest.json, typed: what a deploy (or a convert) shipped, and where every number in it came from.

Written by deploy/packaging/report.py, read back by `bench`, the CLI and the report through `Manifest.load`,
never as a dict of string keys. Sections that carry other modules' own records (the latency table's
provenance, the artifact check, the selection's Pareto front) are kept as those records' JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy.errors import ConfigFileError
from deploy.io import atomic_write_text, pydantic_error_line, read_json

SCHEMA_VERSION = 2


def inside(folder: Path, name: str, *, named_by: Path, field: str) -> Path:
    """`folder / name`, refused (ConfigFileError) unless it resolves strictly inside `folder`.

    Every path a manifest or lm.json names is read from the deploy's own folder: one that leads elsewhere
    (`..`, an absolute path, a symlink out) would also escape the sha256 check that says it changed.
    """
    try:
        base = Path(folder).resolve()
        within = base in (base / name).resolve().parents
    except (OSError, ValueError):  # a NUL byte, a symlink loop
        within = False
    if not within:
        raise ConfigFileError(
            f"{named_by}: field '{field}' is {name!r}, which is not inside {folder}; a deploy reads only files in "
            "its own folder: deploy again"
        )
    return Path(folder) / name


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Record):
    name: str
    shape: list[int]
    dtype: str


class ArtifactRecord(_Record):
    path: str
    sha256: str
    format: str
    backend: str
    status: str  # "compiled" (built and checked here) or "deferred" (the ONNX, to be built on the device)
    inputs: list[TensorSpec]
    output_names: list[str]
    options: dict[str, Any] = Field(default_factory=dict)


class MeasuredRecord(_Record):
    """A measurement of the artifact: the statistics and how they were taken."""

    stats: dict[str, Any]
    how: str


class MeasurementRecord(_Record):
    """The artifact's measured latency, or why it was not measured (a convert has nothing more)."""

    measured_ms: float | None
    measured: MeasuredRecord | None = None
    not_measured_reason: str | None = None


class LatencyRecord(MeasurementRecord):
    """A deploy's latency: the table's prediction beside the measurement."""

    predicted_ms: float
    predicted_std_ms: float
    prediction: str  # how the prediction was made, in words
    budget_ms: float
    safety_margin_pct: float
    method: str  # of the table: measured, estimated or transferred
    table: dict[str, Any]  # the table's provenance, calibration and validation


class MetricRecord(_Record):
    """The task's metric for the chosen subnet (named `accuracy` for its first and most common kind)."""

    name: str
    direction: str
    percent: bool
    val: float
    test: float
    artifact_test: float | None  # the compiled artifact's own score (None: it cannot run here)
    val_source: str  # "exact" (evaluated) or "surrogate"
    predictor: dict[str, Any]
    precisions: list[dict[str, Any]]
    task: dict[str, Any]  # task.describe(): name, seed, split sizes, data digests, preprocessing


class SubnetRecord(_Record):
    id: str
    config: dict[str, Any]
    params: int | None


class Manifest(_Record):
    schema_version: int = SCHEMA_VERSION
    target: str
    device: str
    backend: str
    precision: str
    model: str
    model_spec: dict[str, Any]  # the spec the model was built from (family, dims, task, weights)
    subnet: SubnetRecord
    checkpoint_sha256: str
    artifact: ArtifactRecord
    hub_entry: str
    latency: LatencyRecord
    accuracy: MetricRecord
    parity: dict[str, Any] | None
    validation: dict[str, Any]
    selection: dict[str, Any]
    versions: dict[str, str]
    created: str
    drift: dict[str, Any] | None = None  # deploy/latency/drift.py: table prediction, correction, measurement

    @property
    def build_on_device(self) -> str | None:
        return self.validation.get("build_on_device")

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "manifest.json"
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = read_json(path)
        if not isinstance(data, dict):
            raise ConfigFileError(f"{path}: not a manifest (expected a JSON object); deploy again")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ConfigFileError(
                f"{path}: manifest schema {data.get('schema_version')}, this tool reads {SCHEMA_VERSION}; "
                "deploy again to write a current one"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigFileError(pydantic_error_line(path, exc) + "; deploy again") from None


class ConvertedModel(_Record):
    spec: str  # MODULE:FACTORY
    class_: str = Field(alias="class")
    params: int

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConvertManifest(_Record):
    """What `convert` shipped: a plain model (no subnet, no table), checked for parity and measured."""

    schema_version: int = SCHEMA_VERSION
    kind: str = "convert"
    model: ConvertedModel
    input_shape: list[int]
    example_input: str
    target: str
    device: str
    backend: str
    precision: str
    artifact: dict[str, Any]
    validation: dict[str, Any]
    latency: MeasurementRecord
    hub_entry: str
    versions: dict[str, str]
    created: str

    @property
    def build_on_device(self) -> str | None:
        return self.validation.get("build_on_device")

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "manifest.json"
        atomic_write_text(path, self.model_dump_json(indent=2, by_alias=True) + "\n")
        return path
