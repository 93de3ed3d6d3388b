"""PyTorch on an NVIDIA GPU, replayed as a CUDA graph and timed with CUDA events.

The path a user takes on a GPU without TensorRT, and our way to measure real GPU latencies of the
blocks on a machine that has a GPU but no TensorRT (the reference for the estimated TensorRT tables).
The artifact is the hub's torch.export program (`model.pt2`); run and timing load it on the GPU in
the target's precision and capture one forward pass as a CUDA graph, so a run costs one graph launch
rather than one launch per kernel (what TensorRT's engines also avoid).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.backends.base import Artifact, BackendBase, check_precision
from deploy.errors import BackendUnavailableError, DeployError
from deploy.io import atomic_write_bytes

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.targets import Target

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt2"
# fp16 compute rounds every op; the bound leaves headroom over a trained subnet's diff (docs/backends.md#torch_cuda).
PARITY_ATOL = {"fp32": 1e-4, "fp16": 2e-2}
_MAX_GRAPHS = 64


def _torch() -> Any:
    import torch  # a core dependency; CUDA is what may be missing

    return torch


class TorchCudaBackend(BackendBase):
    name = "torch_cuda"
    precisions = ("fp32", "fp16")
    parity_atol = PARITY_ATOL
    needs_program = True
    times_on_device = True  # CUDA events

    def __init__(self) -> None:
        self._graphs: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def version(self) -> str:
        torch = _torch()
        return f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})"

    def runs_here(self) -> str | None:
        torch = _torch()
        if not torch.cuda.is_available():
            build = "a CPU-only build of torch" if torch.version.cuda is None else "no CUDA device visible"
            return f"torch_cuda needs an NVIDIA GPU and a CUDA build of torch; this machine has {build}"
        return None

    def device_clock(self) -> str:
        return f"CUDA events on {_torch().cuda.get_device_name()}"

    def compile(
        self, entry: HubEntry, target: Target, out_dir: Path, calibration: np.ndarray | None = None
    ) -> Artifact:
        check_precision(self.name, self.precisions, target)
        if entry.program_path is None or not entry.program_path.exists():
            entry.load_program()  # raises ExportError naming the fix
        path = Path(out_dir) / MODEL_FILE
        atomic_write_bytes(path, Path(entry.program_path).read_bytes())  # type: ignore[arg-type]
        shapes = {k: list(v.shape) for k, v in entry.reference_inputs().items()}
        return Artifact(
            path=path,
            backend=self.name,
            precision=target.precision,
            input_names=tuple(entry.input_names),
            output_names=tuple(entry.output_names),
            options={"cuda_graph": True, "input_shapes": shapes, "torch": _torch().__version__},
        )

    def inspect(self, artifact: Artifact) -> dict[str, Any]:
        from collections import Counter

        program = _torch().export.load(str(artifact.path))
        ops = Counter(str(n.target) for n in program.graph.nodes if n.op == "call_function")
        return {
            "format": "torch.export program (.pt2)",
            "precision": artifact.precision,
            "inputs": [{"name": n, "shape": s} for n, s in artifact.options.get("input_shapes", {}).items()],
            "outputs": [{"name": n} for n in artifact.output_names],
            "ops": dict(sorted(ops.items())),
            "n_ops": sum(ops.values()),
        }

    def _graph(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Any:
        """(graph, static inputs, static outputs) captured once per (file version, precision, shapes)."""
        reason = self.runs_here()
        if reason:
            raise BackendUnavailableError(reason)
        torch = _torch()
        path = Path(artifact.path)
        if not path.exists():
            raise DeployError(f"torch_cuda artifact {path} does not exist; compile again")
        feed = [np.ascontiguousarray(inputs[n]) for n in artifact.input_names]
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, artifact.precision, tuple(a.shape for a in feed))
        with self._lock:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                return self._graphs[key]
        dtype = torch.float16 if artifact.precision == "fp16" else torch.float32
        module = torch.export.load(str(path)).module().to("cuda", dtype)
        static_in = [torch.from_numpy(a).to("cuda", dtype) for a in feed]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):  # warm up outside the graph: allocations and lazy init happen here
                module(*static_in)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            out = module(*static_in)
        static_out = list(out) if isinstance(out, (tuple, list)) else [out]
        # The graph holds raw pointers to the weights: keep the module alive with it, or the caching
        # allocator hands the weights' memory to the next tensor (then accuracy falls to chance).
        captured = (graph, static_in, static_out, module)
        with self._lock:
            self._graphs[key] = captured
            while len(self._graphs) > _MAX_GRAPHS:
                self._graphs.popitem(last=False)
        return captured

    def run(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        torch = _torch()
        graph, static_in, static_out, _ = self._graph(artifact, inputs)
        for dst, name in zip(static_in, artifact.input_names, strict=True):
            dst.copy_(torch.from_numpy(np.ascontiguousarray(inputs[name])))
        graph.replay()
        torch.cuda.synchronize()
        return [o.float().cpu().numpy() for o in static_out]

    def timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        torch = _torch()
        graph, *_ = self._graph(artifact, inputs)

        def call() -> object:
            graph.replay()
            torch.cuda.synchronize()
            return None

        return call

    def device_timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], float]:
        """One graph replay between two CUDA events: the GPU's time for the model, as trtexec reports."""
        torch = _torch()
        graph, *_ = self._graph(artifact, inputs)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def call() -> float:
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return call
