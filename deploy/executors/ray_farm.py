"""A target's devices as Ray actors: one actor per device, so measurements on a device stay sequential.

`DeviceFarm` is a Runner: a measurement in one time window (a calibration window, a validation, a
bench) runs on one device, the first that answers, and moves to the next if that one is lost.
`spread` gives each key of a table build to whichever device is free and yields every result as
it arrives; the keys a lost device held go back to the queue for the others. A device is lost when
its actor dies or its runner cannot reach it (RunnerError); any other error ends the build.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayActorError, RayTaskError

from deploy import workspace
from deploy.backends.base import Artifact, Backend
from deploy.errors import DeployError, ExecutorError, RunnerError
from deploy.executors.base import MakeItem, MeasuredBlock
from deploy.executors.shipping import ShippedArtifact, pack, unpack
from deploy.families.base import BlockKey
from deploy.latency.lock import measuring
from deploy.latency.stats import LatencyStats, MeasureProtocol
from deploy.runners.base import SingleFromMany, quiet_gate
from deploy.targets import DeviceSpec, Target

log = logging.getLogger(__name__)

START_TIMEOUT_S = 180.0  # a worker imports torch and the backend before it answers; slow hosts take a while
IN_FLIGHT_PER_DEVICE = 2  # one measuring, one queued: the device never waits for the driver's compile
# Where the driver keeps its files (the workspace is always set: deploy.workspace.use, or the CLI).
FORWARDED_ENV = ("ELASTIC_DEPLOY_ROOT", "ELASTIC_DEPLOY_CACHE", "ELASTIC_DEPLOY_LOCK_DIR")

Items = Sequence[tuple[Artifact, Mapping[str, np.ndarray]]]
Shipped = list[tuple[ShippedArtifact, Mapping[str, np.ndarray]]]


class DeviceWorker:
    """What runs inside a device's actor: the device's runner and the target's backend, opened lazily so
    that an error opening them (no backend here, bad runner spec) arrives as the error it is."""

    def __init__(self, target: Target, device_id: str) -> None:
        self.target = target
        self.device_id = device_id
        self._session: Any = None

    def session(self) -> Any:
        if self._session is None:
            from deploy.latency.session import MeasureSession

            self._session = MeasureSession.open(self.target)
        return self._session

    def ready(self) -> str:
        return f"{self.device_id} (pid {os.getpid()})"

    def describe(self) -> str:
        return f"{self.device_id}: {self.session().runner.describe()}"

    def measure(self, shipped: Shipped, protocol: MeasureProtocol, warn_noisy: bool = True) -> list[LatencyStats]:
        session = self.session()
        inbox = session.cache_dir / "ray-artifacts"
        items = [(unpack(artifact, inbox), inputs) for artifact, inputs in shipped]
        quiet = quiet_gate(session.runner, warn_noisy)
        with measuring(session.runner, f"a block on {self.device_id}"):
            return session.runner.benchmark_many(session.backend, items, protocol, **quiet)


def _unwrap(exc: RayTaskError) -> BaseException:
    """The DeployError a remote call raised (one line for the CLI), else the Ray error itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, DeployError) else exc


def is_lost(exc: BaseException) -> bool:
    """A device that died or cannot be reached: its work goes to the others."""
    return isinstance(exc, RayActorError) or (isinstance(exc, RayTaskError) and isinstance(_unwrap(exc), RunnerError))


def _start(target: Target, device: DeviceSpec) -> Any:
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env.setdefault("ELASTIC_DEPLOY_ROOT", str(workspace.root()))  # the actor's cwd is not the driver's
    options: dict[str, Any] = {
        "num_cpus": 1 if device.runner.measures_in_process else 0,  # a remote runner's actor only waits on ssh/adb
        "resources": dict(device.ray_resources),
        "max_restarts": 0,  # a lost device stays lost for this build; its keys go to the others
    }
    if env:
        options["runtime_env"] = {"env_vars": env}
    return ray.remote(DeviceWorker).options(**options).remote(target.on_device(device), device.id)


