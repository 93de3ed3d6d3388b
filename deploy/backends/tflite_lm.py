"""Language models on LiteRT: one .tflite holding `prefill_<bucket>` signatures and a `decode` signature.

LiteRT wants static shapes, so the cache is static (deploy/families/lm_blocks.py): one tensor of the
maximum context, max_context positions long.

prefill_<b>: tokens (1, b) int64 (the prompt right-padded to bucket b) -> logits (1, b, vocab), kv (2L, heads,
             max_context, head_dim); the prompt's last real position gives the first token
decode:      token (1, 1) int64, pos (1,) int64, kv -> logits (1, vocab), kv with position pos written

Padding is harmless: a padded position's K/V lies beyond the prompt, where decode masks it until it writes
that position itself. Converted by litert-torch (one Converter, one signature per graph), run by
ai-edge-litert's interpreter through its signature runners.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from deploy.backends.base import check_precision
from deploy.backends.tflite import (
    PIP_EXTRA,
    conversion_error,
    interpreter_module,
    op_counts,
    quiet_litert,
    require_module,
)
from deploy.errors import DeployError
from deploy.families.lm_blocks import Decoder, Graph
from deploy.lm.artifact import LMArtifact, LMSpec, write_tokenizer
from deploy.lm.tokenizer import ByteTokenizer

if TYPE_CHECKING:
    from deploy.targets import Target

MODEL_FILE = "model.tflite"
DECODE = "decode"


def prefill_signature(bucket: int) -> str:
    return f"prefill_{bucket}"


class LiteRTLM:
    name: ClassVar[str] = "tflite"
    cache: ClassVar[str] = "static"
    parity_atol: ClassVar[float] = 1e-4

    def runs_here(self) -> str | None:
        try:
            interpreter_module()
        except DeployError as exc:
            return str(exc)
        return None

    def compile_lm(
        self, decoder: Decoder, target: Target, out_dir: Path, *, buckets: Sequence[int], tokenizer: ByteTokenizer
    ) -> LMArtifact:
        check_precision(self.name, ("fp32",), target)  # LM quantisation is not offered yet
        litert_torch = require_module("litert_torch", "litert-torch to convert models")
        buckets = tuple(sorted(set(buckets)))
        if not buckets or buckets[-1] > decoder.max_context:
            raise DeployError(
                f"LiteRT prompt buckets {list(buckets)} must be non-empty and <= the model's max_context "
                f"{decoder.max_context}; set lm.prompt_buckets in targets/{target.name}.yaml"
            )
        start = time.perf_counter()
        decoder = decoder.eval()
        prefill, decode = Graph(decoder, "prefill_static"), Graph(decoder, "decode_static")
        try:
            with quiet_litert():
                converter = None
                for b in buckets:
                    kwargs = {"tokens": torch.zeros(1, b, dtype=torch.long)}
                    converter = (converter or litert_torch).signature(prefill_signature(b), prefill, (), kwargs)
                step = {
                    "token": torch.zeros(1, 1, dtype=torch.long),
                    "pos": torch.tensor([buckets[0]]),
                    "kv": torch.zeros(decoder.cache_shape(decoder.max_context)),
                }
                model = bytes(converter.signature(DECODE, decode, (), step).convert().model_content())  # type: ignore[union-attr]
        except DeployError:
            raise
        except Exception as exc:
            raise conversion_error(exc) from exc
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MODEL_FILE).write_bytes(model)
        two_l, heads, _, head_dim = decoder.cache_shape(0)
        spec = LMSpec(
            backend=self.name,
            cache="static",
            vocab=decoder.vocab,
            max_context=decoder.max_context,
            prompt_buckets=buckets,
            kv_shape=(two_l, heads, head_dim),
            files={"model": MODEL_FILE},
            tokenizer_sha256=write_tokenizer(out_dir, tokenizer),
            options={"threads": int(target.threads), "convert_seconds": round(time.perf_counter() - start, 2)},
        )
        artifact = LMArtifact(out_dir, spec).save()
        self.open(artifact)
        return artifact

    def open(self, artifact: LMArtifact) -> LiteRTSession:
        reason = self.runs_here()
        if reason is not None:
            from deploy.errors import BackendUnavailableError

            raise BackendUnavailableError(f"{reason} ({PIP_EXTRA})")
        interp = interpreter_module().Interpreter(
            model_path=str(artifact.path("model")), num_threads=int(artifact.spec.options.get("threads", 1))
        )
        return LiteRTSession(interp, artifact.spec)

    def inspect(self, artifact: LMArtifact) -> dict[str, Any]:
        interp = interpreter_module().Interpreter(model_path=str(artifact.path("model")))
        signatures = {}
        for name, io in interp.get_signature_list().items():
            runner = interp.get_signature_runner(name)
            details = {**runner.get_input_details(), **runner.get_output_details()}
            signatures[name] = {
                kind: [
                    {
                        "name": n,
                        "shape": [int(d) for d in details[n]["shape"]],
                        "dtype": np.dtype(details[n]["dtype"]).name,
                    }
                    for n in io[kind]
                ]
                for kind in ("inputs", "outputs")
            }
        ops: Counter[str] = op_counts(artifact.path("model").read_bytes())
        return {
            "format": "TFLite flatbuffer",
            "precision": "fp32",
            "signatures": signatures,
            "ops": dict(sorted(ops.items())),
        }


class LiteRTSession:
    def __init__(self, interp: Any, spec: LMSpec) -> None:
        self.spec = spec
        self._prefill = {b: interp.get_signature_runner(prefill_signature(b)) for b in spec.prompt_buckets}
        self._decode = interp.get_signature_runner(DECODE)

    def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, int]]:
        tokens, n = self.spec.padded(prompt, np.int64)
        out = _call(self._prefill[tokens.shape[1]], tokens=tokens)
        logits, kv = _split(out)
        return logits[0, n - 1], (kv, n)

    def decode(self, token: int, state: tuple[np.ndarray, int]) -> tuple[np.ndarray, tuple[np.ndarray, int]]:
        kv, pos = state
        out = _call(self._decode, token=np.array([[token]]), pos=np.array([pos]), kv=kv)
        logits, kv = _split(out)
        return logits[0], (kv, pos + 1)


def _call(runner: Any, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run a signature with each input cast to its declared dtype (litert-torch makes int64 ids int32)."""
    details = runner.get_input_details()
    return runner(**{k: np.ascontiguousarray(v, details[k]["dtype"]) for k, v in inputs.items()})


def _split(out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(logits, kv) from a signature's outputs (named output_0, output_1 by litert-torch)."""
    first, second = (out[k] for k in sorted(out))
    return (first, second) if first.ndim < 4 else (second, first)
