"""TensorRT (NVIDIA GPUs, Jetson): builds a serialized engine from the hub's ONNX file and times it
with CUDA events, as trtexec does.

An engine is specific to the GPU model and TensorRT version that built it, so it is built on the
device itself; where TensorRT or a GPU is missing, compile raises BackendUnavailableError and the
pipeline packages the ONNX file with the command that builds the engine on the device.

Parity tolerances (PARITY_ATOL, max abs diff on logits against the torch references; docs/backends.md#tensorrt):
- fp32: TF32 is switched OFF for fp32 builds (TensorRT enables it by default on Ampere and later,
  which is far off fp32 on logits); what remains is fused kernels summing in another order.
- fp16: fp16 activations through several LayerNorm/softmax blocks.
- int8: entropy-calibrated int8 with fp16 fallback; a loose bound, top-1 agreement is what matters
  and the accuracy step measures it.

Latency tables: TensorRT (its Myelin backend) fuses whole transformer blocks, attention and MLP, and
may fuse across block boundaries in a whole subnet. A block engine measured alone therefore is not
the cost of that block inside a subnet, and block-sum predictions may mislead more than on CPU
runtimes; rely on the table's calibration and validation figures, not on the raw block sum.

The implicit-quantisation API (IInt8EntropyCalibrator2) is deprecated since TensorRT 10.1 (explicit
Q/DQ models are its successor) but still builds int8 engines in TensorRT 10.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from deploy import workspace
from deploy.backends import cuda
from deploy.backends.base import Artifact, BackendBase, backend_options, check_precision
from deploy.errors import (
    BackendUnavailableError,
    DataShapeError,
    DeployError,
    ExportError,
    MeasurementError,
    UnsupportedOpError,
    UnsupportedPrecisionError,
)
from deploy.io import atomic_write_bytes

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.targets import Target

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
PARITY_ATOL = {"fp32": 1e-3, "fp16": 2e-2, "int8": 0.25}
ENGINE_FILE = "model.engine"
CALIBRATION_CACHE = "calibration.cache"
INSTALL = (
    "on an NVIDIA machine: pip install 'elastic-deploy[tensorrt]' (TensorRT >= 10 with cuda-python); "
    "on a Jetson, JetPack ships TensorRT (add cuda-python with pip)"
)
_MAX_ENGINES = 32  # each execution context holds device memory for its activations
_UNSUPPORTED = re.compile(r"No importer registered for op: (\w+)|operator: (\w+)")


def _trt() -> Any:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: a wheel whose CUDA libraries do not load
        raise BackendUnavailableError(
            f"the tensorrt package is not installed or does not load ({exc}); {INSTALL}"
        ) from None
    return tensorrt


def unavailable_reason() -> str | None:
    """None when engines can be built and run here; else what is missing and how to get it."""
    missing = []
    try:
        _trt()
    except BackendUnavailableError:
        missing.append("TensorRT (the tensorrt package) is not installed")
    try:
        cuda.cudart()
        if cuda.device_count() == 0:
            missing.append("no CUDA device is visible (no NVIDIA GPU or driver)")
    except BackendUnavailableError:
        missing.append("cuda-python is not installed")
    return f"backend tensorrt cannot run here: {'; '.join(missing)}; {INSTALL}" if missing else None


@functools.cache
def _logger() -> Any:
    """One logger for every builder and runtime: TensorRT needs it to outlive them all."""
    trt = _trt()
    return trt.Logger(trt.Logger.WARNING)  # to stderr; INFO and VERBOSE are thousands of lines per build


def calibration_batches(data: np.ndarray, input_shape: Sequence[int], n: int) -> list[np.ndarray]:
    """Up to n calibration batches, each exactly input_shape (float32), from N × input_shape data.

    For a batch-1 input, N × input_shape[1:] (N images without the batch axis) is accepted too.
    """
    arr = np.asarray(data, dtype=np.float32)
    shape = tuple(int(d) for d in input_shape)
    if arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
        samples = arr
    elif shape and shape[0] == 1 and arr.shape[1:] == shape[1:]:
        samples = arr[:, None]
    else:
        raise DataShapeError(
            f"calibration data has shape {arr.shape} but the engine's input is {shape}: "
            f"pass N × {shape} (or N × {shape[1:]}) float32 images"
        )
    if len(samples) == 0 or n < 1:
        raise DataShapeError(f"calibration data has no images (shape {arr.shape}); pass at least one")
    return [np.ascontiguousarray(s) for s in samples[:n]]


def parse_failure(messages: Sequence[str], path: Path, version: str) -> DeployError:
    """The error for an ONNX file TensorRT's parser rejected, from its errors' text (code and description)."""
    for text in messages:
        match = _UNSUPPORTED.search(text)
        if "UNSUPPORTED_NODE" in text and match:
            op = match.group(1) or match.group(2)
            return UnsupportedOpError(
                f"tensorrt {version} cannot import op '{op}' in {path}; use another backend or rewrite the op"
            )
    first = next((m.strip().splitlines()[0] for m in messages if m.strip()), "no error reported")
    return ExportError(f"tensorrt {version} could not parse {path}: {first}; delete the hub entry and re-export")


def layer_counts(engine_information: str) -> dict[str, int]:
    """Layers by type from the engine inspector's JSON (types need ProfilingVerbosity.DETAILED at build)."""
    layers = json.loads(engine_information).get("Layers", [])
    counts = Counter(x.get("LayerType", "unknown") if isinstance(x, dict) else "unknown (names only)" for x in layers)
    return dict(sorted(counts.items()))