class DeviceFarm(SingleFromMany):
    """A Runner over the target's devices; `device_id` is the one that served the last measurement."""

    def __init__(self, target: Target, start_timeout_s: float = START_TIMEOUT_S) -> None:
        self.target = target
        self.kinds = {d.id: d.runner.kind for d in target.device_list}
        self.name = target.runner.kind
        self.device_id: str | None = None
        self.actors: dict[str, Any] = {d.id: _start(target, d) for d in target.device_list}
        self.lost: dict[str, str] = {}
        pings = {self.actors[d].ready.remote(): d for d in self.actors}
        ready, waiting = ray.wait(list(pings), num_returns=len(pings), timeout=start_timeout_s)
        for ref in waiting:
            spec = next(d for d in target.device_list if d.id == pings[ref])
            self.lose(spec.id, f"its actor did not start within {start_timeout_s:.0f} s" + _placement_hint(spec))
        for ref in ready:
            try:
                ray.get(ref)
            except (RayActorError, RayTaskError) as exc:
                self.lose(pings[ref], str(_unwrap(exc)).splitlines()[0])
        self.require_alive()
        log.info("%s: %d device actor(s) up: %s", target.name, len(self.alive), ", ".join(self.alive))

    @property
    def alive(self) -> dict[str, Any]:
        return {d: a for d, a in self.actors.items() if d not in self.lost}

    def lose(self, device: str, why: str) -> None:
        if device in self.lost:
            return
        self.lost[device] = why
        log.warning("device %s of %s lost (%s); its remaining work goes to the others", device, self.target.name, why)
        ray.kill(self.actors[device], no_restart=True)

    def require_alive(self) -> None:
        if not self.alive:
            whys = "; ".join(f"{d}: {w}" for d, w in self.lost.items())
            raise ExecutorError(
                f"every device of {self.target.name} is lost ({whys}); fix them and run the same command again: "
                "what was measured is kept"
            )

    def device_key(self) -> None:
        return None  # each device's actor takes its own device's lock

    def describe(self) -> str:
        """Every live device before a measurement (a table's provenance); after one, the device that made it."""
        if self.device_id is not None and self.device_id in self.alive:
            return ray.get(self.alive[self.device_id].describe.remote())
        alive = self.alive
        described = ray.get([a.describe.remote() for a in alive.values()])
        return f"{len(alive)} device(s): " + "; ".join(described)

    def close(self) -> None:
        for actor in self.actors.values():
            ray.kill(actor, no_restart=True)
        self.lost.update({d: "closed" for d in self.actors})

    def benchmark_many(
        self, backend: Backend, items: Items, protocol: MeasureProtocol, *_: Any, warn_noisy: bool = True
    ) -> list[LatencyStats]:
        """All items in one time window on one device: the first that answers, the next if it is lost.
        (The device's progress messages stay on its host.)"""
        shipped = [(pack(artifact), inputs) for artifact, inputs in items]
        while True:
            self.require_alive()
            device, actor = next(iter(self.alive.items()))
            try:
                stats = ray.get(actor.measure.remote(shipped, protocol, warn_noisy))
            except (RayActorError, RayTaskError) as exc:
                if not is_lost(exc):
                    raise _unwrap(exc) from None
                self.lose(device, str(_unwrap(exc)).splitlines()[0])
                continue
            self.device_id, self.name = device, self.kinds[device]
            return stats


def _placement_hint(device: DeviceSpec) -> str:
    if not device.ray_resources:
        return ": the cluster may have no free CPU for it"
    return (
        f": no node offers {device.ray_resources}; start the device's host with "
        f"`ray start --address HEAD:6379 --resources '{json.dumps(device.ray_resources, separators=(',', ':'))}'`"
    )


def spread(
    farm: DeviceFarm, keys: Sequence[BlockKey], make_item: MakeItem, protocol: MeasureProtocol
) -> Iterator[MeasuredBlock]:
    """Each key measured once on whichever live device is free; results in the order they finish."""
    pending: deque[BlockKey] = deque(keys)
    payloads: dict[BlockKey, Shipped] = {}  # kept until measured, so a lost device's key can be sent again
    in_flight: dict[Any, tuple[str, BlockKey]] = {}
    load: Counter[str] = Counter()
    while pending or in_flight:
        for device, actor in farm.alive.items():
            while pending and load[device] < IN_FLIGHT_PER_DEVICE:
                key = pending.popleft()
                if key not in payloads:
                    artifact, inputs = make_item(key)  # compiled here, just in time
                    payloads[key] = [(pack(artifact), inputs)]
                in_flight[actor.measure.remote(payloads[key], protocol)] = (device, key)
                load[device] += 1
        if not in_flight:
            farm.require_alive()
        (ref,), _ = ray.wait(list(in_flight), num_returns=1)
        device, key = in_flight.pop(ref)
        load[device] -= 1
        try:
            (stats,) = ray.get(ref)
        except (RayActorError, RayTaskError) as exc:
            if not is_lost(exc):
                raise _unwrap(exc) from None
            farm.lose(device, str(_unwrap(exc)).splitlines()[0])
            pending.appendleft(key)
            continue
        del payloads[key]
        yield MeasuredBlock(key, stats, device)


__all__ = ["DeviceFarm", "DeviceWorker", "is_lost", "spread"]
