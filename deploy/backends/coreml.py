"""Core ML (mlprogram): converts the hub's torch.export program with coremltools; predicts on macOS only.

coremltools converts on any OS, but its runtime (libcoremlpython) ships for macOS only, so on Linux
an artifact is checked structurally (`check_spec`: names, shapes, I/O dtypes, compute precision read
back from the .mlpackage) instead of by parity. The program comes from torch.export, not
torch.jit.trace: tracing nn.MultiheadAttention fails in coremltools (docs/backends.md#toolchain-notes).

Parity on macOS: `FP16_PARITY_ATOL` absolute on logits for fp16 artifacts, loose enough for fp16
rounding in every linear, layer norm and softmax (and the Neural Engine's reordered reductions), tight
enough that a wrong conversion (off by O(logit)) fails; fp32 artifacts run with CPU_ONLY match within
`FP32_PARITY_ATOL`. How both were set: docs/backends.md#coreml.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from deploy.backends.base import Artifact, BackendBase, backend_options, check_precision
from deploy.errors import BackendUnavailableError, DeployError, ExportError, UnsupportedOpError, first_line
from deploy.export.quiet import quiet_converter

if TYPE_CHECKING:
    from deploy.export.hub import HubEntry
    from deploy.lm.artifact import LMBackend
    from deploy.targets import Target

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16")
MODEL_FILE = "model.mlpackage"
FP16_PARITY_ATOL = 2e-2
FP32_PARITY_ATOL = 1e-4
INSTALL = "pip install 'elastic-deploy[coreml]'"
_META = "elastic_deploy."  # prefix of what compile records in the package's user-defined metadata
_MAX_MODELS = 64
COMPUTE_PRECISION = {"fp16": "FLOAT16", "fp32": "FLOAT32"}
MIL_FLOATS = {10: "float16", 11: "float32"}  # MILSpec.DataType
ARRAY_DTYPES = {65552: "float16", 65568: "float32", 65600: "float64", 131080: "int8", 131104: "int32"}  # ArrayDataType
_OP_PATTERNS = (
    re.compile(r"convert function for op '([\w:.]+)' not implemented"),  # TorchScript frontend
    re.compile(r"Unsupported fx node ([\w:.]+)"),  # torch.export frontend
)


def coremltools_module() -> Any:
    """coremltools, imported lazily: it is an optional extra and takes seconds to import."""
    ct_logger = logging.getLogger("coremltools")
    level = ct_logger.level
    if sys.platform != "darwin":  # its first import warns "Failed to load _MLModelProxy" repeatedly: expected here
        ct_logger.setLevel(logging.ERROR)
    try:
        import coremltools
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend coreml needs coremltools ({exc.name or 'coremltools'} is missing): {INSTALL}"
        ) from None
    finally:
        ct_logger.setLevel(level)
    return coremltools


def convert_error(exc: Exception, version: str) -> DeployError:
    from deploy.export.hub import find_op  # here, not at the top: the hub imports torch

    text = str(exc)
    op = next((m.group(1) for p in _OP_PATTERNS if (m := p.search(text))), None) or find_op(text)
    if op:
        return UnsupportedOpError(
            f"the coreml backend (coremltools {version}) cannot convert op '{op}'; "
            "use another backend or rewrite the op in the model"
        )
    return ExportError(f"coremltools {version} could not convert the program: {first_line(exc)}")


def quiet_coreml() -> AbstractContextManager[None]:
    """ct.convert draws tqdm bars on stderr (no switch for them) and logs every op and removed const
    at INFO (hundreds of lines for a small subnet): keep both out of the CLI; other stderr text goes to debug."""
    return quiet_converter("coremltools", log, streams=("stderr",), loggers={"coremltools": logging.WARNING})


def save_package(model: Any, path: Path) -> None:
    """Save the .mlpackage (a folder) beside its final place, then rename it in."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        staged = tmp_dir / path.name  # coremltools insists on the .mlpackage suffix
        model.save(str(staged))
        if path.exists():  # a folder cannot be replaced in one rename: move the old one aside first
            trash = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.trash")
            os.rename(path, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(staged, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _feature_spec(features: Any) -> list[dict[str, Any]]:
    arrays = [(f.name, f.type.multiArrayType) for f in features]
    return [{"name": n, "shape": list(a.shape), "dtype": ARRAY_DTYPES.get(a.dataType, "?")} for n, a in arrays]


def _precision(operations: Any) -> tuple[str, dict[str, int]]:
    """The precision the program computes in, from the dtypes of what its compute ops produce
    (consts and the casts of fp32 I/O excluded: an fp16 program has those at its edges)."""
    dtypes: Counter[str] = Counter()
    for op in operations:
        if op.type in ("const", "cast"):
            continue
        dtypes.update(
            MIL_FLOATS[o.type.tensorType.dataType] for o in op.outputs if o.type.tensorType.dataType in MIL_FLOATS
        )
    has16, has32 = dtypes["float16"] > 0, dtypes["float32"] > 0
    precision = "mixed" if has16 and has32 else "fp16" if has16 else "fp32" if has32 else "unknown"
    return precision, dict(sorted(dtypes.items()))


def coreml_summary(path: Path) -> dict[str, Any]:
    """I/O spec, compute precision and op counts of an .mlpackage, read back without loading it."""
    ct = coremltools_module()
    model = ct.models.MLModel(str(path), skip_model_load=True)  # skip: works without the macOS runtime
    spec = model.get_spec()
    model_type = spec.WhichOneof("Type")
    if model_type != "mlProgram":
        raise DeployError(f"{path} holds a Core ML {model_type} model, not an mlprogram; compile again")
    main = spec.mlProgram.functions["main"]
    operations = main.block_specializations[main.opset].operations  # one block per opset; ours has one
    precision, dtypes = _precision(operations)
    ops = Counter(op.type for op in operations if op.type != "const")
    meta = dict(spec.description.metadata.userDefined)
    return {
        "format": f"mlprogram (spec v{spec.specificationVersion})",
        "model_type": model_type,
        "precision": precision,
        "compute_dtypes": dtypes,
        "inputs": _feature_spec(spec.description.input),
        "outputs": _feature_spec(spec.description.output),
        "ops": dict(sorted(ops.items())),
        "n_ops": sum(ops.values()),
        "n_consts": sum(1 for op in operations if op.type == "const"),
        "compute_units": meta.get(f"{_META}compute_units"),
        "minimum_deployment_target": meta.get(f"{_META}minimum_deployment_target"),
        "coremltools": meta.get("com.github.apple.coremltools.version"),
    }


def check_spec(artifact: Artifact, entry: HubEntry, summary: Mapping[str, Any] | None = None) -> list[str]:
    """Problems of a Core ML artifact against its hub entry (names, shapes, dtypes, precision);
    empty when it matches. The pipeline's check on machines that cannot predict."""
    summary = summary if summary is not None else coreml_summary(Path(artifact.path))
    refs = {**entry.reference_inputs(), **entry.reference_outputs()}
    problems = []
    for kind, names in (("inputs", entry.input_names), ("outputs", entry.output_names)):
        got = {f["name"]: f for f in summary[kind]}
        if list(got) != list(names):
            problems.append(f"{kind} are {list(got)}, the hub entry has {list(names)}")
        for name in names:
            if name not in got:
                continue
            if name in refs and tuple(got[name]["shape"]) != tuple(refs[name].shape):
                problems.append(f"{name} has shape {got[name]['shape']}, the reference {list(refs[name].shape)}")
            if got[name]["dtype"] != "float32":
                problems.append(f"{name} is {got[name]['dtype']}, expected float32 I/O")
    if summary["precision"] != artifact.precision:
        problems.append(f"the program computes in {summary['precision']}, the artifact says {artifact.precision}")
    return problems


class CoreMLOptions(BaseModel):
    """`backend_options` of a coreml target."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    compute_units: Literal["ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY"] = "ALL"
    minimum_deployment_target: Literal["iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"] = "iOS16"


class CoreMLBackend(BackendBase):
    name = "coreml"

    @classmethod
    def language_model(cls) -> type[LMBackend]:
        from deploy.backends.coreml_lm import CoreMLLM  # its own module: the image half imports nothing of it

        return CoreMLLM
    precisions = PRECISIONS
    parity_atol: ClassVar[Mapping[str, float]] = {"fp32": FP32_PARITY_ATOL, "fp16": FP16_PARITY_ATOL}
    options_model = CoreMLOptions
    needs_program = True  # coremltools converts the torch.export program

    def __init__(self) -> None:
        self._models: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def version(self) -> str:
        try:
            return str(coremltools_module().__version__)
        except BackendUnavailableError:
            return "coremltools not installed"

    def runs_here(self) -> str | None:
        if sys.platform != "darwin":
            return (
                f"CoreML models run only on macOS (this is {platform.system() or sys.platform}); "
                "the package was checked structurally instead"
            )
        try:
            coremltools_module()
        except BackendUnavailableError:
            return f"coremltools is not installed: {INSTALL}"
        return None

    def inspect(self, artifact: Artifact) -> dict[str, Any]:
        return coreml_summary(Path(artifact.path))

    def compile(
        self, entry: HubEntry, target: Target, out_dir: Path, calibration: np.ndarray | None = None
    ) -> Artifact:
        check_precision(self.name, self.precisions, target)
        ct = coremltools_module()  # fail on a missing converter before writing anything
        opts = {
            "compute_units": backend_options(self, target).compute_units,
            "minimum_deployment_target": backend_options(self, target).minimum_deployment_target,
            "compute_precision": COMPUTE_PRECISION[target.precision],
            "coremltools": str(ct.__version__),
        }
        shapes = {n: a.shape for n, a in entry.reference_inputs().items()}
        program = entry.load_program()
        try:  # the converter takes only the ATEN dialect; hub programs are saved in the training dialect
            program = program.run_decompositions({})
        except Exception as exc:
            raise ExportError(f"could not decompose hub program {entry.key}: {first_line(exc)}") from exc
        start = time.perf_counter()
        try:
            with quiet_coreml():
                model = ct.convert(
                    program,
                    convert_to="mlprogram",
                    compute_precision=getattr(ct.precision, opts["compute_precision"]),
                    minimum_deployment_target=getattr(ct.target, opts["minimum_deployment_target"]),
                    compute_units=getattr(ct.ComputeUnit, opts["compute_units"]),
                    # fp32 I/O even for fp16 programs: callers and the hub references speak float32;
                    # the program casts at its edges (one cast op each way).
                    inputs=[ct.TensorType(name=n, shape=shapes[n], dtype=np.float32) for n in entry.input_names],
                    outputs=[ct.TensorType(name=n, dtype=np.float32) for n in entry.output_names],
                )
        except Exception as exc:  # the converter raises plain ValueError/NotImplementedError/RuntimeError
            raise convert_error(exc, opts["coremltools"]) from exc
        seconds = time.perf_counter() - start
        for key in ("compute_units", "minimum_deployment_target"):  # so inspect can read them back
            model.user_defined_metadata[_META + key] = opts[key]
        model.user_defined_metadata[_META + "hub_key"] = entry.key
        path = Path(out_dir) / MODEL_FILE
        save_package(model, path)
        artifact = Artifact(
            path, self.name, target.precision, tuple(entry.input_names), tuple(entry.output_names), opts
        )
        if self.runs_here() is None:
            self.model(artifact)  # prove it loads here, once
        log.debug(
            "compiled %s for %s (%s, %s, %.1f s)", path, target.name, target.precision, opts["compute_units"], seconds
        )
        return artifact

    def model(self, artifact: Artifact) -> Any:
        """The loaded MLModel, created once per (package version, compute units); macOS only."""
        reason = self.runs_here()
        if reason is not None:
            raise BackendUnavailableError(reason)
        path = Path(artifact.path)
        try:
            stat = (path / "Manifest.json").stat()  # replaced with the package on every compile
        except FileNotFoundError:
            raise DeployError(f"coreml artifact {path} does not exist or is incomplete; compile again") from None
        units = str(artifact.options.get("compute_units", "ALL"))
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_ino, units)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        ct = coremltools_module()
        try:
            model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, units))
        except Exception as exc:
            raise DeployError(f"Core ML could not load {path}: {first_line(exc)}; compile again") from exc
        with self._lock:
            self._models[key] = model
            while len(self._models) > _MAX_MODELS:
                self._models.popitem(last=False)
        return model

    def _feed(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in artifact.input_names if n not in inputs]
        if missing:
            raise DeployError(f"inputs for {artifact.path} lack {missing}; it takes {list(artifact.input_names)}")
        return {n: np.ascontiguousarray(inputs[n], dtype=np.float32) for n in artifact.input_names}

    def run(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        model, feed = self.model(artifact), self._feed(artifact, inputs)
        try:
            result = model.predict(feed)
        except Exception as exc:
            raise DeployError(f"Core ML failed to run {artifact.path}: {first_line(exc)}") from exc
        missing = [n for n in artifact.output_names if n not in result]
        if missing:
            raise DeployError(f"{artifact.path} produced {sorted(result)}, not {missing}; compile again")
        return [np.asarray(result[n]) for n in artifact.output_names]

    def timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        self.run(artifact, inputs)  # fail here, not inside the timing loop
        model, feed = self.model(artifact), self._feed(artifact, inputs)

        def call() -> object:
            return model.predict(feed)

        return call
