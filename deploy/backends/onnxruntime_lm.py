"""Language models on ONNX Runtime: prefill.onnx and decode.onnx with a dynamic KV cache.

prefill: tokens (1, P) -> logits (1, vocab) of the last position, present (2L, heads, P, head_dim)
decode:  token (1, 1), past (2L, heads, T, head_dim) -> logits (1, vocab), present (2L, heads, T + 1, head_dim)

P and T are dynamic axes (P + generated <= max_context, which the learned positions bound); the position of
a decoded token is the past's length, read from its shape inside the graph. Exported by the TorchScript
exporter at opset 17 (the hub's recipe), checked by the onnx checker and slimmed by onnxslim.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from deploy.backends.base import Artifact, check_precision
from deploy.backends.onnxruntime import OnnxRuntimeBackend, onnx_summary
from deploy.errors import ExportError
from deploy.families.lm_blocks import Decoder, Graph
from deploy.lm.artifact import LMArtifact, LMSpec, write_tokenizer
from deploy.lm.tokenizer import ByteTokenizer

if TYPE_CHECKING:
    from deploy.targets import Target

log = logging.getLogger(__name__)

FILES = {"prefill": "prefill.onnx", "decode": "decode.onnx"}
NAMES = {"prefill": (("tokens",), ("logits", "present")), "decode": (("token", "past"), ("logits", "present"))}
DYNAMIC = {
    "prefill": {"tokens": {1: "prompt"}, "present": {2: "prompt"}},
    "decode": {"past": {2: "past"}, "present": {2: "context"}},
}
EXAMPLE_LENGTH = 8  # traced at this length; the axes above stay dynamic


def export_onnx(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    path: Path,
    names: tuple[tuple[str, ...], tuple[str, ...]],
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
) -> dict[str, Any]:
    """Export, check (full), infer shapes, slim and save one graph; returns facts for lm.json."""
    import onnx
    import onnxslim

    from deploy.errors import first_line as _first_line
    from deploy.export.hub import OPSET, quiet_exporter

    start = time.perf_counter()
    raw = path.with_suffix(".raw.onnx")
    try:
        with quiet_exporter(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), args, str(raw), dynamo=False, do_constant_folding=True, opset_version=OPSET,
                input_names=list(names[0]), output_names=list(names[1]), dynamic_axes=dict(dynamic_axes or {}),
            )  # fmt: skip
        onnx.checker.check_model(str(raw), full_check=True)
        slim = onnxslim.slim(onnx.shape_inference.infer_shapes(onnx.load(str(raw)), check_type=True))
        onnx.checker.check_model(slim, full_check=True)
    except Exception as exc:
        raise ExportError(f"ONNX export of {path.name} failed: {_first_line(exc)}") from exc
    finally:
        raw.unlink(missing_ok=True)
    onnx.save_model(slim, str(path), save_as_external_data=False)
    return {"export_seconds": round(time.perf_counter() - start, 3), "bytes": path.stat().st_size}


def graph_args(decoder: Decoder, role: str) -> tuple[torch.Tensor, ...]:
    if role == "prefill":
        return (torch.zeros(1, EXAMPLE_LENGTH, dtype=torch.long),)
    return torch.zeros(1, 1, dtype=torch.long), torch.zeros(decoder.cache_shape(EXAMPLE_LENGTH))


class OrtLM:
    name: ClassVar[str] = "onnxruntime"
    cache: ClassVar[str] = "dynamic"
    parity_atol: ClassVar[float] = 1e-4

    def __init__(self) -> None:
        self.backend = OnnxRuntimeBackend()

    def runs_here(self) -> str | None:
        return self.backend.runs_here()

    def compile_lm(
        self, decoder: Decoder, target: Target, out_dir: Path, *, buckets: Sequence[int], tokenizer: ByteTokenizer
    ) -> LMArtifact:
        check_precision(self.name, self.backend.precisions, target)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        facts = {}
        for role, method in (("prefill", "prefill"), ("decode", "decode")):
            facts[role] = export_onnx(
                Graph(decoder, method), graph_args(decoder, role), out_dir / FILES[role], NAMES[role], DYNAMIC[role]
            )
        two_l, heads, _, head_dim = decoder.cache_shape(0)
        spec = LMSpec(
            backend=self.name,
            cache="dynamic",
            precision=target.precision,
            vocab=decoder.vocab,
            max_context=decoder.max_context,
            prompt_buckets=tuple(sorted(buckets)),
            kv_shape=(two_l, heads, head_dim),
            files=dict(FILES),
            tokenizer_sha256=write_tokenizer(out_dir, tokenizer),
            options={**self.backend.session_options(target.threads), "onnxruntime": self.backend.version(), **facts},
        )
        artifact = LMArtifact(out_dir, spec).save()
        self.open(artifact)  # prove both graphs load here, once
        return artifact

    def graph(self, artifact: LMArtifact, role: str) -> Artifact:
        inputs, outputs = NAMES[role]
        options = {k: v for k, v in artifact.spec.options.items() if not isinstance(v, dict)}
        return Artifact(artifact.path(role), self.name, artifact.spec.precision, inputs, outputs, options)

    def open(self, artifact: LMArtifact) -> OrtSession:
        return OrtSession(self.backend, self.graph(artifact, "prefill"), self.graph(artifact, "decode"))

    def inspect(self, artifact: LMArtifact) -> dict[str, Any]:
        return {role: onnx_summary(artifact.path(role), artifact.spec.precision) for role in FILES}


class OrtSession:
    def __init__(self, backend: OnnxRuntimeBackend, prefill: Artifact, decode: Artifact) -> None:
        self.backend = backend
        self._prefill, self._decode = backend.session(prefill), backend.session(decode)

    def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, kv = self._prefill.run(None, {"tokens": np.asarray(prompt, np.int64).reshape(1, -1)})
        return logits[0], kv

    def decode(self, token: int, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, kv = self._decode.run(None, {"token": np.array([[token]], np.int64), "past": state})
        return logits[0], kv
