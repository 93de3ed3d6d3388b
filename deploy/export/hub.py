"""The ONNX hub: one checked, simplified export per (module identity, weights, toolchain), cached by content.

(Over ~500 lines: export, check, slim, cache and reuse of one entry are one contract; split, the cache key
and the export recipe would live apart.)

An entry lives in `<cache>/hub/<key>/`: model.onnx (single file, no external data), references.npz
(the example input and the torch module's outputs: every backend's parity is measured against these),
program.pt2 (torch.export program, for converters that start from torch) and entry.json (written last).
Entries are built in a temp folder beside the final one and renamed into place, so two processes
exporting the same key never see or leave half an entry.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy import workspace
from deploy.errors import DeployError, ExportError, UnsupportedOpError, first_line
from deploy.export.quiet import quiet_converter
from deploy.io import atomic_write_bytes, atomic_write_json, read_json

log = logging.getLogger(__name__)

OPSET = 17
HUB_FORMAT = 2  # bump when the layout or the export recipe changes: old entries stop matching (2: checksums)
INPUT_NAME = "input"
ONNX_FILE = "model.onnx"
PROGRAM_FILE = "program.pt2"
REFERENCES_FILE = "references.npz"
ENTRY_FILE = "entry.json"
# The legacy (TorchScript) exporter at opset 17 gave the fastest ONNX Runtime model and converts quickly
# (docs/backends.md#toolchain-notes); the dynamo exporter is only the fallback.
EXPORT_SETTINGS: Mapping[str, Any] = {
    "exporter": "torchscript",
    "fallback": "dynamo",
    "opset": OPSET,
    "constant_folding": True,
    "simplifier": "onnxslim",
    "batch": 1,
    "dynamic_shapes": False,
    "format": HUB_FORMAT,
}
_TOOLS = ("torch", "onnx", "onnxslim", "onnxruntime", "onnxscript")
_OP_PATTERNS = (
    re.compile(r"operator '([\w:.]+)'"),  # legacy exporter: "Exporting the operator 'aten::x' to ONNX"
    re.compile(r"OpOverload\(op='([\w.]+)'"),  # dynamo exporter: "No ONNX function found for ..."
    re.compile(r"No Op registered for (\w+)"),
    re.compile(r"implementation for (\w+)\("),
)
_IN, _OUT = "in.", "out."  # prefixes in references.npz: an input and an output may share a name


def find_op(text: str) -> str | None:
    """The operator named in a converter's or runtime's error text, if it names one."""
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def toolchain_versions() -> dict[str, str]:
    """Installed versions of the tools whose behaviour decides what an export contains."""
    versions = {}
    for tool in _TOOLS:
        try:
            versions[tool] = metadata.version(tool)
        except metadata.PackageNotFoundError:
            versions[tool] = "absent"
    return versions


def output_name(identity: Mapping[str, str]) -> str:
    """Whole subnets output class logits; blocks output a tensor."""
    return "logits" if "subnet" in identity else "output"


def hub_key(identity: Mapping[str, str]) -> str:
    """Short sha256 over the identity (input names and shapes included), the toolchain versions and the
    export settings."""
    payload = {
        "identity": {str(k): str(v) for k, v in sorted(identity.items())},
        "versions": toolchain_versions(),
        "export": dict(EXPORT_SETTINGS),
        "names": [output_name(identity)],
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def weights_digest(module: nn.Module) -> str:
    """Short sha256 of every parameter and buffer, so the same identity with other weights re-exports."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class HubEntry:
    key: str
    dir: Path
    onnx_path: Path
    program_path: Path | None
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    reused: bool = False

    @property
    def references_path(self) -> Path:
        return self.dir / REFERENCES_FILE

    def _references(self, prefix: str) -> dict[str, np.ndarray]:
        with np.load(self.references_path) as data:
            return {k[len(prefix) :]: data[k] for k in data.files if k.startswith(prefix)}

    def reference_inputs(self) -> dict[str, np.ndarray]:
        return self._references(_IN)

    def reference_outputs(self) -> dict[str, np.ndarray]:
        return self._references(_OUT)

    def load_program(self) -> torch.export.ExportedProgram:
        if self.program_path is None or not self.program_path.exists():
            raise ExportError(
                f"hub entry {self.key} has no exported program; call get_or_export(..., with_program=True)"
            )
        return torch.export.load(self.program_path)

    @classmethod
    def load(cls, entry_dir: Path, reused: bool = True) -> HubEntry:
        """Read an entry folder; raises ConfigFileError when entry.json is missing or malformed."""
        entry_dir = Path(entry_dir)
        data = read_json(entry_dir / ENTRY_FILE)
        program = data.get("program")
        return cls(
            key=str(data["key"]),
            dir=entry_dir,
            onnx_path=entry_dir / data["onnx"],
            program_path=entry_dir / program if program else None,
            input_names=tuple(data["input_names"]),
            output_names=tuple(data["output_names"]),
            meta=data.get("meta", {}),
            reused=reused,
        )

    def is_complete(self) -> bool:
        files = [self.onnx_path, self.references_path]
        if self.program_path is not None:
            files.append(self.program_path)
        return all(p.is_file() for p in files)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry_json(entry: HubEntry) -> dict[str, Any]:
    files = [entry.onnx_path, entry.references_path, *([entry.program_path] if entry.program_path else [])]
    return {
        "key": entry.key,
        "onnx": entry.onnx_path.name,
        "program": entry.program_path.name if entry.program_path else None,
        "references": REFERENCES_FILE,
        "input_names": list(entry.input_names),
        "output_names": list(entry.output_names),
        "sha256": {p.name: _file_digest(p) for p in files},  # checked on every reuse
        "meta": dict(entry.meta),
    }


