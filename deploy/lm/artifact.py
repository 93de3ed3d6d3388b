"""The contract of a language-model artifact: one folder, whatever the backend.

    <dir>/lm.json          LMSpec: backend, cache layout, vocabulary, maximum context, prompt buckets, the
                           KV cache's shape, the graph files by role, the tokenizer's sha256
    <dir>/tokenizer.json   the tokenizer (deploy/lm/tokenizer.py), checked against lm.json when opened
    <dir>/<graphs>         ONNX Runtime: prefill.onnx + decode.onnx (dynamic cache);
                           LiteRT: model.tflite with prefill_<bucket> and decode signatures (static cache);
                           CoreML: model.mlpackage, a stateful ML program (the cache is its state)

A backend's language-model half (`LMBackend`, declared by the backend's `language_model()`) compiles a dense
Decoder into such a folder and opens it as an `LMSession`: `prefill(prompt ids)` gives the last position's
logits and a state, `decode(token, state)` the next logits and state. Greedy generation, parity, timing and
`generate` are written once against LMSession (deploy/lm/generate.py), the torch decoder being one more session.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from deploy.errors import ConfigFileError, DeployError, PluginError, PromptError
from deploy.io import atomic_write_text, pydantic_error_line, read_json
from deploy.lm import tokenizer as tok
from deploy.packaging.manifest import inside

if TYPE_CHECKING:
    from deploy.families.lm_blocks import Decoder
    from deploy.targets import Target

FORMAT = 1
SPEC_FILE = "lm.json"
ARTIFACT_DIR = "lm"  # the LM artifact's folder inside a deploy's output folder
Cache = Literal["dynamic", "static", "state"]


class LMSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT
    backend: str
    cache: Cache  # dynamic: the past grows by one per token; static/state: one cache of max_context
    precision: str = "fp32"
    vocab: int
    max_context: int  # prompt + generated tokens never exceed it
    prompt_buckets: tuple[int, ...] = ()  # static shapes: the prefill lengths a prompt is padded to; () any
    kv_shape: tuple[int, int, int]  # (2 · layers, heads, head_dim); the length axis comes between the last two
    files: dict[str, str]  # role (prefill, decode, model) -> file name in the folder
    tokenizer_sha256: str
    options: dict[str, Any] = {}  # threads, converter versions, …

    @property
    def longest_prompt(self) -> int:
        """A dynamic cache takes any prompt up to max_context; static shapes, up to their largest bucket."""
        return max(self.prompt_buckets) if self.prompt_buckets and self.cache != "dynamic" else self.max_context

    def padded(self, prompt: np.ndarray, dtype: type) -> tuple[np.ndarray, int]:
        """The prompt right-padded (with id 0) to the smallest bucket that holds it, and its length."""
        n = int(np.asarray(prompt).size)
        bucket = next((b for b in sorted(self.prompt_buckets) if b >= n), None)
        if bucket is None:
            raise PromptError(
                f"the prompt has {n} tokens but the artifact's longest prefill takes {self.longest_prompt}"
            )
        tokens = np.zeros((1, bucket), dtype)
        tokens[0, :n] = prompt
        return tokens, n


@dataclass(frozen=True)
class LMArtifact:
    dir: Path
    spec: LMSpec

    def path(self, role: str) -> Path:
        return self.dir / self.spec.files[role]

    @property
    def tokenizer_path(self) -> Path:
        return self.dir / tok.FILE

    def save(self) -> LMArtifact:
        atomic_write_text(self.dir / SPEC_FILE, self.spec.model_dump_json(indent=2) + "\n")
        return self

    @classmethod
    def load(cls, folder: Path) -> LMArtifact:
        path = Path(folder) / SPEC_FILE
        try:
            spec = LMSpec.model_validate(read_json(path))
        except ValidationError as exc:
            raise ConfigFileError(pydantic_error_line(path, exc) + "; deploy the model again") from None
        artifact = cls(Path(folder), spec)
        for role, name in spec.files.items():  # the folder's sha256 covers only the files inside it
            inside(artifact.dir, name, named_by=path, field=f"files.{role}")
        missing = [f for f in spec.files.values() if not (artifact.dir / f).exists()]
        if missing:
            raise DeployError(f"LM artifact {folder} lacks {', '.join(missing)} named by {SPEC_FILE}; deploy again")
        return artifact

    def tokenizer(self) -> tok.ByteTokenizer:
        """The folder's tokenizer, checked against the vocabulary and sha256 lm.json records."""
        return tok.load(
            self.tokenizer_path, vocab=self.spec.vocab, sha256=self.spec.tokenizer_sha256, what=str(self.dir)
        )

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for f in sorted(p for p in self.dir.rglob("*") if p.is_file()):
            digest.update(f"{f.relative_to(self.dir).as_posix()}\0".encode() + f.read_bytes())
        return digest.hexdigest()


