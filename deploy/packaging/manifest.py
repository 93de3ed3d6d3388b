"""manifest.json, typed: what a deploy (or a convert) shipped, and where every number in it came from.

One header (`ManifestHeader`: schema, `kind`, target, device, backend, precision, versions, date) and a body
per kind, discriminated by `kind`: `image` (a subnet of an image classifier), `lm` (a slice of a language
model with its KV-cache artifact) and `convert` (a plain model, no selection). Written by the deploy and
convert flows, read back by `bench`, `generate`, `compile`, the CLI and the report through `load_manifest`
(or a kind's own `load`), never as a dict of string keys. Sections that carry other modules' own records
(the latency table's provenance, the artifact check, the selection's Pareto front) are kept as their JSON.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from deploy.errors import ConfigFileError
from deploy.io import atomic_write_text, pydantic_error_line, read_json

SCHEMA_VERSION = 3  # 3: every manifest has `kind` (image, lm, convert)
KIND_USE = {"image": "bench", "lm": "generate", "convert": "bench"}


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


class ManifestHeader(_Record):
    """What every manifest says first: which kind of deploy, for which target, with which toolchain, when."""

    schema_version: int = SCHEMA_VERSION
    kind: str
    target: str
    device: str
    backend: str
    precision: str
    versions: dict[str, str]
    created: str

    dump_by_alias: ClassVar[bool] = False

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "manifest.json"
        atomic_write_text(path, self.model_dump_json(indent=2, by_alias=self.dump_by_alias) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> Any:
        """The manifest at `path`, which must be of this class's kind (ConfigFileError saying what it is)."""
        kind = cls.model_fields["kind"].default
        manifest = load_manifest(path)
        if manifest.kind != kind:
            raise ConfigFileError(
                f"{path}: a manifest of kind '{manifest.kind}', not '{kind}'; `{KIND_USE[kind]}` takes what a deploy "
                f"of kind '{kind}' wrote (this folder is for `{KIND_USE[manifest.kind]}`)"
            )
        return manifest


class ImageManifest(ManifestHeader):
    """A deploy of an image classifier's subnet: one artifact timed per call."""

    kind: Literal["image"] = "image"
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
    drift: dict[str, Any] | None = None  # the drift check, correction and measurement (deploy/latency/drift.py)

    @property
    def build_on_device(self) -> str | None:
        return self.validation.get("build_on_device")


class ConvertedModel(_Record):
    spec: str  # MODULE:FACTORY
    class_: str = Field(alias="class")
    params: int

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConvertManifest(ManifestHeader):
    """What `convert` shipped: a plain model (no subnet, no table), checked for parity and measured."""

    kind: Literal["convert"] = "convert"
    model: ConvertedModel
    input_shape: list[int]
    example_input: str
    artifact: dict[str, Any]
    validation: dict[str, Any]
    latency: MeasurementRecord
    hub_entry: str

    dump_by_alias: ClassVar[bool] = True

    @property
    def build_on_device(self) -> str | None:
        return self.validation.get("build_on_device")


# --- a language model's deploy --------------------------------------------------------------------------


class TokenizerRecord(_Record):
    file: str
    sha256: str
    vocab: int
    kind: str


class GenerationTiming(_Record):
    """Generation loops timed on the target: median TTFT, median ms per decoded token, tokens/s."""

    ttft_ms: float
    ms_per_token: float
    tokens_per_s: float
    prompt_tokens: int
    generated_tokens: int
    loops: int
    where: str
    # the target's precision gate: relative standard error of the per-loop ms/token, and whether it held
    relative_standard_error: float | None = None
    within_gate: bool | None = None


class LMLatencyRecord(_Record):
    ttft_prompt: int
    predicted_ttft_ms: float
    predicted_ttft_std_ms: float
    decode_context: int
    predicted_ms_per_token: float
    predicted_ms_per_token_std: float
    predicted_tokens_per_s: float
    budgets: dict[str, float | None]  # ttft_ms, ms_per_token, max_artifact_mb
    margins_pct: dict[str, float]  # per regime, from the table's validation (else its fit)
    method: str  # measured, estimated or transferred (the table's)
    measured: GenerationTiming | None = None
    not_measured_reason: str | None = None
    # a slice measured over a budget is re-selected once, each regime's predictions rescaled by that measurement
    corrections: dict[str, float] = Field(default_factory=dict)  # regime -> factor on the table's predictions
    reselected_from: str | None = None  # the slice measured over its budget
    table: dict[str, Any]  # provenance, per-regime fits and validations


class LMArtifactRecord(_Record):
    dir: str  # relative to the manifest
    sha256: str  # of the folder (every file, by relative path)
    backend: str
    cache: str
    prompt_buckets: list[int]
    max_context: int
    kv_shape: list[int]
    files: dict[str, str]
    inspection: dict[str, Any]


class LMMetricRecord(_Record):
    name: str
    direction: str
    val: float
    test: float
    artifact_test: float | None  # perplexity through the artifact's own KV-cache path (teacher-forced)
    torch_windows: float | None = None  # the torch slice's perplexity on the same windows, same path
    artifact_windows: int | None
    next_token_accuracy: float | None  # of the torch slice on val
    task: dict[str, Any]


class LMManifest(ManifestHeader):
    """A deploy of a language model's slice: the KV-cache artifact folder, its tokenizer, TTFT and ms/token."""

    kind: Literal["lm"] = "lm"
    model: str
    model_spec: dict[str, Any]
    subnet: SubnetRecord
    checkpoint_sha256: str
    artifact: LMArtifactRecord
    tokenizer: TokenizerRecord
    latency: LMLatencyRecord
    accuracy: LMMetricRecord
    parity: dict[str, Any] | None  # greedy parity (deploy/lm/parity.py), None where the artifact cannot run here
    not_run_reason: str | None = None
    selection: dict[str, Any]
    drift: dict[str, Any] | None = None  # the drift check and its correction, as an image deploy records


AnyManifest = Annotated[ImageManifest | LMManifest | ConvertManifest, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[ImageManifest | LMManifest | ConvertManifest] = TypeAdapter(AnyManifest)


def load_manifest(path: Path) -> ImageManifest | LMManifest | ConvertManifest:
    """Any manifest this tool writes, typed by its `kind`; ConfigFileError (one line) for anything else."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: not a manifest (expected a JSON object); deploy again")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ConfigFileError(
            f"{path}: manifest schema {data.get('schema_version')}, this tool reads {SCHEMA_VERSION}; "
            "deploy again to write a current one"
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise ConfigFileError(pydantic_error_line(path, exc) + "; deploy again") from None