def _damage(entry_dir: Path) -> str | None:
    """What is wrong with a finished entry's files (a checksum that differs, a file missing), or None."""
    try:
        recorded = read_json(entry_dir / ENTRY_FILE).get("sha256")
    except (DeployError, AttributeError):
        return f"{ENTRY_FILE} is unreadable"
    if not isinstance(recorded, dict) or not recorded:
        return "it records no checksums"
    for name, digest in sorted(recorded.items()):
        path = entry_dir / str(name)
        if not path.is_file():
            return f"{name} is missing"
        if _file_digest(path) != digest:
            return f"{name} does not match its checksum"
    return None


def _try_load(entry_dir: Path) -> HubEntry | None:
    """The entry in `entry_dir` if it is complete and undamaged; a damaged one is removed (it is re-exported)."""
    if not (entry_dir / ENTRY_FILE).is_file():
        return None
    try:
        entry = HubEntry.load(entry_dir)
    except (DeployError, KeyError, TypeError):
        entry = None
    problem = "it is incomplete" if entry is None or not entry.is_complete() else _damage(entry_dir)
    if problem is None:
        return entry
    log.warning("hub entry %s is damaged (%s); exporting it again", entry_dir, problem)
    trash = entry_dir.with_name(f".{entry_dir.name}.{uuid.uuid4().hex[:8]}.trash")
    try:
        os.rename(entry_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
    except OSError:
        pass  # another process moved it first
    return None


Example = torch.Tensor | tuple[torch.Tensor, ...]


def _inputs(example: Example, input_names: Sequence[str] | None) -> tuple[tuple[torch.Tensor, ...], tuple[str, ...]]:
    examples = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    names = (
        tuple(input_names)
        if input_names is not None
        else ((INPUT_NAME,) if len(examples) == 1 else tuple(f"{INPUT_NAME}_{i}" for i in range(len(examples))))
    )
    if len(names) != len(examples):
        raise ExportError(f"{len(examples)} example inputs but {len(names)} input names ({', '.join(names)})")
    return examples, names


def _describe_inputs(examples: Sequence[torch.Tensor], names: Sequence[str]) -> dict[str, str]:
    def one(t: torch.Tensor) -> tuple[str, str]:
        return "x".join(str(d) for d in t.shape), str(t.dtype).removeprefix("torch.")

    if tuple(names) == (INPUT_NAME,):  # one image input: the identity fields entries have always had
        shape, dtype = one(examples[0])
        return {"input_shape": shape, "input_dtype": dtype}
    return {"inputs": ";".join(f"{n}:{':'.join(one(t))}" for n, t in zip(names, examples, strict=True))}


def export_subnet(supernet: Any, config: Any, checkpoint_sha256: str, cache_dir: Path | None = None) -> HubEntry:
    """The hub entry of a supernet's subnet at `config` (extracted, with the family's example inputs)."""
    return get_or_export(
        supernet.extract(config),
        supernet.example_inputs(),
        {"subnet": config.id, "checkpoint": checkpoint_sha256},
        cache_dir=cache_dir,
        input_names=supernet.input_names(),
    )


def get_or_export(
    module: nn.Module,
    example: Example,
    identity: Mapping[str, str],
    cache_dir: Path | None = None,
    with_program: bool = True,
    input_names: Sequence[str] | None = None,
) -> HubEntry:
    """The hub entry of `module` at batch-1 input(s) `example`, exported unless an identical one is cached.

    The key covers `identity` (e.g. {"subnet": id, "checkpoint": sha} or {"block": str(key)}) plus the
    inputs' names, shapes and dtypes and a digest of the module's weights, so a cached entry always
    matches the module. `entry.key == hub_key(entry.meta["identity"])`. Several inputs are given as a
    tuple with their `input_names` (a family's InputSpec names; default "input").
    """
    examples, names = _inputs(example, input_names)
    hub_dir = Path(cache_dir or workspace.cache_dir()) / "hub"
    full_identity = {
        **{str(k): str(v) for k, v in identity.items()},
        **_describe_inputs(examples, names),
        "weights": weights_digest(module),
    }
    key = hub_key(full_identity)
    final = hub_dir / key
    cached = _try_load(final)
    if cached is not None:
        if with_program and cached.program_path is None:
            cached = _add_program(cached, module, examples)
        log.debug("hub entry %s reused for %s", key, dict(identity))
        return cached

    hub_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=hub_dir, prefix=f".{key}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        entry = _build(module, examples, names, full_identity, key, tmp, with_program)
        _commit(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    winner = _try_load(final)
    if winner is None:
        raise ExportError(f"hub entry {final} vanished right after export; check free space and rerun")
    if winner.meta.get("export_id") != entry.meta.get("export_id"):
        log.debug("hub entry %s was exported concurrently by another process; using theirs", key)
        if with_program and winner.program_path is None:
            return _add_program(winner, module, examples)
        return winner
    return HubEntry.load(final, reused=False)


def _commit(tmp: Path, final: Path) -> None:
    """Rename the built folder into place; a complete entry that got there first wins."""
    for _ in range(3):
        try:
            os.rename(tmp, final)
            return
        except OSError:
            if _try_load(final) is not None:
                return  # another process finished the same key first: identical content
            # An incomplete leftover (e.g. files deleted by hand): move it aside, then retry.
            trash = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.trash")
            try:
                os.rename(final, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
    raise ExportError(f"could not move the hub entry into {final}; delete that folder and rerun")


def _add_program(entry: HubEntry, module: nn.Module, examples: tuple[torch.Tensor, ...]) -> HubEntry:
    program_path = entry.dir / PROGRAM_FILE
    seconds = _save_program(module, examples, program_path)
    meta = {**entry.meta, "program_seconds": round(seconds, 3)}
    updated = HubEntry(
        entry.key,
        entry.dir,
        entry.onnx_path,
        program_path,
        entry.input_names,
        entry.output_names,
        meta,
        entry.reused,
    )
    atomic_write_json(entry.dir / ENTRY_FILE, _entry_json(updated))
    return updated


def _save_program(module: nn.Module, examples: tuple[torch.Tensor, ...], path: Path) -> float:
    start = time.perf_counter()
    with _eval_mode(module):
        try:
            program = torch.export.export(module, examples)
        except Exception as exc:
            op = find_op(str(exc))
            if op:
                raise UnsupportedOpError(f"torch.export cannot trace op '{op}'; rewrite it in the module") from exc
            raise ExportError(f"torch.export failed: {first_line(exc)}; export with with_program=False") from exc
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return time.perf_counter() - start


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Export in eval mode and restore the caller's mode afterwards."""
    was_training = module.training
    try:
        yield module.eval()
    finally:
        module.train(was_training)


def quiet_exporter() -> AbstractContextManager[None]:
    """Hold back what the exporters print at the C level (the TorchScript exporter dumps its whole IR graph
    to stderr on failure, pages before our one-line error); it goes to the debug log instead."""
    return quiet_converter("exporter output", log, fds=(1, 2))


def _export_onnx(
    module: nn.Module, examples: tuple[torch.Tensor, ...], names: Sequence[str], path: Path, out_name: str
) -> tuple[str, str | None]:
    """Export with the legacy exporter; on failure retry with dynamo. Returns the exporter used and, when the
    legacy exporter failed on an operator, that operator (the fallback's graph may still fail the checker)."""
    common: dict[str, Any] = {"input_names": list(names), "output_names": [out_name], "opset_version": OPSET}
    op = None
    with quiet_exporter(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(module, examples, str(path), dynamo=False, do_constant_folding=True, **common)
            exporter = "torchscript"
        except Exception as legacy_exc:
            op = find_op(str(legacy_exc))
            log.info("legacy ONNX exporter failed (%s); retrying with dynamo=True", first_line(legacy_exc))
            path.unlink(missing_ok=True)
            try:
                torch.onnx.export(
                    module, examples, str(path), dynamo=True, external_data=False, verbose=False, **common
                )
                exporter = "dynamo"
            except Exception as dynamo_exc:
                op = op or find_op(str(dynamo_exc))
                if op:
                    raise UnsupportedOpError(
                        f"the ONNX exporter cannot convert op '{op}' (opset {OPSET}); "
                        "replace it with supported ops in the module"
                    ) from dynamo_exc
                raise ExportError(
                    f"ONNX export failed: {first_line(legacy_exc)}; see the log for the dynamo retry"
                ) from dynamo_exc
    for message in sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught}):
        log.debug("during ONNX export: %s", message)
    return exporter, op


def _op_counts(model: Any) -> dict[str, int]:
    return dict(sorted(Counter(node.op_type for node in model.graph.node).items()))


def _build(
    module: nn.Module,
    examples: tuple[torch.Tensor, ...],
    names: tuple[str, ...],
    identity: Mapping[str, str],
    key: str,
    tmp: Path,
    with_program: bool,
) -> HubEntry:
    import onnx
    import onnxslim

    out_name = output_name(identity)
    raw_path, onnx_path = tmp / "raw.onnx", tmp / ONNX_FILE
    start = time.perf_counter()
    with _eval_mode(module):
        exporter, legacy_op = _export_onnx(module, examples, names, raw_path, out_name)
        with torch.inference_mode():
            reference = module(*examples)
    try:
        onnx.checker.check_model(str(raw_path), full_check=True)
        raw = onnx.shape_inference.infer_shapes(onnx.load(str(raw_path)), check_type=True, strict_mode=True)
        slim = onnxslim.slim(raw)
        onnx.checker.check_model(slim, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        if legacy_op is not None:  # the real cause: the dynamo fallback only produced an invalid graph
            raise UnsupportedOpError(
                f"torch op '{legacy_op}' has no ONNX conversion at opset {OPSET} (the fallback exporter's graph "
                f"fails the onnx checker: {first_line(exc)}); replace it with supported ops in the module"
            ) from exc
        raise ExportError(f"the ONNX export of hub entry {key} fails the onnx checker: {first_line(exc)}") from exc
    onnx.save_model(slim, str(onnx_path), save_as_external_data=False)
    raw_path.unlink()
    export_seconds = time.perf_counter() - start
    extra = sorted(p.name for p in tmp.iterdir() if p.name != ONNX_FILE)
    if extra:
        raise ExportError(f"ONNX export of hub entry {key} wrote extra files {extra}; expected one file")

    input_names = tuple(i.name for i in slim.graph.input)
    output_names = tuple(o.name for o in slim.graph.output)
    outputs = reference if isinstance(reference, tuple | list) else (reference,)
    if input_names != names:  # an input the graph does not use is dropped by the exporter
        raise ExportError(f"the ONNX export of hub entry {key} takes inputs {list(input_names)}, not {list(names)}")
    arrays = {f"{_IN}{n}": t.detach().cpu().numpy() for n, t in zip(names, examples, strict=True)}
    for name, tensor in zip(output_names, outputs, strict=True):
        arrays[f"{_OUT}{name}"] = tensor.detach().cpu().numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(tmp / REFERENCES_FILE, buffer.getvalue())

    program_path = None
    program_seconds = 0.0
    if with_program:
        program_path = tmp / PROGRAM_FILE
        program_seconds = _save_program(module, examples, program_path)

    meta = {
        "identity": dict(identity),
        "versions": toolchain_versions(),
        "opset": OPSET,
        "exporter": exporter,
        "export_settings": dict(EXPORT_SETTINGS),
        "export_seconds": round(export_seconds, 3),
        "program_seconds": round(program_seconds, 3),
        "op_counts": _op_counts(slim),
        "op_counts_before_slim": _op_counts(raw),
        "onnx_bytes": onnx_path.stat().st_size,
        "export_id": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    entry = HubEntry(key, tmp, onnx_path, program_path, input_names, output_names, meta, reused=False)
    atomic_write_json(tmp / ENTRY_FILE, _entry_json(entry))
    log.info("exported hub entry %s (%s, %.2f s)", key, exporter, export_seconds)
    return entry


def clear(cache_dir: Path | None = None, keys: Sequence[str] | None = None) -> int:
    """Delete hub entries (all, or the given keys); returns how many were removed."""
    hub_dir = Path(cache_dir or workspace.cache_dir()) / "hub"
    if not hub_dir.is_dir():
        return 0
    removed = 0
    for entry_dir in sorted(hub_dir.iterdir()):
        if entry_dir.is_dir() and (keys is None or entry_dir.name in keys):
            shutil.rmtree(entry_dir, ignore_errors=True)
            removed += 1
    return removed
