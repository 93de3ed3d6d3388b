"""Small CUDA helpers on cuda-python's runtime bindings only (no TensorRT, no torch).

The TensorRT backend uses them to move tensors and to time engines with CUDA events, as trtexec does.
They stand alone so they can be exercised on any NVIDIA machine with `cuda-python` installed:
`time_enqueue` times whatever a callable enqueues on a stream (a device-to-device copy in the tests).

cuda-python is optional (`pip install 'elastic-deploy[tensorrt]'`), so it is imported inside functions.
Every runtime call returns a tuple whose first item is a cudaError_t; `check` turns a failure into a
DeployError that names the call and CUDA's error name.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from deploy.errors import BackendUnavailableError, DeployError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'elastic-deploy[tensorrt]' (cuda-python on a machine with an NVIDIA driver)"
MAX_RUNS_PER_ROUND = 100_000  # bounds a round whose runs take next to no GPU time
EVENT_CHUNK = 512  # timing events in flight at once: enough to keep the host ahead, few to create


def cudart() -> Any:
    """cuda-python's runtime module: `cuda.bindings.runtime` (cuda-python >= 12.6) or the older `cuda.cudart`."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        try:
            from cuda import cudart as runtime  # cuda-python < 12.6
        except ImportError:
            raise BackendUnavailableError(f"cuda-python is not installed: {INSTALL_HINT}") from None
    return runtime


def check(result: Any, what: str) -> Any:
    """The value(s) of a runtime call after its error code; DeployError naming the call when it failed."""
    rt = cudart()
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != rt.cudaError_t.cudaSuccess:
        name = rt.cudaGetErrorName(err)[1]
        name = name.decode() if isinstance(name, bytes) else str(name)
        raise DeployError(f"CUDA call {what} failed with {name} ({getattr(err, 'value', err)})")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def device_count() -> int:
    """CUDA devices visible here; 0 when cuda-python, the driver or a device is missing (never raises)."""
    try:
        rt = cudart()
        err, count = rt.cudaGetDeviceCount()
    except Exception as exc:  # no bindings, or a driver library that fails to load
        log.debug("no CUDA here: %s", exc)
        return 0
    return int(count) if err == rt.cudaError_t.cudaSuccess else 0