def _calibrator(trt: Any, batches: dict[str, list[np.ndarray]], cache_path: Path, stream: cuda.CudaStream) -> Any:
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise UnsupportedPrecisionError(
            f"TensorRT {trt.__version__} has no implicit int8 calibration; set precision: fp16 in the target"
        )

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.buffers = {name: cuda.DeviceBuffer(b[0].shape, np.float32) for name, b in batches.items()}
            self.n = min(len(b) for b in batches.values())
            self.index = 0

        def get_batch_size(self) -> int:
            return 1  # explicit-batch network: each batch is one whole input tensor

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.index >= self.n:
                return None
            keep = [self.buffers[name].h2d(batches[name][self.index], stream) for name in names]
            stream.synchronize()
            del keep
            self.index += 1
            return [int(self.buffers[name].ptr) for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return None  # always calibrate: a cache left by another model or data set would be silently wrong

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(cache_path, bytes(cache))

    return EntropyCalibrator()


def timing_cache_path(target: Target) -> Path:
    """Kept next to the latency table: rebuilding many block engines for one target reuses tactic timings."""
    return workspace.tables_dir() / f"{target.name}.trt-timing-cache"


@dataclass
class _Loaded:
    engine: Any
    context: Any
    buffers: dict[str, cuda.DeviceBuffer] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)  # an execution context is not re-entrant


