"""Tasks: where the data comes from and how a model is scored (MNIST ships; users bring their own).

A model spec names its task by a registered name (below, or a plugin's in the `elastic_deploy.tasks`
entry-point group) or as `package.module:Class`, with a seed and options.
"""

from __future__ import annotations

from typing import Any

from deploy.errors import PluginError
from deploy.registry import Registry
from deploy.tasks.base import Metric, Split, Task

TASKS: Registry[type[Task]] = Registry(
    "task",
    {
        "mnist": "deploy.tasks.mnist:MnistTask",
        "text_lm": "deploy.tasks.text:TextLM",
        "synthetic_images": "deploy.tasks.synthetic:SyntheticImages",
    },
    group="elastic_deploy.tasks",
)


def get_task(name: str, seed: int = 0, options: dict[str, Any] | None = None) -> Task:
    """An instance of the task `name` (registered name or package.module:Class) with its seed and options."""
    cls = TASKS.load(name)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise PluginError(f"task '{name}' is {cls!r}, not a subclass of deploy.api.Task; point at the task class")
    for attr in ("name", "metric", "input_names"):
        if not hasattr(cls, attr):
            raise PluginError(f"task '{name}' ({cls.__qualname__}) does not declare '{attr}'; set it on the class")
    try:
        return cls(seed=seed, **(options or {}))
    except TypeError as exc:
        raise PluginError(f"task '{name}' does not take options {sorted(options or {})}: {exc}") from None


__all__ = ["TASKS", "Metric", "Split", "Task", "get_task"]
