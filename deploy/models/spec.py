"""Model specs are data: `models/<name>.yaml` in a workspace (or shipped) says what a model is.

A spec names its family (a registered name or `package.module:Class`), the family's dimensions, where
its weights come from (a safetensors checkpoint, or seeded random weights for a scale probe), its
task with the data seed, and, if this project trains it, the training recipe. The shipped models are
such specs; a user's model is one more file, never an edit of this package.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import threading
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy import workspace
from deploy.errors import ConfigFileError, PluginError, UnknownNameError
from deploy.families import FAMILIES
from deploy.families.base import Supernet
from deploy.io import pydantic_error_line, read_yaml
from deploy.tasks import get_task
from deploy.tasks.base import Task

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
# What a spec may ask for. A dimension past DIM_MAX is a typo or an attack, not a model this tool deploys;
# MAX_MODULES bounds how long building a family (even weightless, on the meta device) can take; and the
# weights may take at most 1/MEMORY_SHARE of this machine's memory, since training, extraction and export
# hold several copies of them.
DIM_MAX = 2**20
MAX_MODULES = 10_000
MEMORY_SHARE = 4
BYTES_PER_WEIGHT = 4  # float32


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskRef(_Strict):
    name: str  # a registered task or package.module:Class
    seed: int = 0  # the data seed: every split is read with it (a checkpoint records the one it was trained on)
    options: dict[str, Any] = Field(default_factory=dict)


class RandomWeights(_Strict):
    """Seeded random weights instead of a checkpoint: for scale probes, whose accuracy means nothing."""

    seed: int = 0
    why: str  # said in every manifest made from it


class ModelSpec(_Strict):
    name: str
    description: str = ""
    family: str  # a registered family or package.module:Class
    dims: dict[str, Any] = Field(default_factory=dict)  # the family's dimensions (its dims_type's fields)
    family_options: dict[str, Any] = Field(default_factory=dict)  # other constructor arguments
    checkpoint: str | None = None  # safetensors file, relative to the workspace (shipped ones as fallback)
    random_weights: RandomWeights | None = None
    task: TaskRef
    accuracy_samples: int = Field(200, ge=8)  # real evaluations the accuracy surrogate is fitted on
    training: dict[str, Any] | None = None  # the recipe `make train MODEL=<name>` uses (deploy/training)
    path: Path | None = Field(None, exclude=True)  # where it was read from

    def checkpoint_path(self) -> Path | None:
        if self.checkpoint is None:
            return None
        given = Path(self.checkpoint).expanduser()
        if given.is_absolute():
            return given
        parts = given.parts
        if parts and parts[0] == "checkpoints":
            return workspace.resolve("checkpoints", str(Path(*parts[1:])))
        return workspace.root() / given

    def make_task(self) -> Task:
        return get_task(self.task.name, self.task.seed, self.task.options)


def known_models() -> list[str]:
    return workspace.names("models", ".yaml")


def load_spec(name: str) -> ModelSpec:
    """models/<name>.yaml of the workspace, else the shipped one; UnknownNameError lists the known models."""
    if not NAME_RE.match(name):
        raise UnknownNameError(
            f"model name '{name}' is invalid: use lower-case letters, digits and '_' (known: "
            f"{', '.join(known_models())})"
        )
    path = workspace.resolve("models", f"{name}.yaml")
    if not path.exists():
        raise UnknownNameError(
            f"unknown model '{name}'; known: {', '.join(known_models()) or '(none)'} (specs in "
            f"{' and '.join(str(d) for d in workspace.search_dirs('models'))}; add models/{name}.yaml)"
        )
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    if isinstance(data.get("task"), str):  # `task: mnist` is short for `task: {name: mnist}`
        data = {**data, "task": {"name": data["task"]}}
    try:
        spec = ModelSpec.model_validate({**data, "path": path})
    except ValidationError as exc:
        raise ConfigFileError(pydantic_error_line(path, exc)) from None
    if spec.name != name:
        raise ConfigFileError(f"{path}: field 'name' is '{spec.name}' but the file is {name}.yaml")
    if spec.checkpoint is not None and spec.random_weights is not None:
        raise ConfigFileError(f"{path}: give either checkpoint or random_weights, not both")
    return spec


def family_class(reference: str) -> type[Supernet]:
    """The family class a spec names; PluginError when it is not a complete Supernet subclass."""
    cls = FAMILIES.load(reference)
    if not (isinstance(cls, type) and issubclass(cls, Supernet)):
        raise PluginError(f"family '{reference}' is {cls!r}, not a subclass of deploy.api.Supernet")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise PluginError(
            f"family '{reference}' ({cls.__qualname__}) does not implement {', '.join(missing)} of the Supernet "
            "protocol; add them (see deploy/api.py)"
        )
    for attr in ("family", "dims_type"):
        if not hasattr(cls, attr):
            raise PluginError(f"family '{reference}' ({cls.__qualname__}) does not declare '{attr}'; set it")
    return cls


def _where(spec: ModelSpec) -> str:
    return str(spec.path) if spec.path is not None else f"model {spec.name}"


def _int_typed(tp: Any) -> bool:
    """Whether a dims field holds whole numbers: int, or tuples (nested) of them."""
    if tp is int:
        return True
    if typing.get_origin(tp) in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return bool(args) and all(_int_typed(a) for a in args)
    return False


def _dim_problem(value: Any, tp: Any, loc: str) -> str | None:
    """What is wrong with a value given for an int-typed field (None: nothing), walking tuples of ints."""
    if tp is int:
        if type(value) is not int or value < 1:  # bool, float and numeric strings are refused too
            shown = str(value).lower() if isinstance(value, bool) else repr(value)  # as YAML writes it
            shown = shown if len(shown) <= 40 else shown[:40] + "…"
            return f"dims.{loc} is {shown}: a dimension is a whole number from 1 to {DIM_MAX:,}; fix it"
        if value > DIM_MAX:
            return (
                f"dims.{loc} is {value:,}, more than {DIM_MAX:,}, far past any model this tool deploys; "
                "give a smaller dimension"
            )
        return None
    if not isinstance(value, list | tuple):
        return None  # not a sequence: the family's own validation names what it expects
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    for i, item in enumerate(value):
        problem = _dim_problem(item, args[min(i, len(args) - 1)], f"{loc}[{i}]")
        if problem:
            return problem
    return None


def check_dims(spec: ModelSpec, cls: type[Supernet]) -> None:
    """Every whole-number dimension the spec gives is a positive int of sane size (ConfigFileError if not).

    Fields the family types otherwise (a float, a string) are left to its own validation."""
    try:
        hints = typing.get_type_hints(cls.dims_type)
    except Exception:  # a plugin's unresolvable annotation: use what the dataclass recorded
        hints = (
            {f.name: f.type for f in dataclasses.fields(cls.dims_type)}
            if dataclasses.is_dataclass(cls.dims_type)
            else {}
        )
    for name, value in spec.dims.items():
        tp = hints.get(name)
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp):
            if value is None:
                continue
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = rest[0] if len(rest) == 1 else tp
        if tp is not None and _int_typed(tp):
            problem = _dim_problem(value, tp, name)
            if problem:
                raise ConfigFileError(f"{_where(spec)}: {problem}")


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say: then no size bound)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


class _TooManyModules(Exception):
    pass


class _TooLarge(Exception):
    pass


@contextmanager
def _counting(max_elements: int | None = None) -> Iterator[dict[str, int]]:
    """Counts the modules and the tensor elements (parameters and buffers) registered by this thread while
    inside. It stops the build past MAX_MODULES modules (a runaway depth, before it takes minutes) and past
    `max_elements` elements."""
    me, seen, counts = threading.get_ident(), set(), {"modules": 0, "elements": 0}

    def on_module(module: torch.nn.Module, name: str, sub: torch.nn.Module | None) -> None:
        if sub is not None and threading.get_ident() == me:
            counts["modules"] += 1
            if counts["modules"] > MAX_MODULES:
                raise _TooManyModules

    def on_tensor(module: torch.nn.Module, name: str, tensor: torch.Tensor | None) -> None:
        if tensor is not None and threading.get_ident() == me and id(tensor) not in seen:
            seen.add(id(tensor))  # a tied weight counts once
            counts["elements"] += tensor.numel()
            if max_elements is not None and counts["elements"] > max_elements:
                raise _TooLarge

    from torch.nn.modules import module as nn_module

    handles = [
        nn_module.register_module_module_registration_hook(on_module),
        nn_module.register_module_parameter_registration_hook(on_tensor),
        nn_module.register_module_buffer_registration_hook(on_tensor),
    ]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def _construct(spec: ModelSpec, cls: type[Supernet]) -> Supernet:
    """cls.from_dims with the spec's dims and options; a family's TypeError or ValueError becomes one line."""
    try:
        return cls.from_dims(spec.name, spec.dims, **spec.family_options)
    except (ConfigFileError, PluginError):
        raise
    except TypeError as exc:
        takes = inspect.signature(cls.__init__).parameters
        params = ", ".join(p for p in takes if p not in ("self", "variant", "dims"))
        raise ConfigFileError(
            f"{spec.path}: family {spec.family} does not take family_options {sorted(spec.family_options)} "
            f"({exc}); it takes {params or 'none'}"
        ) from None
    except ValueError as exc:
        raise ConfigFileError(f"{spec.path}: family {spec.family} rejects these dims: {exc}") from None


def _gib(size: float) -> str:
    gib = size / 2**30
    return f"{gib:.1f} GiB" if gib >= 0.1 else f"{gib:.2g} GiB"


def _size_error(spec: ModelSpec, elements: int, memory: int, at_least: bool = False) -> ConfigFileError:
    return ConfigFileError(
        f"{_where(spec)}: these dims make a model of {'at least ' if at_least else ''}"
        f"{_gib(elements * BYTES_PER_WEIGHT)} of weights ({elements:,} parameters), more than 1/{MEMORY_SHARE} "
        f"of this machine's {_gib(memory)} of memory (training and export hold several copies); give smaller dims"
    )


def _too_many_modules(spec: ModelSpec) -> ConfigFileError:
    return ConfigFileError(
        f"{_where(spec)}: these dims build more than {MAX_MODULES:,} modules (a depth far past any model this "
        "tool deploys); give smaller dims"
    )


def build_from_spec(spec: ModelSpec) -> Supernet:
    """The spec's supernet, untrained (weights come from `deploy.models.checkpoint.load`).

    Its size is known before any weight is allocated: the family is built first on the meta device (shapes,
    no storage), and refused when its weights would not fit this machine."""
    cls = family_class(spec.family)
    check_dims(spec, cls)
    memory = machine_memory_bytes() or 0
    max_elements = memory // MEMORY_SHARE // BYTES_PER_WEIGHT if memory else None
    try:
        with _counting() as counts, torch.device("meta"):
            _construct(spec, cls)
    except _TooManyModules:
        raise _too_many_modules(spec) from None
    except (RuntimeError, NotImplementedError):  # a family whose __init__ needs real values (e.g. .item())
        pass
    else:
        if max_elements is not None and counts["elements"] > max_elements:
            raise _size_error(spec, counts["elements"], memory)
        return _construct(spec, cls)
    # Built for real, its registrations counted: it stops at the bound with at most one tensor past it.
    try:
        with _counting(max_elements) as counts:
            return _construct(spec, cls)
    except _TooManyModules:
        raise _too_many_modules(spec) from None
    except _TooLarge:
        raise _size_error(spec, counts["elements"], memory, at_least=True) from None


def build(name: str) -> Supernet:
    """The model `name` (its spec) untrained: latency does not depend on weights, tests need no training."""
    return build_from_spec(load_spec(name))