class TensorRTOptions(BaseModel):
    """`backend_options` of a tensorrt target."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    workspace_mib: int = Field(1024, ge=16)
    builder_optimization_level: int = Field(3, ge=0, le=5)
    calibration_images: int = Field(256, ge=8)  # int8 entropy calibration, drawn from the training split
    warmup_runs: int = Field(50, ge=0)  # benchmark like trtexec: warm-up, then ≥min_runs and ≥min_time_s
    min_runs: int = Field(200, ge=1)
    min_time_s: float = Field(1.0, ge=0)


class TensorRTBackend(BackendBase):
    name = "tensorrt"
    precisions = PRECISIONS
    parity_atol = PARITY_ATOL
    options_model = TensorRTOptions
    needs_program = False  # the ONNX parser reads the hub ONNX
    compiles_on_device = True  # an engine is built for the GPU it runs on
    times_on_device = True  # CUDA events

    def __init__(self) -> None:
        self._engines: OrderedDict[tuple[Any, ...], _Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._stream: cuda.CudaStream | None = None
        self._runtime: Any = None

    def version(self) -> str:
        try:
            return str(_trt().__version__)
        except BackendUnavailableError:
            return "tensorrt not installed"

    def runs_here(self) -> str | None:
        return unavailable_reason()

    def compile(
        self, entry: HubEntry, target: Target, out_dir: Path, calibration: np.ndarray | None = None
    ) -> Artifact:
        check_precision(self.name, self.precisions, target)
        reason = self.runs_here()
        if reason:
            raise BackendUnavailableError(
                f"{reason}. An engine is specific to its GPU and TensorRT version, so build it on the device "
                f"from the packaged ONNX: elastic-deploy compile --target {target.name} <dist folder>/model.onnx"
            )
        trt, opts, precision = _trt(), backend_options(self, target), target.precision
        builder = trt.Builder(_logger())
        network = builder.create_network(0)  # TensorRT 10: always explicit batch; not STRONGLY_TYPED, flags decide
        parser = trt.OnnxParser(network, _logger())
        if not parser.parse_from_file(str(entry.onnx_path)):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            raise parse_failure([f"{e.code()}: {e}" for e in errors], entry.onnx_path, trt.__version__)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_mib << 20)
        config.builder_optimization_level = opts.builder_optimization_level
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer types for inspect(); no runtime cost
        if precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32 (see PARITY_ATOL)
        else:
            config.set_flag(trt.BuilderFlag.FP16)  # int8 falls back to fp16 where int8 has no kernel
        refs = entry.reference_inputs()
        profile, dynamic = builder.create_optimization_profile(), False
        for i in range(network.num_inputs):
            inp = network.get_input(i)
            if any(d < 0 for d in inp.shape):  # a static input's shape is fixed already
                shape = tuple(refs[inp.name].shape)
                profile.set_shape(inp.name, shape, shape, shape)  # min = opt = max: the shape measured
                dynamic = True
        if dynamic:
            config.add_optimization_profile(profile)
        out_dir = Path(out_dir)
        options: dict[str, Any] = {}
        calibrator = None  # referenced until the build ends: TensorRT calls back into it
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            batches = self._calibration(entry, refs, calibration, opts.calibration_images)
            calibrator = _calibrator(trt, batches, out_dir / CALIBRATION_CACHE, self._stream_())
            config.int8_calibrator = calibrator
            options.update(calibration_images=calibrator.n, calibration_cache=str(out_dir / CALIBRATION_CACHE))
        cache_path = timing_cache_path(target)
        self._attach_timing_cache(config, cache_path)
        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ExportError(
                f"TensorRT {trt.__version__} could not build {entry.onnx_path} at {precision} "
                f"(workspace {opts.workspace_mib} MiB); see the TensorRT errors logged above"
            )
        engine_path = out_dir / ENGINE_FILE
        atomic_write_bytes(engine_path, bytes(serialized))
        self._save_timing_cache(config, cache_path)
        log.info("built %s for %s at %s in %.1f s", engine_path, target.name, precision, time.perf_counter() - start)
        return Artifact(
            path=engine_path,
            backend=self.name,
            precision=precision,
            input_names=tuple(entry.input_names),
            output_names=tuple(entry.output_names),
            options={
                "precision": precision,
                "tf32": precision != "fp32",
                "workspace_mib": opts.workspace_mib,
                "builder_optimization_level": opts.builder_optimization_level,
                "tensorrt": trt.__version__,
                "gpu": cuda.gpu_name(),
                "timing_cache": str(cache_path),
                **options,
            },
        )

    @staticmethod
    def _calibration(
        entry: HubEntry, refs: Mapping[str, np.ndarray], data: np.ndarray | None, n: int
    ) -> dict[str, list[np.ndarray]]:
        if data is None:  # enough for latency tables, whose numbers do not depend on the values
            return {name: calibration_batches(refs[name], refs[name].shape, n) for name in entry.input_names}
        if len(entry.input_names) != 1:
            raise DataShapeError(
                f"one calibration array cannot feed the {len(entry.input_names)} inputs of {entry.onnx_path}"
            )
        name = entry.input_names[0]
        return {name: calibration_batches(data, refs[name].shape, n)}

    @staticmethod
    def _attach_timing_cache(config: Any, path: Path) -> None:
        blob = path.read_bytes() if path.exists() else b""
        try:
            accepted = config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
        except Exception as exc:  # a truncated file: start afresh rather than fail the build
            log.debug("unreadable TensorRT timing cache %s: %s", path, exc)
            accepted = False
        if not accepted:  # False: written by another GPU or TensorRT version
            log.warning("TensorRT timing cache %s does not fit this GPU or TensorRT; starting a new one", path)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    @staticmethod
    def _save_timing_cache(config: Any, path: Path) -> None:
        cache = config.get_timing_cache()
        if path.exists():  # another build may have saved since ours loaded it: keep its tactics too
            with contextlib.suppress(Exception):
                cache.combine(config.create_timing_cache(path.read_bytes()), False)
        atomic_write_bytes(path, bytes(cache.serialize()))

    def _stream_(self) -> cuda.CudaStream:
        if self._stream is None:
            self._stream = cuda.CudaStream()
        return self._stream

    def _load(self, artifact: Artifact) -> _Loaded:
        """The artifact's engine and execution context, deserialized once per file version."""
        reason = self.runs_here()
        if reason:
            raise BackendUnavailableError(f"cannot run TensorRT engine {artifact.path} here: {reason}")
        path = Path(artifact.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise DeployError(f"TensorRT engine {path} does not exist; compile again") from None
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
            trt = _trt()
            self._runtime = self._runtime or trt.Runtime(_logger())
            engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise DeployError(
                    f"TensorRT {trt.__version__} could not load {path} (built for {artifact.options.get('gpu', '?')} "
                    f"with TensorRT {artifact.options.get('tensorrt', '?')}); rebuild it on this device"
                )
            loaded = _Loaded(engine, engine.create_execution_context())
            self._engines[key] = loaded
            while len(self._engines) > _MAX_ENGINES:
                self._engines.popitem(last=False)
        return loaded

    def _bind(self, loaded: _Loaded, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Copy inputs in and set every tensor address; returns host copies that must outlive the stream sync."""
        trt, engine, context, stream = _trt(), loaded.engine, loaded.context, self._stream_()
        missing = [n for n in artifact.input_names if n not in inputs]
        if missing:
            raise DeployError(f"inputs for {artifact.path} lack {missing}; it takes {list(artifact.input_names)}")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        hosts = []
        for name in [n for n in names if is_input[n]] + [n for n in names if not is_input[n]]:
            if is_input[name] and any(d < 0 for d in engine.get_tensor_shape(name)):
                context.set_input_shape(name, tuple(inputs[name].shape))
            shape, dtype = tuple(context.get_tensor_shape(name)), np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            buf = loaded.buffers.get(name)
            if buf is None or buf.shape != shape or buf.dtype != dtype:
                buf = loaded.buffers[name] = cuda.DeviceBuffer(shape, dtype)
            if is_input[name]:
                hosts.append(buf.h2d(inputs[name], stream))
            context.set_tensor_address(name, int(buf.ptr))
        return hosts

    def run(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        loaded, stream = self._load(artifact), self._stream_()
        with loaded.lock:
            keep = self._bind(loaded, artifact, inputs)
            if not loaded.context.execute_async_v3(stream.ptr):
                raise DeployError(f"TensorRT failed to enqueue {artifact.path}; see the TensorRT errors logged above")
            unknown = [n for n in artifact.output_names if n not in loaded.buffers]
            if unknown:
                raise DeployError(f"engine {artifact.path} has no outputs named {unknown}; compile again")
            outputs = [loaded.buffers[n].d2h(stream) for n in artifact.output_names]
            stream.synchronize()
        del keep
        return outputs

    def _enqueue(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[int], None]:
        loaded = self._load(artifact)
        with loaded.lock:
            self._bind(loaded, artifact, inputs)
            self._stream_().synchronize()
        context = loaded.context

        def enqueue(stream_ptr: int) -> None:
            if not context.execute_async_v3(stream_ptr):
                raise MeasurementError(f"TensorRT failed to enqueue {artifact.path}; run it once on its own to debug")

        return enqueue

    def timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """Enqueue + stream sync, for the host wall clock (device_timed_call's CUDA events are preferred)."""
        enqueue, stream = self._enqueue(artifact, inputs), self._stream_()

        def call() -> object:
            enqueue(stream.ptr)
            stream.synchronize()
            return None

        call()  # fail here, not inside the timing loop
        return call

    def device_clock(self) -> str:
        return f"CUDA events on {cuda.gpu_name()}, TensorRT {self.version()}"

    def device_timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], float]:
        """One enqueue between two CUDA events (GPU time, as trtexec reports), for the shared loop."""
        enqueue, stream = self._enqueue(artifact, inputs), self._stream_()
        cuda.time_once(enqueue, stream)  # fail here, not inside the timing loop
        return lambda: cuda.time_once(enqueue, stream)

    def inspect(self, artifact: Artifact) -> dict[str, Any]:
        path = Path(artifact.path)
        info: dict[str, Any] = {
            "format": "TensorRT engine",
            "precision": artifact.precision,
            "file_bytes": path.stat().st_size if path.exists() else None,
            "options": dict(artifact.options),
        }
        reason = self.runs_here()
        if reason:
            return {**info, "note": f"not inspected: {reason}"}
        trt, engine = _trt(), self._load(artifact).engine
        info.update(tensorrt=trt.__version__, inputs=[], outputs=[], n_layers=int(engine.num_layers))
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = engine.get_tensor_dtype(name)
            try:
                dtype_name = np.dtype(trt.nptype(dtype)).name
            except TypeError:  # bf16, fp8, int4 have no numpy type
                dtype_name = str(dtype)
            io = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
            info[io].append({"name": name, "shape": list(engine.get_tensor_shape(name)), "dtype": dtype_name})
        try:
            counts = layer_counts(
                engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
            )
            info.update(ops=counts, n_ops=sum(counts.values()))
        except Exception as exc:  # optional detail: the I/O spec above is what the manifest needs
            log.debug("engine inspector failed on %s: %s", path, exc)
        return info
