"""The runner contract: take an artifact to where it runs and measure it there.

A runner class is built from the target's runner spec (deploy/runners/specs.py) by `get_runner(spec)`.
`benchmark_many` measures items interleaved in one time window, which is what comparisons (blocks vs
whole subnets) need.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import numpy as np

from deploy.backends.base import Artifact, Backend
from deploy.latency.stats import LatencyStats, MeasureProtocol
from deploy.runners.specs import RunnerSpecBase

Progress = Callable[[str], None]


class Runner(Protocol):
    name: str
    spec_model: ClassVar[type[RunnerSpecBase]]  # what a target's `runner:` holds for this kind
    backends: ClassVar[tuple[str, ...] | None]  # the backends whose artifacts it can run (None: any)
    device_id: str | None  # where a runner spans a target's devices: the one that made the last measurement

    def describe(self) -> str:
        """Where measurements run (host name and CPU for local; serial or host for remote)."""

    def device_key(self) -> str | None:
        """The physical device measurements run on (this host, the ssh host, the phone's serial): the name of
        the lock that keeps two measurements from running there at once. None for a farm of devices,
        whose devices each take their own."""

    def benchmark(
        self,
        backend: Backend,
        artifact: Artifact,
        inputs: Mapping[str, np.ndarray],
        protocol: MeasureProtocol,
        on_progress: Progress | None = None,
    ) -> LatencyStats: ...

    def benchmark_many(
        self,
        backend: Backend,
        items: Sequence[tuple[Artifact, Mapping[str, np.ndarray]]],
        protocol: MeasureProtocol,
        on_progress: Progress | None = None,
        *,
        warn_noisy: bool = True,
    ) -> list[LatencyStats]:
        """Stats for each (artifact, inputs), in order, measured interleaved in the same time window.

        `warn_noisy` False: the caller states the spread itself, so log no warning for items that stayed
        above the protocol's precision gate (a runner whose gate logs nothing here may ignore it)."""


class SingleFromMany:
    """Mixin: `benchmark` is `benchmark_many` of one item, so a runner implements only the latter."""

    device_id: str | None = None  # a runner of one device: the target's device list names it

    def benchmark(
        self,
        backend: Backend,
        artifact: Artifact,
        inputs: Mapping[str, np.ndarray],
        protocol: MeasureProtocol,
        on_progress: Progress | None = None,
    ) -> LatencyStats:
        return self.benchmark_many(backend, [(artifact, inputs)], protocol, on_progress)[0]  # type: ignore[attr-defined]


def quiet_gate(runner: Any, warn_noisy: bool) -> dict[str, bool]:
    """The keyword that asks `runner.benchmark_many` for no precision-gate warning: {} when warnings are
    wanted, or when the runner's benchmark_many does not take `warn_noisy` (a user's runner written before
    it existed is called as it always was)."""
    if warn_noisy:
        return {}
    try:
        params = inspect.signature(runner.benchmark_many).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C callable): call it as before
        return {}
    takes = any(p.name == "warn_noisy" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    return {"warn_noisy": False} if takes else {}
