"""`elastic-deploy convert`: a plain torch module from a factory → hub → backend → validate → package.

The deploy path without subnet selection: `MODULE:FACTORY` names a zero-argument callable that returns
an `nn.Module`; its export, compilation, parity check and measurement are the pipeline's own building
blocks. There are no labels for an arbitrary model, so validation is parity (and structure) only.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deploy import workspace
from deploy.backends import get_backend
from deploy.errors import DeployError, UnsupportedOpError, first_line
from deploy.export import hub
from deploy.export.check import build_and_check, measure_artifact
from deploy.latency.table import now_iso
from deploy.models.checkpoint import sha256_tree
from deploy.packaging.manifest import ConvertedModel, ConvertManifest, MeasuredRecord, MeasurementRecord
from deploy.packaging.output import check_output_dir, staged_dir
from deploy.targets import load_target

log = logging.getLogger(__name__)

EXAMPLE_SEED = 0  # the example input (and so the parity references) is the same on every run
MAX_INPUT_ELEMENTS = 2**28
SHAPE_HINT = "write it as comma-separated integers, e.g. --input-shape 1,3,224,224"


@dataclass(frozen=True)
class ConvertResult:
    out_dir: Path
    manifest: ConvertManifest


@contextlib.contextmanager
def _current_folder_importable() -> Iterator[None]:
    """The current folder on sys.path while the user's module imports, last (an installed package of the same
    name wins) and removed afterwards: a stray `onnxslim.py` there must not run when a converter imports its
    own dependency later."""
    cwd = os.getcwd()
    shadowing = {"", ".", cwd}
    added = not shadowing & set(sys.path)
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _import(module_name: str) -> Any:
    # Like uvicorn: a model in the current folder is importable without setting PYTHONPATH.
    try:
        with _current_folder_importable():
            return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise DeployError(
                f"module '{module_name}' is not importable (no module named '{missing}'); check PYTHONPATH "
                "(or run from the folder that holds it) or install the package that provides it"
            ) from None
        raise DeployError(
            f"importing module '{module_name}' failed: it needs '{missing}', which is not installed; install it"
        ) from exc
    except Exception as exc:  # user code: a syntax error or a failing import-time statement
        raise DeployError(
            f"importing module '{module_name}' raised {first_line(exc, with_type=True)}; fix the module"
        ) from exc


def _callables(module: Any) -> str:
    own = (n for n, v in vars(module).items() if callable(v) and getattr(v, "__module__", None) == module.__name__)
    return ", ".join(sorted(n for n in own if not n.startswith("_"))[:10]) or "(none)"


def load_model(spec: str) -> tuple[nn.Module, Callable[[], Any]]:
    """Import MODULE, look up FACTORY (dotted attributes allowed), call it; the module and the factory."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name.strip() or not attr.strip():
        raise DeployError(f"--model '{spec}' is not MODULE:FACTORY; write e.g. --model mypkg.models:make_cnn")
    obj: Any = _import(module_name)
    mod = obj
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise DeployError(f"module '{module_name}' has no attribute '{attr}'; its callables: {_callables(mod)}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise DeployError(f"{spec} is a {type(obj).__name__}, not a callable; name a function that builds the model")
    try:
        model = obj()
    except Exception as exc:
        raise DeployError(
            f"factory {spec} raised {first_line(exc, with_type=True)}; "
            "it must build the model when called with no arguments"
        ) from exc
    if not isinstance(model, nn.Module):
        raise DeployError(f"factory {spec} returned {type(model).__name__}, not a torch.nn.Module; return the model")
    return model, obj


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise DeployError(f"--input-shape '{text}' is not a list of integers; {SHAPE_HINT}") from None
    if not shape or any(d < 1 for d in shape):
        raise DeployError(f"--input-shape '{text}' needs positive dimensions; {SHAPE_HINT}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:  # the example input and its references are held in memory
        raise DeployError(
            f"--input-shape '{text}' is {math.prod(shape):,} elements, over the {MAX_INPUT_ELEMENTS:,} (1 GiB as "
            "float32) an example input may have; give the shape of one real input (batch 1)"
        )
    return shape


def resolve_shape(text: str | None, model: nn.Module, factory: Callable[[], Any], spec: str) -> tuple[int, ...]:
    """--input-shape, else the model's (or the factory's) `input_shape` attribute."""
    if text is not None:
        return parse_shape(text)
    for owner in (model, factory):
        declared = getattr(owner, "input_shape", None)
        if isinstance(declared, Sequence) and not isinstance(declared, str):
            return parse_shape(",".join(str(d) for d in declared))
    raise DeployError(
        f"{spec} declares no input_shape attribute; pass the example input's shape, e.g. --input-shape 1,3,224,224"
    )


def _dry_run(model: nn.Module, example: torch.Tensor, spec: str) -> None:
    # One forward first so a wrong shape reads as such, not as an exporter failure.
    shape = ",".join(map(str, example.shape))
    try:
        with torch.inference_mode():
            model(example)
    except Exception as exc:
        why = first_line(exc, with_type=True)
        msg = f"{spec} fails on an input of shape {shape} ({why}); pass its shape with --input-shape"
        raise DeployError(msg) from exc


def convert(
    model_spec: str,
    target_name: str,
    *,
    input_shape: str | None = None,
    out_dir: Path | None = None,
    measure: bool = True,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = log.info,
) -> ConvertResult:
    target = load_target(target_name)  # a bad target name fails before running user code
    if out_dir is not None:
        check_output_dir(out_dir)  # before any work; the default folder is checked once it is named
    model, factory = load_model(model_spec)
    model.eval()
    shape = resolve_shape(input_shape, model, factory, model_spec)
    example = torch.randn(shape, generator=torch.Generator().manual_seed(EXAMPLE_SEED))
    _dry_run(model, example, model_spec)
    out_dir = check_output_dir(
        out_dir or workspace.dist_dir() / f"{target.name}-{model_spec.partition(':')[2].split('.')[-1]}"
    )
    n_params = sum(p.numel() for p in model.parameters())
    shape_text = "x".join(map(str, shape))
    say(f"model {model_spec} ({type(model).__name__}, {n_params:,} params), input {shape_text}")

    backend = get_backend(target.backend)
    try:
        entry = hub.get_or_export(
            model,
            example,
            {"model": model_spec, "input_shape": shape_text},
            cache_dir=cache_dir,
            with_program=backend.needs_program,
        )
    except UnsupportedOpError as exc:  # every backend starts from the hub: say which one the user wanted
        raise UnsupportedOpError(f"{exc} (needed for target {target.name}, backend {target.backend})") from exc
    say(f"hub entry {entry.key} ({'reused' if entry.reused else 'exported'})")
    if target.precision == "int8":
        say("int8: calibrated on the example input only (no data set for an arbitrary model); check accuracy")

    # Compile into a staging folder swapped into place at the end (a failed convert leaves the old one).
    with staged_dir(out_dir) as staging:
        artifact, check = build_and_check(backend, entry, target, staging, out_dir, None, say)  # no labels
        measured, not_measured = measure_artifact(backend, artifact, entry, target, check, measure, say)
        if measured is not None:
            say(
                f"measured {measured.median_ms:.3f} ms (p90 {measured.p90_ms:.3f}, cv {measured.cv:.1%}, "
                f"{measured.n_runs} runs on {measured.where})"
            )

        manifest = ConvertManifest(
            model=ConvertedModel(spec=model_spec, class_=type(model).__qualname__, params=n_params),
            input_shape=list(shape),
            example_input=f"torch.randn(seed {EXAMPLE_SEED})",
            target=target.name,
            device=target.device.name,
            backend=target.backend,
            precision=target.precision,
            artifact={
                "path": str(out_dir / artifact.path.name),
                "sha256": sha256_tree(artifact.path),
                "format": artifact.backend,
                "status": check.status,
                "options": dict(artifact.options),
            },
            validation={**check.to_json(), "parity_atol": target.parity_atol},
            latency=MeasurementRecord(
                measured_ms=None if measured is None else measured.median_ms,
                measured=None if measured is None else MeasuredRecord(stats=measured.to_json(), how=measured.where),
                not_measured_reason=not_measured,
            ),
            hub_entry=entry.key,
            versions={**entry.meta.get("versions", {}), "torch": torch.__version__, backend.name: backend.version()},
            created=now_iso(),
        )
        manifest.save(staging)
    say(f"wrote {out_dir}/ ({artifact.path.name}, manifest.json)")
    if check.build_on_device:
        say(f"next, on the device: {check.build_on_device}")
    return ConvertResult(out_dir, manifest)
