"""The local executor: everything in this process, one measurement at a time, on the target's first device.

What the project did before executors existed; the default, and it needs nothing beyond the core install.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.executors.base import MakeItem, MeasuredBlock
from deploy.tasks.base import Split, Task, predictor

if TYPE_CHECKING:
    from deploy.families.base import BlockKey, Supernet
    from deploy.latency.session import MeasureSession
    from deploy.runners.base import Runner
    from deploy.search.space import SubnetConfig
    from deploy.targets import Target


class LocalExecutor:
    name = "local"

    def __init__(self, address: str | None = None) -> None:
        if address is not None:
            from deploy.errors import ExecutorError

            raise ExecutorError(f"--ray-address {address} needs --executor ray; drop it to measure in this process")

    def session(self, target: Target, cache_dir: Path | None = None) -> MeasureSession:
        from deploy.latency.session import MeasureSession

        return MeasureSession.open(target, cache_dir)

    def runner(self, target: Target) -> Runner:
        from deploy.runners import get_runner

        return get_runner(target.runner)  # the first device's (targets.Target._devices_well_formed)

    def spread(self, session: MeasureSession, keys: Sequence[BlockKey], make_item: MakeItem) -> Iterator[MeasuredBlock]:
        # Other devices of the target stay idle: spreading is what `--executor ray` is for.
        device = session.device_id()
        for key in keys:
            (stats,) = session.measure([make_item(key)])
            yield MeasuredBlock(key, stats, device)

    def evaluate(
        self, supernet: Supernet, task: Task, split: Split, configs: Sequence[SubnetConfig]
    ) -> Iterator[tuple[SubnetConfig, float]]:
        was_training = supernet.training
        supernet.eval()
        try:
            for config in configs:
                yield config, task.evaluate(predictor(supernet, supernet.input_names(), config=config), split)
        finally:
            supernet.train(was_training)

    def close(self) -> None:
        pass
