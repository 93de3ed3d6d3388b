"""The public plugin API: everything a user's package imports to bring a family, a task, a backend or a runner.

A user never edits elastic-deploy to deploy their model. They write, in their own package:

- a **family**: a `Supernet` subclass (one float image input: `ImageSupernet`) that declares its
  `inputs()` as `InputSpec`s (names, batch-1 shapes, dtypes; int64 token ids as well as images), its
  `dims_type` (a frozen dataclass: what a model spec's `dims` fill), its `space()`, `extract(config)` (a
  dense module with sliced weights), `blocks(config)` (the `BlockKey`s whose latencies add up) and
  `build_block(key)`; optionally `flops`, `position_embedding`, `set_calibration_inputs`;
- a **task**: a `Task` subclass with `name`, `metric` (a `Metric` with its direction), `input_names`,
  `load_split(name)` returning `Split`s, and `batch_score(outputs, targets)`;
- optionally a **backend** (`Backend` protocol, `BackendBase` defaults) or a **runner** (`Runner`
  protocol, a `RunnerSpecBase` subclass for its target fields; its `measures_in_process` capability stays
  False unless the runner times artifacts in this process, as the local runner does).

They register them through Python entry points in their pyproject.toml (the groups below), or name them
as `package.module:Class` in a model spec (`models/<name>.yaml`) or a target. Everything else (targets,
models, tables, checkpoints) is data in a workspace folder. See docs/bring-your-own-model.md.
"""

from __future__ import annotations

from deploy.backends import BACKENDS
from deploy.backends.base import Artifact, Backend, BackendBase, NoOptions, backend_options, check_precision
from deploy.errors import DeployError, PluginError
from deploy.families import FAMILIES
from deploy.families.base import BlockKey, ImageSupernet, InputSpec, Supernet
from deploy.latency.stats import LatencyStats, MeasureProtocol
from deploy.lm.artifact import LMArtifact, LMBackend, LMSession, LMSpec
from deploy.models.spec import ModelSpec, build, build_from_spec, known_models, load_spec
from deploy.runners import RUNNERS
from deploy.runners.base import Runner, SingleFromMany
from deploy.runners.specs import RunnerSpecBase
from deploy.search.space import Gene, SearchSpace, SubnetConfig
from deploy.tasks import TASKS, get_task
from deploy.tasks.base import TOP1, ArrayTask, Metric, Split, Task, predictor, top1_batch_score

# Entry-point groups a user's pyproject.toml registers in: [project.entry-points."elastic_deploy.families"]
ENTRY_POINT_GROUPS = {
    "families": "elastic_deploy.families",
    "tasks": "elastic_deploy.tasks",
    "backends": "elastic_deploy.backends",
    "runners": "elastic_deploy.runners",
}

__all__ = [
    "BACKENDS",
    "ENTRY_POINT_GROUPS",
    "FAMILIES",
    "RUNNERS",
    "TASKS",
    "TOP1",
    "ArrayTask",
    "Artifact",
    "Backend",
    "BackendBase",
    "BlockKey",
    "DeployError",
    "Gene",
    "ImageSupernet",
    "InputSpec",
    "LMArtifact",
    "LMBackend",
    "LMSession",
    "LMSpec",
    "LatencyStats",
    "MeasureProtocol",
    "Metric",
    "ModelSpec",
    "NoOptions",
    "PluginError",
    "Runner",
    "RunnerSpecBase",
    "SearchSpace",
    "SingleFromMany",
    "Split",
    "SubnetConfig",
    "Supernet",
    "Task",
    "backend_options",
    "build",
    "build_from_spec",
    "check_precision",
    "get_task",
    "known_models",
    "load_spec",
    "predictor",
    "top1_batch_score",
]
