"""LiteRT (TFLite) on CPU: litert-torch converts the hub's torch program, ai-edge-quantizer quantises it.

litert-torch from the torch subnet is the fastest, most reliable route to .tflite here
(docs/backends.md#toolchain-notes). Quantisation works on the float flatbuffer with ai-edge-quantizer
(a litert-torch dependency; no TensorFlow here). Runtime: ai-edge-litert's Interpreter with its default
XNNPACK delegate. Conversions stay in-process: memory stays flat over many conversions, and importing
litert-torch is costly (it pulls in jax and torchao), so it is paid once per process.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.backends.base import Artifact, BackendBase, calibration_rows, check_precision
from deploy.errors import (
    BackendUnavailableError,
    DataShapeError,
    DeployError,
    ExportError,
    UnsupportedOpError,
    first_line,
)
from deploy.export.quiet import quiet_converter
from deploy.io import atomic_write_bytes

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.lm.artifact import LMBackend
    from deploy.targets import Target

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8_dynamic", "int8")
MODEL_FILE = "model.tflite"
PIP_EXTRA = "pip install 'elastic-deploy[tflite]'"
_MAX_INTERPRETERS = 64  # latency tables compile many small blocks; keep memory bounded
_QUANTIZED_IO = (np.int8, np.uint8, np.int16)
_RECIPES = {  # what each precision runs (ai-edge-quantizer 0.10 recipe names), recorded in the artifact
    "fp32": "none",
    "fp16": "weight_only fp16 (float_casting), float32 compute",
    "int8_dynamic": "dynamic_wi8_afp32",
    "int8": "static_wi8_ai8",
}
_UNLOWERABLE = "Lowering not found: "  # litert-torch's message for an aten op it has no lowering for

# Max abs logit diff vs torch per precision: each is >= 2.5x the worse reference figure and above the worst
# test image. int8 parity only catches broken conversions: accuracy decides whether int8 is usable.
# Figures: docs/backends.md#tflite
PARITY_ATOL: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2, "int8_dynamic": 0.5, "int8": 5.0}


def require_module(module: str, why: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend tflite needs {why} ({exc.name or module} is missing): {PIP_EXTRA}"
        ) from None


def interpreter_module() -> Any:
    return require_module("ai_edge_litert.interpreter", "ai-edge-litert to run .tflite files")


def quiet_litert() -> AbstractContextManager[None]:
    """Keep converter chatter (progress lines, tqdm bars, warnings) off the console unless at DEBUG.

    litert-torch reads its switch from the environment at each call; C++ glog lines bypass this."""
    return quiet_converter(
        "litert-torch", log, streams=("stdout", "stderr"), env={"LITERT_TORCH_SHOW_PROGRESS": "n"},
        ignore_warnings=True, unless_debug=True,
    )  # fmt: skip


def conversion_error(exc: BaseException) -> DeployError:
    """One-line error for a failed conversion: UnsupportedOpError where an op is named, else ExportError."""
    first = first_line(exc)
    if first.startswith(_UNLOWERABLE):
        op = first[len(_UNLOWERABLE) :].strip().removesuffix(".default")
        return UnsupportedOpError(
            f"tflite: litert-torch has no lowering for op '{op}'; rewrite it with supported ops "
            "or use another backend for this model"
        )
    from deploy.export.hub import find_op  # here: the hub imports torch

    op = find_op(str(exc))
    if op:
        return UnsupportedOpError(f"tflite: the converter cannot handle op '{op}'; rewrite it in the module")
    return ExportError(f"tflite conversion failed ({type(exc).__name__}): {first}")


def _quantize(model: bytes, precision: str, rows: list[np.ndarray]) -> bytes:
    """Quantise a float flatbuffer with ai-edge-quantizer's recipes."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe

    qt = quantizer.Quantizer(bytearray(model))
    calibration = None
    if precision == "fp16":
        op = qtyping.TFLOperationName
        # Float casting is defined only for weight-carrying ops; other ops keep their float32 constants.
        for name in (op.FULLY_CONNECTED, op.CONV_2D, op.DEPTHWISE_CONV_2D, op.CONV_2D_TRANSPOSE):
            qt.add_weight_only_config(".*", name, 16, algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
    elif precision == "int8_dynamic":
        qt.load_quantization_recipe(recipe.dynamic_wi8_afp32())
    else:
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        interp = interpreter_module().Interpreter(model_content=model)
        (signature, spec), *_ = interp.get_signature_list().items()  # litert-torch writes one signature
        (name,) = spec["inputs"]
        calibration = qt.calibrate({signature: [{name: row} for row in rows]}, num_threads=1)
    result = qt.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


def op_counts(model: bytes) -> Counter[str]:
    """Builtin op counts read from the flatbuffer itself (the interpreter's view includes delegate nodes)."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    m = schema.Model.GetRootAs(model, 0)
    codes = []
    for i in range(m.OperatorCodesLength()):
        oc = m.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # codes < 127 live in the deprecated field
        name = names.get(code, str(code))
        if name == "CUSTOM" and oc.CustomCode():
            name = f"CUSTOM:{oc.CustomCode().decode()}"
        codes.append(name)
    counts: Counter[str] = Counter()
    for s in range(m.SubgraphsLength()):
        sub = m.Subgraphs(s)
        counts.update(codes[sub.Operators(j).OpcodeIndex()] for j in range(sub.OperatorsLength()))
    return counts


def _details(artifact: Artifact, details: list[dict[str, Any]], names: tuple[str, ...], what: str) -> list[Any]:
    if len(details) != len(names):
        raise DeployError(f"{artifact.path} has {len(details)} {what} but its hub entry names {list(names)}")
    return details


def _tensor_spec(detail: Mapping[str, Any]) -> dict[str, Any]:
    scale, zero_point = detail["quantization"]
    spec = {"name": detail["name"], "shape": [int(d) for d in detail["shape"]], "dtype": np.dtype(detail["dtype"]).name}
    if scale:
        spec["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
    return spec


class TFLiteBackend(BackendBase):
    name = "tflite"

    @classmethod
    def language_model(cls) -> type[LMBackend]:
        from deploy.backends.tflite_lm import LiteRTLM  # its own module: the image half imports nothing of it

        return LiteRTLM
    precisions = PRECISIONS
    parity_atol = PARITY_ATOL
    needs_program = True  # litert-torch converts the torch.export program

    def __init__(self) -> None:
        self._interpreters: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def version(self) -> str:
        parts = []
        for dist in ("litert-torch", "ai-edge-litert"):
            try:
                parts.append(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                parts.append(f"{dist} not installed")
        return " / ".join(parts)

    def runs_here(self) -> str | None:
        try:
            interpreter_module()
        except BackendUnavailableError as exc:
            return str(exc)
        return None

    def compile(
        self, entry: HubEntry, target: Target, out_dir: Path, calibration: np.ndarray | None = None
    ) -> Artifact:
        check_precision(self.name, self.precisions, target)
        litert_torch = require_module(
            "litert_torch", "litert-torch to convert models"
        )  # fail on a missing converter before writing anything
        precision = target.precision
        samples = list(entry.reference_inputs().values())
        sample = samples[0]
        rows: list[np.ndarray] = []
        if precision == "int8" and len(samples) > 1:
            raise DataShapeError(
                f"tflite int8 calibration feeds one input; hub entry {entry.key} has {len(samples)} "
                f"({', '.join(entry.input_names)}): use int8_dynamic or fp16 for this model"
            )
        if precision == "int8":  # check the data before the (slow) conversion
            where = "the calibration argument" if calibration is not None else f"hub entry {entry.key} references"
            rows = calibration_rows("tflite", sample, calibration, where)

        import torch

        start = time.perf_counter()
        module = entry.load_program().module()  # litert-torch re-exports a module, not an ExportedProgram
        for sub in module.modules():
            # The program was exported in eval mode; its unlifted module still says training=True (and
            # refuses .eval()), which only makes litert-torch warn.
            sub.training = False
        try:
            with quiet_litert():
                example = tuple(torch.from_numpy(s) for s in samples)
                model = bytes(litert_torch.convert(module, example).model_content())
                if precision != "fp32":
                    model = _quantize(model, precision, rows)
        except DeployError:
            raise
        except Exception as exc:  # the converters raise RuntimeError, AssertionError, ValueError, ...
            raise conversion_error(exc) from exc
        seconds = time.perf_counter() - start

        path = Path(out_dir) / MODEL_FILE
        atomic_write_bytes(path, model)
        probe = interpreter_module().Interpreter(model_content=model)
        io_dtypes = {np.dtype(d["dtype"]).name for d in probe.get_input_details() + probe.get_output_details()}
        artifact = Artifact(
            path=path,
            backend=self.name,
            precision=precision,
            input_names=tuple(entry.input_names),
            output_names=tuple(entry.output_names),
            options={
                "threads": int(target.threads),
                "delegate": "XNNPACK (ai-edge-litert default)",
                "quantization": _RECIPES[precision],
                "io_dtype": "/".join(sorted(io_dtypes)),  # int8 only for full-integer models: run() (de)quantises
                "calibration_samples": len(rows),
                "convert_seconds": round(seconds, 2),
                "converter": self.version(),
            },
        )
        self.interpreter(artifact)  # prove it loads here, once
        log.debug("compiled %s (%s, %d bytes, %.1f s) for %s", path, precision, len(model), seconds, target.name)
        return artifact

    def interpreter(self, artifact: Artifact) -> Any:
        """The artifact's Interpreter (tensors allocated), created once per (file version, options)."""
        path = Path(artifact.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise DeployError(f"tflite artifact {path} does not exist; compile again") from None
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, repr(sorted(artifact.options.items())))
        with self._lock:
            if key in self._interpreters:
                self._interpreters.move_to_end(key)
                return self._interpreters[key]
        module = interpreter_module()
        try:
            # Default op resolver = builtin kernels + the XNNPACK delegate, with num_threads applied to it.
            interp = module.Interpreter(model_path=str(path), num_threads=int(artifact.options.get("threads", 1)))
            interp.allocate_tensors()
        except Exception as exc:
            raise DeployError(f"ai-edge-litert could not load {path}: {first_line(exc)}; compile again") from exc
        with self._lock:
            self._interpreters[key] = interp
            while len(self._interpreters) > _MAX_INTERPRETERS:
                self._interpreters.popitem(last=False)
        return interp

    def _set_inputs(self, artifact: Artifact, interp: Any, inputs: Mapping[str, np.ndarray]) -> None:
        missing = [n for n in artifact.input_names if n not in inputs]
        if missing:
            raise DeployError(f"inputs for {artifact.path} lack {missing}; it takes {list(artifact.input_names)}")
        details = _details(artifact, interp.get_input_details(), artifact.input_names, "inputs")
        # TFLite names its tensors itself (serving_default_args_0): map by position and check shapes.
        for name, detail in zip(artifact.input_names, details, strict=True):
            value = np.asarray(inputs[name])
            if tuple(value.shape) != tuple(detail["shape"]):
                raise DataShapeError(
                    f"input '{name}' has shape {tuple(value.shape)} but {artifact.path} takes "
                    f"{tuple(int(d) for d in detail['shape'])}"
                )
            dtype = np.dtype(detail["dtype"])
            scale, zero_point = detail["quantization"]
            if dtype in _QUANTIZED_IO and scale:
                info = np.iinfo(dtype)
                value = np.clip(np.round(value / scale) + zero_point, info.min, info.max)
            interp.set_tensor(detail["index"], np.ascontiguousarray(value, dtype=dtype))

    def _outputs(self, artifact: Artifact, interp: Any) -> list[np.ndarray]:
        outputs = []
        for detail in _details(artifact, interp.get_output_details(), artifact.output_names, "outputs"):
            value = interp.get_tensor(detail["index"])
            scale, zero_point = detail["quantization"]
            if np.dtype(detail["dtype"]) in _QUANTIZED_IO and scale:
                value = (value.astype(np.float32) - zero_point) * np.float32(scale)
            outputs.append(np.asarray(value, dtype=np.float32))
        return outputs

    def run(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        interp = self.interpreter(artifact)
        self._set_inputs(artifact, interp, inputs)
        try:
            interp.invoke()
        except Exception as exc:
            raise DeployError(f"ai-edge-litert failed to run {artifact.path}: {first_line(exc)}") from exc
        return self._outputs(artifact, interp)

    def timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """interpreter.invoke() with inputs set once (outputs stay in the interpreter's buffers)."""
        interp = self.interpreter(artifact)
        self._set_inputs(artifact, interp, inputs)
        interp.invoke()  # fail here, not inside the timing loop
        return interp.invoke

    def inspect(self, artifact: Artifact) -> dict[str, Any]:
        path = Path(artifact.path)
        model = path.read_bytes()
        # No delegate: the I/O details are the file's own, not XNNPACK's rewrite.
        module = interpreter_module()
        interp = module.Interpreter(
            model_content=model,
            experimental_op_resolver_type=module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
        )
        ops = op_counts(model)
        return {
            "format": "tflite",
            "precision": artifact.precision,
            "inputs": [_tensor_spec(d) for d in interp.get_input_details()],
            "outputs": [_tensor_spec(d) for d in interp.get_output_details()],
            "ops": dict(sorted(ops.items())),
            "n_ops": sum(ops.values()),
            "size_bytes": len(model),
        }
