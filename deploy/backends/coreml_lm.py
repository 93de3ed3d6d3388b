"""Language models on Core ML: a stateful ML program whose KV cache is its state.

One .mlpackage holding several functions that share the state `kv` (2L, heads, max_context, head_dim) fp16
(Core ML states are fp16):

    prefill_<b>: tokens (1, b) int32, pos (1,) int32 -> logits (1, b, vocab); writes positions pos … pos+b−1
    decode:      tokens (1, 1) int32, pos (1,) int32 -> logits (1, 1, vocab); writes position pos

Each function is the decoder's `chunk_static` (deploy/families/lm_blocks.py) at one length, exported with
torch.export (the route that converts here) with the cache as a mutated buffer, converted with
`ct.StateType`, then merged by `ct.utils.save_multifunction` (weights deduplicated). Needs iOS 18 /
macOS 15 (stateful programs). Prediction is macOS-only: on Linux the package is converted and inspected
(functions, inputs, outputs, states, the precision of every op), and its session is not opened.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from deploy.backends.base import check_precision
from deploy.backends.coreml import (
    ARRAY_DTYPES,
    COMPUTE_PRECISION,
    MIL_FLOATS,
    convert_error,
    coremltools_module,
    quiet_coreml,
    save_package,
)
from deploy.errors import BackendUnavailableError, DeployError
from deploy.families.lm_blocks import Decoder
from deploy.lm.artifact import LMArtifact, LMSpec, write_tokenizer
from deploy.lm.tokenizer import ByteTokenizer

if TYPE_CHECKING:
    from deploy.targets import Target

MODEL_FILE = "model.mlpackage"
DECODE = "decode"
STATE = "kv"
MIN_TARGET = "iOS18"  # stateful ML programs


def prefill_function(bucket: int) -> str:
    return f"prefill_{bucket}"


class StatefulChunk(nn.Module):
    """`chunk_static` with the cache held as a buffer the program mutates (Core ML's state)."""

    def __init__(self, decoder: Decoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.register_buffer(STATE, torch.zeros(decoder.cache_shape(decoder.max_context), dtype=torch.float16))

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        logits, kv = self.decoder.chunk_static(tokens, pos, self.kv.float())
        self.kv.copy_(kv.half())
        return logits


def _function_summary(function: Any) -> dict[str, Any]:
    """Op counts and the precision of every compute op of one function (consts and casts aside)."""
    operations = function.block_specializations[function.opset].operations
    ops = Counter(op.type for op in operations if op.type != "const")
    dtypes: Counter[str] = Counter()
    for op in operations:
        if op.type not in ("const", "cast"):
            outs = (o.type.tensorType.dataType for o in op.outputs)
            dtypes.update(MIL_FLOATS[d] for d in outs if d in MIL_FLOATS)
    return {"ops": dict(sorted(ops.items())), "compute_dtypes": dict(sorted(dtypes.items()))}


def _features(features: Any, kind: str) -> list[dict[str, Any]]:
    out = []
    for f in features:
        array = f.type.stateType.arrayType if kind == "state" else f.type.multiArrayType
        dtype = ARRAY_DTYPES.get(array.dataType, str(array.dataType))
        out.append({"name": f.name, "shape": [int(d) for d in array.shape], "dtype": dtype})
    return out


class CoreMLLM:
    name: ClassVar[str] = "coreml"
    cache: ClassVar[str] = "state"
    parity_atol: ClassVar[float] = 5e-2  # fp16 compute and state

    def runs_here(self) -> str | None:
        if sys.platform != "darwin":
            return "Core ML programs run only on macOS; the LM package was converted and inspected instead"
        return None

    def compile_lm(
        self, decoder: Decoder, target: Target, out_dir: Path, *, buckets: Sequence[int], tokenizer: ByteTokenizer
    ) -> LMArtifact:
        check_precision(self.name, ("fp16", "fp32"), target)
        ct = coremltools_module()
        buckets = tuple(sorted(set(buckets)))
        start = time.perf_counter()
        decoder = decoder.eval()
        state = ct.StateType(
            wrapped_type=ct.TensorType(shape=decoder.cache_shape(decoder.max_context), dtype=np.float16), name=STATE
        )
        tmp = Path(tempfile.mkdtemp(prefix="coreml-lm-"))
        try:
            desc = ct.utils.MultiFunctionDescriptor()
            for name, length in [*((prefill_function(b), b) for b in buckets), (DECODE, 1)]:
                program = torch.export.export(
                    StatefulChunk(decoder).eval(), (torch.zeros(1, length, dtype=torch.long), torch.tensor([0]))
                ).run_decompositions({})
                with quiet_coreml():
                    model = ct.convert(
                        program,
                        convert_to="mlprogram",
                        inputs=[
                            ct.TensorType(name="tokens", shape=(1, length), dtype=np.int32),
                            ct.TensorType(name="pos", shape=(1,), dtype=np.int32),
                        ],
                        outputs=[ct.TensorType(name="logits", dtype=np.float32)],
                        states=[state],
                        minimum_deployment_target=getattr(ct.target, MIN_TARGET),
                        compute_precision=getattr(ct.precision, COMPUTE_PRECISION[target.precision]),
                    )
                model.save(str(tmp / f"{name}.mlpackage"))
                desc.add_function(str(tmp / f"{name}.mlpackage"), src_function_name="main", target_function_name=name)
            desc.default_function_name = DECODE
            ct.utils.save_multifunction(desc, str(tmp / MODEL_FILE))
            out_dir = Path(out_dir)
            save_package(_Saved(tmp / MODEL_FILE), out_dir / MODEL_FILE)
        except DeployError:
            raise
        except Exception as exc:
            raise convert_error(exc, str(ct.__version__)) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        two_l, heads, _, head_dim = decoder.cache_shape(0)
        spec = LMSpec(
            backend=self.name,
            cache="state",
            precision=target.precision,
            vocab=decoder.vocab,
            max_context=decoder.max_context,
            prompt_buckets=buckets,
            kv_shape=(two_l, heads, head_dim),
            files={"model": MODEL_FILE},
            tokenizer_sha256=write_tokenizer(out_dir, tokenizer),
            options={
                "state_dtype": "float16",
                "minimum_deployment_target": MIN_TARGET,
                "coremltools": str(ct.__version__),
                "convert_seconds": round(time.perf_counter() - start, 2),
            },
        )
        return LMArtifact(out_dir, spec).save()

    def inspect(self, artifact: LMArtifact) -> dict[str, Any]:
        ct = coremltools_module()
        spec = ct.models.MLModel(str(artifact.path("model")), skip_model_load=True).get_spec()
        functions = {}
        for f in spec.description.functions:
            functions[f.name] = {
                "inputs": _features(f.input, "input"),
                "outputs": _features(f.output, "output"),
                "states": _features(f.state, "state"),
                **_function_summary(spec.mlProgram.functions[f.name]),
            }
        return {
            "format": f"mlprogram (spec v{spec.specificationVersion}), multifunction, stateful",
            "default_function": spec.description.defaultFunctionName,
            "functions": functions,
        }

    def open(self, artifact: LMArtifact) -> CoreMLSession:
        reason = self.runs_here()
        if reason is not None:
            raise BackendUnavailableError(reason)
        return CoreMLSession(artifact)  # pragma: no cover (macOS only)


class _Saved:
    """A saved package as something `save_package` can save again (it moves folders atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, dest: str) -> None:
        shutil.copytree(self.path, dest)


class CoreMLSession:  # pragma: no cover (macOS only: never run on this project's Linux machines)
    """Each function loaded as its own MLModel; one state made by the decode function carries the cache."""

    def __init__(self, artifact: LMArtifact) -> None:
        ct = coremltools_module()
        path, spec = str(artifact.path("model")), artifact.spec
        self.spec = spec
        self._decode = ct.models.MLModel(path, function_name=DECODE)
        self._prefill = {b: ct.models.MLModel(path, function_name=prefill_function(b)) for b in spec.prompt_buckets}

    def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, tuple[Any, int]]:
        tokens, n = self.spec.padded(prompt, np.int32)
        state = self._decode.make_state()
        out = self._prefill[tokens.shape[1]].predict({"tokens": tokens, "pos": np.zeros(1, np.int32)}, state=state)
        return np.asarray(out["logits"])[0, n - 1], (state, n)

    def decode(self, token: int, state: tuple[Any, int]) -> tuple[np.ndarray, tuple[Any, int]]:
        kv, pos = state
        out = self._decode.predict(
            {"tokens": np.array([[token]], np.int32), "pos": np.array([pos], np.int32)}, state=kv
        )
        return np.asarray(out["logits"])[0, -1], (kv, pos + 1)
