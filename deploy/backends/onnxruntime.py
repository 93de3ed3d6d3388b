"""ONNX Runtime (CPU): runs the hub's ONNX file as is, with the target's thread count."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from deploy.backends.base import Artifact, BackendBase, check_precision
from deploy.errors import BackendUnavailableError, DeployError, UnsupportedOpError
from deploy.io import atomic_write_bytes

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.lm.artifact import LMBackend
    from deploy.targets import Target

log = logging.getLogger(__name__)

PRECISIONS = ("fp32",)
MODEL_FILE = "model.onnx"
_MAX_SESSIONS = 64  # block tables compile many small artifacts; keep memory bounded


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend onnxruntime needs the onnxruntime package ({exc.name} is missing): "
            "pip install 'onnxruntime>=1.20' (a core dependency of elastic-deploy)"
        ) from None
    return onnxruntime


def _load_error(path: Path, exc: Exception) -> DeployError:
    text = str(exc)
    from deploy.export.hub import find_op  # here, not at the top: the hub imports torch, remote_bench must not

    op = find_op(text)
    if op:
        return UnsupportedOpError(
            f"onnxruntime {_ort().__version__} has no CPU kernel for op '{op}' in {path}; "
            "use a backend that supports it or rewrite the op in the model"
        )
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return DeployError(f"onnxruntime could not load {path}: {first}; delete the hub entry and re-export")


def onnx_summary(path: Path, precision: str) -> dict[str, Any]:
    """I/O spec and op counts of an ONNX file (what the manifest records for any ONNX artifact)."""
    from collections import Counter

    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def spec(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out.append({"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name})
        return out

    ops = Counter(n.op_type for n in model.graph.node)
    return {
        "format": f"ONNX opset {max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}",
        "precision": precision,
        "inputs": spec(model.graph.input),
        "outputs": spec(model.graph.output),
        "ops": dict(sorted(ops.items())),
        "n_ops": sum(ops.values()),
    }


class OnnxRuntimeBackend(BackendBase):
    name = "onnxruntime"

    @classmethod
    def language_model(cls) -> type[LMBackend]:
        from deploy.backends.onnxruntime_lm import OrtLM  # its own module: the image half imports nothing of it

        return OrtLM
    precisions = PRECISIONS
    parity_atol: ClassVar[Mapping[str, float]] = {"fp32": 1e-4}

    def __init__(self) -> None:
        self._sessions: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def version(self) -> str:
        return str(_ort().__version__)

    def runs_here(self) -> str | None:
        try:
            _ort()
        except BackendUnavailableError as exc:
            return str(exc)
        return None

    def inspect(self, artifact: Artifact) -> dict[str, Any]:
        return onnx_summary(Path(artifact.path), artifact.precision)

    @staticmethod
    def session_options(threads: int) -> dict[str, Any]:
        """What an artifact records: enough to build the same session again anywhere."""
        return {
            "intra_op_num_threads": int(threads),
            "inter_op_num_threads": 1,
            "execution_mode": "ORT_SEQUENTIAL",
            "graph_optimization_level": "ORT_ENABLE_ALL",
            "providers": ["CPUExecutionProvider"],
        }

    def compile(
        self, entry: HubEntry, target: Target, out_dir: Path, calibration: np.ndarray | None = None
    ) -> Artifact:
        check_precision(self.name, self.precisions, target)
        ort = _ort()  # fail on a missing runtime before writing anything
        path = Path(out_dir) / MODEL_FILE
        atomic_write_bytes(path, entry.onnx_path.read_bytes())
        artifact = Artifact(
            path=path,
            backend=self.name,
            precision=target.precision,
            input_names=tuple(entry.input_names),
            output_names=tuple(entry.output_names),
            options={**self.session_options(target.threads), "onnxruntime": ort.__version__},
        )
        self.session(artifact)  # prove it loads here, once
        log.debug("compiled %s for %s (%d threads)", path, target.name, target.threads)
        return artifact

    def session(self, artifact: Artifact) -> Any:
        """The artifact's InferenceSession, created once per (file version, options)."""
        path = Path(artifact.path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise DeployError(f"onnxruntime artifact {path} does not exist; compile again") from None
        opts = artifact.options
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, repr(sorted(opts.items())))
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
        ort = _ort()
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(opts.get("intra_op_num_threads", 1))
        so.inter_op_num_threads = int(opts.get("inter_op_num_threads", 1))
        so.execution_mode = getattr(ort.ExecutionMode, opts.get("execution_mode", "ORT_SEQUENTIAL"))
        so.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, opts.get("graph_optimization_level", "ORT_ENABLE_ALL")
        )
        so.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not through logging
        providers = list(opts.get("providers", ["CPUExecutionProvider"]))
        try:
            session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:  # ORT raises its own pybind exception types
            raise _load_error(path, exc) from exc
        with self._lock:
            self._sessions[key] = session
            while len(self._sessions) > _MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return session

    def _feed(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in artifact.input_names if n not in inputs]
        if missing:
            raise DeployError(f"inputs for {artifact.path} lack {missing}; it takes {list(artifact.input_names)}")
        return {n: np.ascontiguousarray(inputs[n]) for n in artifact.input_names}

    def run(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        session = self.session(artifact)
        try:
            outputs = session.run(list(artifact.output_names), self._feed(artifact, inputs))
        except DeployError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DeployError(f"onnxruntime failed to run {artifact.path}: {first}") from exc
        return [np.asarray(o) for o in outputs]

    def timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """One inference with inputs bound once (IOBinding: cheaper per run than session.run, because
        numpy inputs are not re-wrapped each call; docs/backends.md#toolchain-notes)."""
        session = self.session(artifact)
        feed = self._feed(artifact, inputs)
        binding = session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for name in artifact.output_names:
            binding.bind_output(name, "cpu")  # outputs are still produced on every run
        session.run_with_iobinding(binding)  # fail here, not inside the timing loop

        def call() -> object:
            session.run_with_iobinding(binding)
            return binding

        return call
