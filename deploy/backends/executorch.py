"""ExecuTorch: the hub's torch.export program lowered to a .pte, run here with executorch.runtime.

Two registered backends share this lowering (over ~500 lines: the lowering, the delegation report and the
version checks are one contract both use):
- `executorch`: the XNNPACK delegate for CPU targets (host, Android phones). fp32, and int8 through
  the XNNPACK quantizer (torchao pt2e: prepare_pt2e, calibration, convert_pt2e; symmetric, weights
  per channel) calibrated on the same training images as LiteRT's full int8.
- `executorch_coreml` (deploy/backends/executorch_coreml.py): the CoreML delegate (fp32 / fp16, compute
  units and minimum iOS from the target's `backend_options`, as for the coreml backend). coremltools converts
  on Linux, so the .pte is built and checked structurally here; it runs only where ExecuTorch's CoreML backend
  is linked (macOS, iOS).

Whatever a partitioner does not take stays in the program as calls to ExecuTorch's own CPU kernels
(the portable library, or its optimized variants where the runtime links them). On a phone those are
what makes a model slow, so compile records a delegation report (delegated and not-delegated ops by
name and count, number of delegated subgraphs) in the artifact's options, `inspect` reads the
kernel calls back from the .pte itself, and a deploy warns when anything was not delegated.

The .pte's flatbuffer identifier (bytes 4-8, "ET12" for executorch 1.x) must be the one this
runtime reads, and the ExecuTorch version that wrote it (recorded in the artifact's options) must
be one this runtime promises to load: the same release or the one before (runtime/COMPATIBILITY.md
in pytorch/executorch: a .pte runs on the runtime of its own release and of at least the next minor
or major release; there is no forward compatibility). Anything else is refused before loading.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
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
from deploy.export.quiet import Captured, quiet_converter
from deploy.io import atomic_write_bytes

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.targets import Target

log = logging.getLogger(__name__)

MODEL_FILE = "model.pte"
METHOD = "forward"
INSTALL = "pip install 'elastic-deploy[executorch]'"
INSTALL_COREML = "pip install 'elastic-deploy[executorch,coreml]'"
PROGRAM_IDENTIFIER = b"ET12"  # program.fbs file_identifier of executorch 1.x; read from the wheel when present
_MAX_METHODS = 64
# Loaded methods, process-wide: XNNPACK binds a method to the process-wide threadpool when it loads, so
# resizing the pool (another thread count) must drop every loaded method (running one then segfaults).
_METHODS: OrderedDict[tuple[Any, ...], tuple[Any, Any]] = OrderedDict()
_METHODS_LOCK = threading.Lock()
_QUANTIZATION = {
    "fp32": "none",
    "fp16": "fp16 compute (CoreML compute_precision FLOAT16)",
    "int8": "XNNPACKQuantizer symmetric int8 (weights per channel, activations per tensor), static, pt2e",
}
# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) -> numpy names.
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool", 15: "bfloat16"}  # fmt: skip
_NOT_CORE_ATEN = re.compile(r"Operator (?:torch\._ops\.)?([\w.]+) is not in Core ATen")
_MISSING_OUT = re.compile(r"[Mm]issing out variants?:?\s*\{?\s*'?([\w:.]+)")
_MISSING_KERNEL = re.compile(r"Missing operator: \[\d+\] ([\w:.]+)")
_STRUCTURAL = {"getitem"}  # tuple unpacking of multi-output ops and delegate calls: no kernel runs

# Max abs logit diff vs torch per precision. fp32 only reorders float sums; int8's bound is >= 2.5x the
# worst reference figure (as tflite's) and only catches a broken conversion: accuracy decides whether
# int8 is usable. fp16 (CoreML delegate) takes the coreml backend's bound. Figures: docs/backends.md#executorch
PARITY_ATOL: dict[str, float] = {"fp32": 1e-4, "fp16": 2e-2, "int8": 8.5}


def require_module(module: str, why: str, install: str = INSTALL) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend executorch needs {why} ({exc.name or module} is missing): {install}"
        ) from None


def executorch_version() -> str | None:
    """The installed ExecuTorch release (local suffix such as +cpu dropped), None when absent."""
    try:
        return metadata.version("executorch").split("+")[0]
    except metadata.PackageNotFoundError:
        return None


def runtime_identifier() -> bytes:
    """The program file identifier this runtime reads (program.fbs of the installed wheel)."""
    spec = importlib.util.find_spec("executorch")
    for root in (spec.submodule_search_locations or []) if spec else []:
        schema = Path(root) / "schema" / "program.fbs"
        if schema.is_file():
            match = re.search(rb'file_identifier\s+"(\w{4})"', schema.read_bytes())
            if match:
                return match.group(1)
    return PROGRAM_IDENTIFIER


def _release(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def version_problem(built_with: str | None, runtime: str) -> str | None:
    """Why a .pte written by ExecuTorch `built_with` may not load on runtime `runtime`, or None.

    The policy of pytorch/executorch runtime/COMPATIBILITY.md: same release, or the runtime is the
    next minor (or major) release after the one that wrote the file. A newer file is never promised.
    Patch releases do not change the format."""
    if not built_with:
        return None
    have, made = _release(runtime), _release(built_with)
    if have is None or made is None or have == made:
        return None
    if made > have:
        return f"it was written by ExecuTorch {built_with}, newer than this runtime ({runtime}): not promised to load"
    if have in ((made[0], made[1] + 1), (made[0] + 1, 0)):  # the next minor or major release
        return None
    return (
        f"it was written by ExecuTorch {built_with}; this runtime ({runtime}) promises to load only files of its "
        "own release and the one before"
    )


def quiet_executorch(captured: Captured | None = None) -> AbstractContextManager[None]:
    """Keep converter chatter (tqdm bars, warnings, torchao's load messages) and the C++ runtime's log
    lines (cpuinfo, operator registry) off the console unless at DEBUG; keep their text for errors."""
    loud = ("torchao", "coremltools", "executorch", "torch._export")
    return quiet_converter(
        "executorch", log, fds=(2,), streams=("stdout", "stderr"), loggers=dict.fromkeys(loud, logging.ERROR),
        ignore_warnings=True, unless_debug=True, capture=captured,
    )  # fmt: skip


def conversion_error(exc: BaseException, delegate: str) -> DeployError:
    """One-line error for a failed lowering: UnsupportedOpError where an op is named, else ExportError."""
    text = str(exc)
    match = _NOT_CORE_ATEN.search(text) or _MISSING_OUT.search(text)
    if match:
        op = match.group(1).removesuffix(".default")
        return UnsupportedOpError(
            f"executorch ({delegate}): op '{op}' is not in ExecuTorch's core ATen op set, so neither {delegate} "
            "nor ExecuTorch's portable kernels can run it; rewrite it with supported ops or use another backend "
            "for this model"
        )
    from deploy.export.hub import find_op  # here: the hub imports torch

    op = find_op(text)
    if op:
        return UnsupportedOpError(f"executorch ({delegate}): the lowering cannot handle op '{op}'; rewrite it")
    return ExportError(f"executorch ({delegate}) lowering failed ({type(exc).__name__}): {first_line(exc)}")


def _op_name(node: Any) -> str:
    name = getattr(node.target, "__name__", None) or str(node.target)
    return name.removesuffix(".default")


def delegation_report(edge: Any, delegate: str) -> dict[str, Any]:
    """Ops taken by the delegate and ops left to ExecuTorch's CPU kernels, by name and count, from the
    lowered edge program (before memory planning and out-variant conversion)."""
    gm = edge.exported_program().graph_module
    delegated: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    subgraphs = 0
    for node in gm.graph.nodes:
        if node.op == "get_attr" and node.name.startswith("lowered_module_"):
            subgraphs += 1
            lowered = getattr(gm, node.name)
            delegated.update(_op_name(n) for n in lowered.original_module.graph.nodes if n.op == "call_function")
        elif node.op == "call_function" and _op_name(node) != "executorch_call_delegate":
            name = _op_name(node)
            if name not in _STRUCTURAL:
                kept[name] += 1
    for name in _STRUCTURAL:
        delegated.pop(name, None)
    return {
        "delegate": delegate,
        "delegated_subgraphs": subgraphs,
        "delegated_ops": dict(sorted(delegated.items())),
        "not_delegated_ops": dict(sorted(kept.items())),
        "n_delegated": sum(delegated.values()),
        "n_not_delegated": sum(kept.values()),
    }


def pte_calls(data: bytes) -> tuple[Counter[str], Counter[str]]:
    """(kernel calls by op name, delegate calls by backend id) of the .pte's forward method, read back
    from the file's own flatbuffer: what the runtime will dispatch, in ExecuTorch's op names."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(data).program
    plan = next((p for p in program.execution_plan if p.name == METHOD), program.execution_plan[0])
    kernels: Counter[str] = Counter()
    delegates: Counter[str] = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            kind = type(args).__name__
            if kind == "KernelCall":
                op = plan.operators[args.op_index]
                kernels[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
            elif kind == "DelegateCall":
                delegates[plan.delegates[args.delegate_index].id] += 1
    return kernels, delegates


def fallback_warning(report: Mapping[str, Any]) -> str | None:
    """The deploy's warning when ops were left out of the delegate, else None."""
    kept = report.get("not_delegated_ops") or {}
    if not kept:
        return None
    ops = ", ".join(f"{name} ×{count}" for name, count in sorted(kept.items(), key=lambda kv: (-kv[1], kv[0])))
    return (
        f"{report.get('n_not_delegated', sum(kept.values()))} op(s) were not delegated to "
        f"{report.get('delegate', 'the delegate')} and run on ExecuTorch's portable CPU kernels, which are slow on "
        f"a phone ({ops}; {report.get('delegated_subgraphs', '?')} delegated subgraphs)"
    )


def check_header(path: Path, data: bytes) -> None:
    """Refuse a file that is not a .pte this runtime can read (identifier at bytes 4-8)."""
    ident, expected = data[4:8], runtime_identifier()
    if ident == expected:
        return
    if ident[:2] == b"ET":
        raise ExportError(
            f"{path} is ExecuTorch program format {ident.decode(errors='replace')} but this runtime "
            f"(executorch {executorch_version()}) reads {expected.decode()}: it was written by another ExecuTorch "
            f"version; compile it again here ({INSTALL})"
        )
    raise ExportError(f"{path} is not an ExecuTorch program (no ET.. identifier at bytes 4-8); compile again")


class ExecuTorchBackend(BackendBase):
    """The XNNPACK delegate on CPU."""

    name = "executorch"
    delegate = "XnnpackBackend"
    precisions: tuple[str, ...] = ("fp32", "int8")
    parity_atol = PARITY_ATOL
    needs_program = True  # lowers the torch.export program, never the ONNX

    # --- toolchain -------------------------------------------------------------------------------------

    def version(self) -> str:
        return f"executorch {executorch_version() or 'not installed'}"

    def _runtime(self) -> Any:
        with quiet_executorch():  # the first import and call log cpuinfo lines from C++
            module = require_module("executorch.runtime", "the executorch runtime to run .pte files")
            return module.Runtime.get()

    def runs_here(self) -> str | None:
        try:
            runtime = self._runtime()
        except BackendUnavailableError as exc:
            return str(exc)
        names = set(runtime.backend_registry.registered_backend_names)
        if self.delegate not in names:
            return f"the executorch runtime here has no {self.delegate} (it has {', '.join(sorted(names))})"
        return None

    def _partitioner(self, target: Target) -> Any:
        module = require_module(
            "executorch.backends.xnnpack.partition.xnnpack_partitioner", "its XNNPACK partitioner to lower models"
        )
        return module.XnnpackPartitioner()

    def _options(self, target: Target) -> dict[str, Any]:
        return {"threads": int(target.threads)}

    # --- compile ---------------------------------------------------------------------------------------

    def compile(
        self, entry: HubEntry, target: Target, out_dir: Path, calibration: np.ndarray | None = None
    ) -> Artifact:
        check_precision(self.name, self.precisions, target)
        with quiet_executorch():  # torchao logs missing CUDA extensions on import
            exir = require_module("executorch.exir", "its exir compiler to lower models")  # before writing anything
        precision = target.precision
        (sample,) = entry.reference_inputs().values()
        rows: list[np.ndarray] = []
        if precision == "int8":  # check the data before the (slow) quantisation
            where = "the calibration argument" if calibration is not None else f"hub entry {entry.key} references"
            rows = calibration_rows("executorch", sample, calibration, where)

        start = time.perf_counter()
        program = entry.load_program()
        captured = Captured()
        try:
            with quiet_executorch(captured):
                partitioner = self._partitioner(target)
                if precision == "int8":
                    program = _quantize_int8(program, sample, rows)
                edge = exir.to_edge_transform_and_lower(program, partitioner=[partitioner])
                report = delegation_report(edge, self.delegate)
                data = bytes(edge.to_executorch().buffer)
        except DeployError:
            raise
        except Exception as exc:  # exir raises SpecViolationError, RuntimeError, AssertionError, ...
            raise conversion_error(exc, self.delegate) from exc
        seconds = time.perf_counter() - start
        self._check_kernels(data)

        path = Path(out_dir) / MODEL_FILE
        atomic_write_bytes(path, data)
        artifact = Artifact(
            path=path,
            backend=self.name,
            precision=precision,
            input_names=tuple(entry.input_names),
            output_names=tuple(entry.output_names),
            options={
                **self._options(target),
                "delegate": self.delegate,
                "quantization": _QUANTIZATION[precision],
                "calibration_samples": len(rows),
                "convert_seconds": round(seconds, 2),
                "executorch": executorch_version(),
                "program_format": data[4:8].decode(errors="replace"),
                "delegation": report,
            },
        )
        if self.runs_here() is None:
            self._method(artifact)  # prove it loads here, once
        log.debug(
            "compiled %s (%s, %d bytes, %.1f s, %d/%d ops delegated) for %s",
            path, precision, len(data), seconds, report["n_delegated"],
            report["n_delegated"] + report["n_not_delegated"], target.name,
        )  # fmt: skip
        return artifact

    def _check_kernels(self, data: bytes) -> None:
        """Every op left outside the delegate needs a kernel in the runtime; name the ones without."""
        try:
            registered = set(self._runtime().operator_registry.operator_names)
        except BackendUnavailableError:
            return
        kernels, _ = pte_calls(data)
        missing = sorted(op for op in kernels if op not in registered)
        if missing:
            raise UnsupportedOpError(
                f"executorch ({self.delegate}): no ExecuTorch kernel for op '{missing[0]}'"
                + (f" (and {', '.join(missing[1:])})" if len(missing) > 1 else "")
                + f": {self.delegate} did not take it and the runtime (executorch {executorch_version()}) has no "
                "portable kernel for it; rewrite it with supported ops or use another backend for this model"
            )

    # --- run -------------------------------------------------------------------------------------------

    def _check_compatible(self, artifact: Artifact, data: bytes) -> None:
        path = Path(artifact.path)
        check_header(path, data)
        runtime = executorch_version() or "?"
        problem = version_problem(artifact.options.get("executorch"), runtime)
        if problem:
            raise ExportError(f"cannot load {path}: {problem}; compile it again here ({INSTALL})")

    def _method(self, artifact: Artifact) -> Any:
        """The artifact's loaded forward method, created once per (file version, options)."""
        path = Path(artifact.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise DeployError(f"executorch artifact {path} does not exist; compile again") from None
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, repr(sorted(artifact.options.items())))
        with _METHODS_LOCK:
            if key in _METHODS:
                _METHODS.move_to_end(key)
                return _METHODS[key][1]
        reason = self.runs_here()
        if reason is not None:
            raise BackendUnavailableError(reason)
        runtime = self._runtime()
        data = path.read_bytes()
        self._check_compatible(artifact, data)
        registered = set(runtime.operator_registry.operator_names)
        missing = sorted(op for op in pte_calls(data)[0] if op not in registered)
        if missing:
            raise UnsupportedOpError(
                f"{path} calls op '{missing[0]}', which the executorch runtime here ({executorch_version()}) has no "
                "kernel for; compile it again with this runtime's toolchain"
            )
        _use_threads(int(artifact.options.get("threads", 1)))
        captured = Captured()
        try:
            with quiet_executorch(captured):
                program = runtime.load_program(str(path))
                method = program.load_method(METHOD)
        except Exception as exc:
            missing_op = _MISSING_KERNEL.search(captured.text)
            if missing_op:
                raise UnsupportedOpError(
                    f"the executorch runtime here has no kernel for op '{missing_op.group(1)}' in {path}"
                ) from exc
            raise ExportError(f"executorch could not load {path}: {first_line(exc)}; compile again") from exc
        with _METHODS_LOCK:
            _METHODS[key] = (program, method)  # the program must outlive its method
            while len(_METHODS) > _MAX_METHODS:
                _METHODS.popitem(last=False)
        return method

    def _inputs(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[Any]:
        import torch

        missing = [n for n in artifact.input_names if n not in inputs]
        if missing:
            raise DeployError(f"inputs for {artifact.path} lack {missing}; it takes {list(artifact.input_names)}")
        # floats as the program's float32; integer inputs (token ids) keep their dtype
        arrays = [np.asarray(inputs[n]) for n in artifact.input_names]
        dtypes = [np.float32 if a.dtype.kind == "f" else a.dtype for a in arrays]
        return [torch.from_numpy(np.ascontiguousarray(a, d)) for a, d in zip(arrays, dtypes, strict=True)]

    def _check_shapes(self, artifact: Artifact, method: Any, tensors: list[Any]) -> None:
        meta = method.metadata
        for i, (name, tensor) in enumerate(zip(artifact.input_names, tensors, strict=True)):
            want = tuple(int(d) for d in meta.input_tensor_meta(i).sizes())
            if tuple(tensor.shape) != want:
                raise DataShapeError(f"input '{name}' has shape {tuple(tensor.shape)} but {artifact.path} takes {want}")

    def run(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        method = self._method(artifact)
        tensors = self._inputs(artifact, inputs)
        self._check_shapes(artifact, method, tensors)
        try:
            outputs = method.execute(tensors)
        except Exception as exc:
            raise DeployError(f"executorch failed to run {artifact.path}: {first_line(exc)}") from exc
        # copies: the outputs live in the method's memory-planned buffers, reused by the next run
        return [np.array(o.detach().numpy(), dtype=np.float32, copy=True) for o in outputs]

    def timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """method.execute with the input tensors built once (the Python binding copies them in)."""
        method = self._method(artifact)
        tensors = self._inputs(artifact, inputs)
        self._check_shapes(artifact, method, tensors)
        method.execute(tensors)  # fail here, not inside the timing loop

        def call() -> object:
            return method.execute(tensors)

        return call

    # --- inspect ---------------------------------------------------------------------------------------

    def inspect(self, artifact: Artifact) -> dict[str, Any]:
        path = Path(artifact.path)
        data = path.read_bytes()
        check_header(path, data)
        with quiet_executorch():
            kernels, delegates = pte_calls(data)
            meta = self._runtime().load_program(str(path)).metadata(METHOD)  # no method load: works for any delegate

        def spec(names: tuple[str, ...], count: int, info: Callable[[int], Any]) -> list[dict[str, Any]]:
            out = []
            for i in range(count):
                t = info(i)
                name = names[i] if i < len(names) else f"{i}"
                dtype = _SCALAR_TYPES.get(t.dtype(), "?")
                out.append({"name": name, "shape": [int(d) for d in t.sizes()], "dtype": dtype})
            return out

        report = dict(artifact.options.get("delegation") or {})
        warning = fallback_warning(report) if report else None
        return {
            "format": f"ExecuTorch .pte ({data[4:8].decode(errors='replace')})",
            "precision": artifact.precision,
            "inputs": spec(artifact.input_names, meta.num_inputs(), meta.input_tensor_meta),
            "outputs": spec(artifact.output_names, meta.num_outputs(), meta.output_tensor_meta),
            "ops": dict(sorted(kernels.items())),  # what runs outside any delegate, as the runtime sees it
            "n_ops": sum(kernels.values()),
            "delegate_calls": dict(sorted(delegates.items())),
            "delegation": report,
            "size_bytes": len(data),
            "executorch": artifact.options.get("executorch"),
            "warnings": [warning] if warning else [],
        }


def _use_threads(threads: int) -> None:
    """Size XNNPACK's process-wide threadpool before loading a method; a resize drops every loaded
    method (each holds the old pool and would crash when run)."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() == threads:
        return
    with _METHODS_LOCK:
        _METHODS.clear()
        with quiet_executorch():  # it logs the reset from C++
            portable_lib._unsafe_reset_threadpool(threads)


def _quantize_int8(program: Any, sample: np.ndarray, rows: list[np.ndarray]) -> Any:
    """Static int8 with the XNNPACK quantizer: annotate, calibrate on `rows`, convert, re-export."""
    import torch

    quantizer_module = require_module(
        "executorch.backends.xnnpack.quantizer.xnnpack_quantizer", "its XNNPACK quantizer for int8"
    )
    pt2e = require_module("torchao.quantization.pt2e.quantize_pt2e", "torchao (pt2e) for int8")
    quantizer = quantizer_module.XNNPACKQuantizer().set_global(
        quantizer_module.get_symmetric_quantization_config(is_per_channel=True)
    )
    prepared = pt2e.prepare_pt2e(program.module(), quantizer)
    with torch.no_grad():
        for row in rows:
            prepared(torch.from_numpy(row))
    converted = pt2e.convert_pt2e(prepared)
    return torch.export.export(converted, (torch.from_numpy(np.ascontiguousarray(sample, np.float32)),))