@functools.cache
def gpu_name(device: int = 0) -> str:
    """The device's marketing name (e.g. 'NVIDIA H100 80GB HBM3'), or 'no CUDA device'."""
    if device_count() <= device:
        return "no CUDA device"
    prop = check(cudart().cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = prop.name
    if isinstance(name, bytes | bytearray):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return str(name).strip()


class CudaStream:
    """A non-default stream (timing on the legacy default stream would serialise with everything else)."""

    def __init__(self) -> None:
        self.handle = check(cudart().cudaStreamCreate(), "cudaStreamCreate")
        self._events: list[tuple[Any, Any]] = []

    @property
    def ptr(self) -> int:
        """The stream as an integer, which TensorRT's execute_async_v3(stream_handle) takes."""
        return int(self.handle)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def event_pairs(self, n: int) -> list[tuple[Any, Any]]:
        """n (start, stop) timing events, created once and reused across calls."""
        rt = cudart()
        while len(self._events) < n:
            start = check(rt.cudaEventCreate(), "cudaEventCreate")
            stop = check(rt.cudaEventCreate(), "cudaEventCreate")
            self._events.append((start, stop))
        return self._events[:n]

    def close(self) -> None:
        rt = cudart()
        for start, stop in self._events:
            rt.cudaEventDestroy(start)
            rt.cudaEventDestroy(stop)
        self._events = []
        if self.handle is not None:
            rt.cudaStreamDestroy(self.handle)
            self.handle = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: the bindings may already be gone
            self.close()


class DeviceBuffer:
    """A device allocation of a fixed shape and dtype, with async copies from/to numpy on a stream."""

    def __init__(self, shape: tuple[int, ...], dtype: Any) -> None:
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.nbytes = int(math.prod(self.shape)) * self.dtype.itemsize
        # cudaMalloc(0) returns a null pointer; TensorRT rejects a null address, so allocate at least 1 byte
        self.ptr: int | None = int(check(cudart().cudaMalloc(max(self.nbytes, 1)), "cudaMalloc"))

    def h2d(self, array: np.ndarray, stream: CudaStream) -> np.ndarray:
        """Start copying `array` in; returns the contiguous host copy, which must live until the stream syncs."""
        host = np.ascontiguousarray(array, dtype=self.dtype)
        if host.shape != self.shape:
            raise DeployError(f"array of shape {host.shape} does not fit a device buffer of shape {self.shape}")
        kind = cudart().cudaMemcpyKind.cudaMemcpyHostToDevice
        check(cudart().cudaMemcpyAsync(self.ptr, host.ctypes.data, self.nbytes, kind, stream.handle), "cudaMemcpyAsync")
        return host

    def d2h(self, stream: CudaStream, out: np.ndarray | None = None) -> np.ndarray:
        """Start copying out into `out` (new if None); valid only after stream.synchronize()."""
        out = np.empty(self.shape, self.dtype) if out is None else out
        if not out.flags.c_contiguous or out.nbytes != self.nbytes:
            raise DeployError(f"output array {out.shape} {out.dtype} cannot receive {self.shape} {self.dtype}")
        kind = cudart().cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart().cudaMemcpyAsync(out.ctypes.data, self.ptr, self.nbytes, kind, stream.handle), "cudaMemcpyAsync")
        return out

    def free(self) -> None:
        if self.ptr is not None:
            cudart().cudaFree(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.free()


def copy_d2d(dst: DeviceBuffer, src: DeviceBuffer, stream: CudaStream) -> None:
    """Enqueue a device-to-device copy (the workload the tests time when no TensorRT engine is at hand)."""
    n = min(dst.nbytes, src.nbytes)
    kind = cudart().cudaMemcpyKind.cudaMemcpyDeviceToDevice
    check(cudart().cudaMemcpyAsync(dst.ptr, src.ptr, n, kind, stream.handle), "cudaMemcpyAsync")


def time_once(enqueue: Callable[[int], None], stream: CudaStream) -> float:
    """GPU time (ms) of one `enqueue(stream.ptr)` between two events, waited for: what a device-timed
    call returns to the shared measurement loop (deploy.latency.measure, self_timed)."""
    return time_enqueue(enqueue, stream, 1)[0]


def time_enqueue(enqueue: Callable[[int], None], stream: CudaStream, n_runs: int) -> list[float]:
    """GPU time of each of n_runs runs (ms): events recorded before and after each `enqueue(stream.ptr)`.

    All runs are enqueued back to back and the stream is synchronised once, as trtexec does: the host
    stays ahead of the GPU, so each interval is the GPU's time for one run rather than host launch
    latency plus a synchronisation. Where the host takes longer to enqueue a run than the GPU to
    execute it (tiny kernels), the intervals include that host time, as trtexec's do
    (docs/backends.md#toolchain-notes).
    The first call on a fresh stream pays for lazy module loading; warm up before timing.
    """
    rt = cudart()
    times: list[float] = []
    while len(times) < n_runs:
        pairs = stream.event_pairs(min(EVENT_CHUNK, n_runs - len(times)))
        for start, stop in pairs:
            check(rt.cudaEventRecord(start, stream.handle), "cudaEventRecord")
            enqueue(stream.ptr)
            check(rt.cudaEventRecord(stop, stream.handle), "cudaEventRecord")
        check(rt.cudaEventSynchronize(pairs[-1][1]), "cudaEventSynchronize")
        times += [float(check(rt.cudaEventElapsedTime(a, b), "cudaEventElapsedTime")) for a, b in pairs]
    return times
