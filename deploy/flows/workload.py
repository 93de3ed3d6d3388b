"""The seam of the deploy flow: what an image classifier's deploy and a language model's deploy do differently.

`deploy/flows/deploy.py` runs every deploy through the same stages: load → drift check → select → extract →
build → check → measure → settle (re-select once, or stop with both numbers) → package. At each stage it asks
the target's *workload* (chosen once, from the target, by `workload_for`) for what really differs:

| stage | image classifier (`flows/image.py`) | language model (`flows/lm.py`) |
|---|---|---|
| load | checkpoint, task, latency table per precision, calibration data | checkpoint, tokenizer, task, LM table |
| drift check | reference blocks, one correction per precision | reference prefill/decode blocks, one per regime |
| select | a (subnet, precision) pair under the budget | a slice under TTFT, ms/token and size budgets |
| build + check | hub entry → artifact; parity, the task's metric | KV-cache artifact; greedy parity, perplexity |
| measure | one call, timed by the target's runner | generation loops; both under the device lock |
| settle | observation recorded; over budget: re-select once | the same, per regime |
| manifest | `ImageManifest` | `LMManifest` |

A third workload is one more class with these methods, registered in `WORKLOADS` (or through the
`elastic_deploy.workloads` entry-point group); stage results accumulate in one `RunRecord`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from deploy.errors import DeployError
from deploy.registry import Registry

if TYPE_CHECKING:
    from deploy.families.base import Supernet
    from deploy.latency.drift import Correction
    from deploy.latency.table import LatencyTable
    from deploy.models.checkpoint import CheckpointInfo
    from deploy.packaging.manifest import ImageManifest, LMManifest
    from deploy.progress import Progress
    from deploy.search.space import SubnetConfig
    from deploy.targets import Target
    from deploy.tasks.base import Task


@dataclass(frozen=True)
class DeployRequest:
    """What the user asked: the target, the model, where to write, whether to measure."""

    target: Target
    variant: str
    out_dir: Path
    measure: bool
    cache_dir: Path | None
    progress: Progress | None
    say: Callable[[str], None]


@dataclass(frozen=True)
class Loaded:
    """Stage 1: everything a wrong input can break, checked before any file is written."""

    supernet: Supernet
    ckpt: CheckpointInfo
    task: Task
    table: LatencyTable


@dataclass(frozen=True)
class Chosen:
    """Stage 3: the subnet (or slice) the selector chose and the selector's record; a workload's extends it."""

    config: SubnetConfig
    selection: Any  # search.select.Selection (images), lm.select.LMSelection (language models)


class Reselect(Exception):  # control flow inside the deploy flow, never shown to a user
    """The measured artifact missed its budget: select once more with the correction that measurement implies.

    `corrections` replace the drift check's (per precision for images, per regime for language models);
    `first` says what was measured, for the manifest and for the message if the second selection fails too."""

    def __init__(self, corrections: Mapping[str, Correction], first: dict[str, Any]) -> None:
        super().__init__(first["message"])
        self.corrections = dict(corrections)
        self.first = first


@dataclass
class RunRecord:
    """The stage results of one deploy, in the order the skeleton produced them (the manifest is made from it)."""

    request: DeployRequest
    loaded: Loaded
    corrections: Mapping[str, Correction]
    chosen: Chosen
    built: Any = None  # the workload's build and check record
    measured: Any = None  # the workload's measurement (None where nothing was timed)
    not_measured: str | None = None
    settled: dict[str, Any] = field(default_factory=dict)  # the manifest's drift block
    retry: Reselect | None = None


class Workload(Protocol):
    """What the deploy skeleton asks a workload at each stage (see the table in this module's docstring)."""

    kind: ClassVar[str]  # the manifest's `kind`

    def load(self, request: DeployRequest) -> Loaded: ...

    def drift_check(self, request: DeployRequest, loaded: Loaded) -> Mapping[str, Correction]: ...

    def select(self, request: DeployRequest, loaded: Loaded, corrections: Mapping[str, Correction]) -> Chosen: ...

    def build(self, record: RunRecord, staging: Path) -> Any:
        """Compile the chosen subnet into `staging` and check it (parity, the task's metric)."""

    def measure(self, record: RunRecord) -> tuple[Any, str | None]:
        """(measurement, None), or (None, why not), under the device's measurement lock."""

    def settle(self, record: RunRecord) -> dict[str, Any]:
        """Record the measurement as an observation and judge it against the budget: the manifest's drift block,
        or Reselect (first time), or MeasuredOverBudgetError (after a re-selection)."""

    def manifest(self, record: RunRecord) -> ImageManifest | LMManifest: ...

    def package(self, record: RunRecord, manifest: ImageManifest | LMManifest, staging: Path) -> list[str]:
        """Write what goes beside the manifest (report, plot); the names of every file the output holds."""

    def reselect_failed(self, request: DeployRequest, retry: Reselect, second: Exception) -> DeployError:
        """The one-line error when the selection after a measured miss fails again."""


WORKLOADS: Registry[type[Workload]] = Registry(
    "workload",
    {"image": "deploy.flows.image:ImageWorkload", "lm": "deploy.flows.lm:LMWorkload"},
    group="elastic_deploy.workloads",
)


def workload_for(target: Target) -> Workload:
    """The workload a target deploys: a language model where it has an `lm:` section, else an image classifier."""
    return WORKLOADS.load("lm" if target.lm is not None else "image")()
