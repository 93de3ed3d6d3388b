"""manifest.json of a language-model deploy, typed (kind "lm"): the LM artifact folder, its tokenizer, prompt
buckets and maximum context, predicted and measured time to first token and decode speed, perplexity, parity.
`elastic-deploy generate` reads it back through `LMManifest.load`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from deploy.errors import ConfigFileError, DeployError
from deploy.io import atomic_write_text, pydantic_error_line, read_json
from deploy.packaging.manifest import SCHEMA_VERSION, SubnetRecord, _Record

ARTIFACT_DIR = "lm"


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


class LMManifest(_Record):
    schema_version: int = SCHEMA_VERSION
    kind: Literal["lm"] = "lm"
    target: str
    device: str
    backend: str
    precision: str
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
    versions: dict[str, str]
    created: str

    def save(self, folder: Path) -> Path:
        path = Path(folder) / "manifest.json"
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> LMManifest:
        path = Path(path)
        if not path.exists():
            raise DeployError(f"no manifest at {path}; deploy a language model there first (make deploy TARGET=…)")
        data = read_json(path)
        if not isinstance(data, dict) or data.get("kind") != "lm":
            raise ConfigFileError(
                f"{path}: not a language-model deploy (its manifest has no kind 'lm'); `generate` runs LM deploys"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigFileError(pydantic_error_line(path, exc) + "; deploy again") from None
