"""The executor contract: where measurements and accuracy evaluations run (this process, or a Ray cluster).

An executor hands out a measuring session for a target (its runner may be a farm of devices), spreads
a table build's blocks over the target's devices, and evaluates candidate subnets. Everything it
returns is merged by the caller, in this process, into the same table or accuracy cache that the
local path writes, so the files do not depend on which executor made them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from deploy.families.base import BlockKey, Supernet
    from deploy.latency.session import Measurable, MeasureSession
    from deploy.latency.stats import LatencyStats
    from deploy.runners.base import Runner
    from deploy.search.space import SubnetConfig
    from deploy.targets import Target
    from deploy.tasks.base import Split, Task


@dataclass(frozen=True)
class MeasuredBlock:
    """One block of a table build, measured alone on one of the target's devices."""

    key: BlockKey
    stats: LatencyStats
    device: str  # the device id (targets.DeviceSpec.id)


MakeItem = Callable[["BlockKey"], "Measurable"]  # compiles a block's artifact, in this process


class Executor(Protocol):
    name: str

    def session(self, target: Target, cache_dir: Path | None = None) -> MeasureSession:
        """Compiles here; measures on the target's device (the first one that answers)."""

    def runner(self, target: Target) -> Runner:
        """What `bench` measures a deployed artifact with: the target's first device that answers."""

    def spread(self, session: MeasureSession, keys: Sequence[BlockKey], make_item: MakeItem) -> Iterator[MeasuredBlock]:
        """Each key measured once, on one device of the session's target, yielded as soon as it is done."""

    def evaluate(
        self, supernet: Supernet, task: Task, split: Split, configs: Sequence[SubnetConfig]
    ) -> Iterator[tuple[SubnetConfig, float]]:
        """The task's metric of each config on the split, yielded as results come in (any order)."""

    def close(self) -> None:
        """Release what the executor started (actors, a cluster it started itself)."""