class LMSession(Protocol):
    """A loaded LM: prompt in, logits and an opaque state out; then one token at a time."""

    def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, Any]:
        """(n,) int64 prompt ids -> (the last position's logits (vocab,), state)."""

    def decode(self, token: int, state: Any) -> tuple[np.ndarray, Any]:
        """The next token after `state` -> (its logits (vocab,), the state one token longer)."""


class LMBackend(Protocol):
    """What a backend does for language models (beside its `Backend` contract for plain graphs)."""

    name: ClassVar[str]  # the backend it belongs to (onnxruntime, tflite, coreml)
    cache: ClassVar[Cache]
    parity_atol: ClassVar[float]  # max abs logit difference against the torch decoder, fp32

    def runs_here(self) -> str | None:
        """None where its artifacts run on this machine, else why not."""

    def compile_lm(
        self, decoder: Decoder, target: Target, out_dir: Path, *, buckets: Sequence[int], tokenizer: tok.ByteTokenizer
    ) -> LMArtifact:
        """Write the folder (graphs, tokenizer, lm.json) for `decoder`."""

    def open(self, artifact: LMArtifact) -> LMSession:
        """The artifact loaded here (BackendUnavailableError where its runtime cannot run here)."""

    def inspect(self, artifact: LMArtifact) -> dict[str, Any]:
        """Facts read back from the graph files: inputs, outputs (and states), ops, precision."""


# What an LM half must have: checked when it is loaded, so a plugin missing one is one line naming it.
LM_METHODS = ("runs_here", "compile_lm", "open", "inspect")
LM_ATTRIBUTES = ("name", "cache", "parity_atol")


def lm_half(backend: str) -> type[LMBackend] | None:
    """The language-model half the registered backend `backend` declares (None: it has none); PluginError
    naming what a declared half lacks."""
    from deploy.backends import BACKENDS

    half = BACKENDS.load(backend).language_model()
    if half is None:
        return None
    missing = [m for m in LM_METHODS if not callable(getattr(half, m, None))]
    missing += [a for a in LM_ATTRIBUTES if not hasattr(half, a)]
    if missing:
        raise PluginError(
            f"backend {backend} declares the language-model half {half.__qualname__}, which lacks "
            f"{', '.join(missing)} of the LMBackend protocol (deploy.api.LMBackend); add them"
        )
    if half.cache not in ("dynamic", "static", "state"):
        raise PluginError(f"{half.__qualname__}.cache is {half.cache!r}; declare 'dynamic', 'static' or 'state'")
    return half


def lm_backends() -> list[str]:
    """The registered backends that declare a language-model half."""
    from deploy.backends import BACKENDS

    return [name for name in BACKENDS.names() if BACKENDS.load(name).language_model() is not None]


def get_lm_backend(name: str) -> LMBackend:
    half = lm_half(name)
    if half is None:
        raise DeployError(
            f"backend {name} has no language-model support (KV-cache artifacts); use one of "
            f"{', '.join(lm_backends())} for a language model"
        )
    return half()


def write_tokenizer(out_dir: Path, tokenizer: tok.ByteTokenizer) -> str:
    tokenizer.save(Path(out_dir) / tok.FILE)
    return tokenizer.sha256
