"""`elastic-deploy compile`: build a packaged ONNX into the target backend's artifact, on the device.

A deploy on a machine without the target's toolchain (TensorRT without a GPU) packages the hub's ONNX
with its references (dist/<target>/model.onnx, references.npz). On the device this builds the engine
from it and checks parity against those references, so what runs there is what was validated here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy.backends import get_backend
from deploy.backends.base import Artifact
from deploy.errors import ConfigFileError
from deploy.export.hub import REFERENCES_FILE, HubEntry
from deploy.export.parity import ParityReport, check_parity
from deploy.io import atomic_write_json
from deploy.latency.table import now_iso
from deploy.packaging.output import MARKER, add_to_marker, check_output_dir, is_output_dir
from deploy.targets import load_target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileResult:
    artifact: Artifact
    parity: ParityReport | None
    summary: str


def entry_from_onnx(onnx_path: Path) -> HubEntry:
    """A hub entry view of a packaged ONNX file (names read from the graph, references beside it)."""
    import onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ConfigFileError(f"{onnx_path} does not exist; pass the model.onnx written by `elastic-deploy deploy`")
    try:
        graph = onnx.load(str(onnx_path), load_external_data=False).graph
    except Exception as exc:
        raise ConfigFileError(f"{onnx_path} is not a readable ONNX model ({exc}); deploy again") from None
    inits = {i.name for i in graph.initializer}
    return HubEntry(
        key=f"file:{onnx_path.name}",
        dir=onnx_path.parent,
        onnx_path=onnx_path,
        program_path=None,
        input_names=tuple(i.name for i in graph.input if i.name not in inits),
        output_names=tuple(o.name for o in graph.output),
    )


def _calibration(entry: HubEntry) -> np.ndarray | None:
    """The deployed model's task's training examples (int8) where the manifest beside the ONNX names a task
    this device can load, else None (the packaged reference inputs)."""
    try:
        from deploy.flows.image import CALIBRATION_IMAGES
        from deploy.packaging.manifest import ImageManifest
        from deploy.tasks import get_task

        task = ImageManifest.load(entry.dir / "manifest.json").model_spec["task"]
        return get_task(task["name"], task.get("seed", 0), task.get("options")).calibration_array(CALIBRATION_IMAGES)
    except Exception as exc:  # no manifest, or the task's data missing on a device: fine, references calibrate
        log.info("calibrating on the packaged reference inputs (%s)", exc)
        return None


def compile_onnx(onnx_path: Path, target_name: str, out_dir: Path | None = None) -> CompileResult:
    target = load_target(target_name)
    entry = entry_from_onnx(onnx_path)
    backend = get_backend(target.backend)
    # An --out folder follows the output-folder rules; the default, the packaged ONNX's own folder, is written
    # beside it, and where that is a deploy's output the new files join its marker (the next deploy may
    # replace them).
    out = check_output_dir(out_dir) if out_dir is not None else entry.dir
    before = {p.name for p in out.iterdir()} if out.is_dir() else set()
    artifact = backend.compile(entry, target, out, calibration=_calibration(entry))
    parity = None
    has_refs = (entry.dir / REFERENCES_FILE).is_file()
    if has_refs and backend.runs_here() is None:
        parity = check_parity(
            backend.run(artifact, entry.reference_inputs()), entry.reference_outputs(), target.parity_atol
        )
        parity.raise_if_failed(f"{backend.name} artifact built from {onnx_path}")
    report: dict[str, Any] = {
        "target": target.name,
        "backend": backend.name,
        "backend_version": backend.version(),
        "source": str(onnx_path),
        "artifact": str(artifact.path),
        "options": dict(artifact.options),
        "parity": None if parity is None else {"max_abs_diff": parity.max_abs_diff, "tolerance": parity.tolerance},
        "inspection": backend.inspect(artifact),
        "created": now_iso(),
    }
    atomic_write_json(out / "compile.json", report)
    if out_dir is not None or is_output_dir(out):
        add_to_marker(out, sorted({p.name for p in out.iterdir()} - before - {MARKER}))
    if parity is not None:
        summary = f"parity {parity.max_abs_diff:.2e} ≤ {target.parity_atol:.0e}"
    elif not has_refs:
        summary = f"no {REFERENCES_FILE} beside the ONNX: parity not checked"
    else:
        summary = f"not run here: {backend.runs_here()}"
    return CompileResult(artifact, parity, summary + f"; report in {out / 'compile.json'}")
