"""Model specs are data: `models/<name>.yaml` in a workspace (or shipped) says what a model is.

A spec names its family (a registered name or `package.module:Class`), the family's dimensions, where
its weights come from (a safetensors checkpoint, or seeded random weights for a scale probe), its
task with the data seed, and, if this project trains it, the training recipe. The shipped models are
such specs; a user's model is one more file, never an edit of this package.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy import workspace
from deploy.errors import ConfigFileError, PluginError, UnknownNameError
from deploy.families import FAMILIES
from deploy.families.base import Supernet
from deploy.io import pydantic_error_line, read_yaml
from deploy.tasks import get_task
from deploy.tasks.base import Task

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")


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


def build_from_spec(spec: ModelSpec) -> Supernet:
    """The spec's supernet, untrained (weights come from `deploy.models.checkpoint.load`)."""
    cls = family_class(spec.family)
    try:
        net = cls.from_dims(spec.name, spec.dims, **spec.family_options)
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
    return net


def build(name: str) -> Supernet:
    """The model `name` (its spec) untrained: latency does not depend on weights, tests need no training."""
    return build_from_spec(load_spec(name))
