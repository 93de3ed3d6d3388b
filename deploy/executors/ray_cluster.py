"""The Ray executor: a target's devices as actors (table builds, validation, bench) and accuracy evaluation
as tasks, on a local Ray cluster or an existing one (`--ray-address HOST:6379`, `auto` on a node).

Ray is imported here and in ray_farm.py only; without it, asking for this executor is one line that
names the install command.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.errors import ExecutorError

INSTALL = (
    "--executor ray needs Ray: install the ray extra with `pip install -e '.[ray]'` "
    "(or `make latency-tables EXECUTOR=ray ...`, which installs it)"
)
try:
    import ray
except ImportError:
    raise ExecutorError(INSTALL) from None

from deploy import workspace  # noqa: E402  (after the guarded import: ray's absence is reported first)
from deploy.executors.base import MakeItem, MeasuredBlock  # noqa: E402
from deploy.executors.ray_farm import DeviceFarm, spread  # noqa: E402

if TYPE_CHECKING:

    from deploy.families.base import BlockKey, Supernet
    from deploy.latency.session import MeasureSession
    from deploy.search.space import SubnetConfig
    from deploy.targets import Target
    from deploy.tasks.base import Split, Task

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0  # ray.init itself retries an unreachable address for minutes
CHUNKS_PER_WORKER = 4  # enough chunks to balance uneven configs, few enough to amortise each task's start
MAX_CHUNK = 64


def _check_reachable(address: str) -> None:
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(
            f"--ray-address {address!r} is not HOST:PORT: give the head node's address (e.g. 10.0.0.5:6379, "
            "printed by `ray start --head`), or `auto` on a node of the cluster"
        )
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ExecutorError(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}): start one there with "
            "`ray start --head`, or fix --ray-address (drop it to start a local cluster)"
        ) from None


def connect(address: str | None) -> bool:
    """Join the cluster at `address`, or start a local one (None); True when this call started it."""
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():  # e.g. a test's cluster, or the caller's own ray.init
        return False
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:  # "local": a new cluster even where `ray start` left one (or its stale address file)
        options["include_dashboard"] = False
    try:
        ray.init(address=address or "local", **options)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        where = address or "a new local cluster"
        # Ray sends a cluster's token only to an address it found itself (auto), never to one given.
        token = (
            "; a cluster started by `ray start --head` checks a token: set RAY_AUTH_MODE=token here, with the "
            "token that `ray get-auth-token` prints on the head in ~/.ray/auth_token or RAY_AUTH_TOKEN"
            if address not in (None, "auto") and os.environ.get("RAY_AUTH_MODE", "").lower() != "token"
            else ""
        )
        raise ExecutorError(
            f"could not join the Ray cluster at {where} ({str(exc).strip().splitlines()[0]}): check `ray status` "
            f"there, or drop --ray-address to start a local cluster{token}"
        ) from None
    return address is None


@ray.remote(num_cpus=1)
def _evaluate_chunk(supernet: Supernet, task: Task, split: Split, configs: list[SubnetConfig]) -> list[float]:
    import torch

    from deploy.executors.local import LocalExecutor

    torch.set_num_threads(1)  # one core per task, as Ray schedules it: tasks side by side do not fight
    return [value for _, value in LocalExecutor().evaluate(supernet, task, split, configs)]


def chunk_size(n: int, workers: int) -> int:
    return max(1, min(MAX_CHUNK, math.ceil(n / (workers * CHUNKS_PER_WORKER))))


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        self.started = connect(address)
        self.workers = workers  # concurrent evaluation tasks; None: the cluster's CPUs
        self._farms: dict[str, DeviceFarm] = {}

    def runner(self, target: Target) -> DeviceFarm:
        farm = self._farms.get(target.name)  # one actor per device, whatever the precision measured
        if farm is None or not farm.alive:
            farm = self._farms[target.name] = DeviceFarm(target)
        farm.device_id = None  # a new session has measured nowhere yet (see DeviceFarm.describe)
        return farm

    def session(self, target: Target, cache_dir: Path | None = None) -> MeasureSession:
        from deploy.backends import get_backend
        from deploy.latency.session import MeasureSession

        # Not MeasureSession.open: whether the backend runs is for the device's host to say (its actor does).
        runner = self.runner(target)
        return MeasureSession(target, get_backend(target.backend), runner, cache_dir or workspace.cache_dir())

    def spread(self, session: MeasureSession, keys: Sequence[BlockKey], make_item: MakeItem) -> Iterator[MeasuredBlock]:
        farm = session.runner
        if not isinstance(farm, DeviceFarm):
            raise TypeError("RayExecutor.spread needs a session from RayExecutor.session")
        return spread(farm, keys, make_item, session.target.measurement.protocol())

    def evaluate(
        self, supernet: Supernet, task: Task, split: Split, configs: Sequence[SubnetConfig]
    ) -> Iterator[tuple[SubnetConfig, float]]:
        """Configs in chunks, one task per chunk, at most `workers` at once; shared inputs stored once."""
        configs = list(configs)
        if not configs:
            return
        workers = self.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = chunk_size(len(configs), workers)
        chunks = [configs[i : i + size] for i in range(0, len(configs), size)]
        shared = ray.put(supernet), ray.put(task), ray.put(split)
        in_flight: dict[Any, list[SubnetConfig]] = {}
        while chunks or in_flight:
            while chunks and len(in_flight) < workers:
                chunk = chunks.pop(0)
                in_flight[_evaluate_chunk.remote(*shared, chunk)] = chunk
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            yield from zip(in_flight.pop(ref), ray.get(ref), strict=True)

    def close(self) -> None:
        for farm in self._farms.values():
            farm.close()
        self._farms.clear()
        if self.started and ray.is_initialized():
            ray.shutdown()
