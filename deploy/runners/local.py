"""The local runner: measures on this machine, in this process, with the backend's timed call."""

from __future__ import annotations

import functools
import os
import platform
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from deploy.backends.base import Artifact, Backend
from deploy.latency.measure import measure_interleaved
from deploy.latency.stats import LatencyStats, MeasureProtocol
from deploy.runners.base import Progress, SingleFromMany
from deploy.runners.specs import LocalSpec


@functools.cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                value = line.split(":", 1)[1].strip()
                if value and not value.isdigit():
                    return value
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LocalRunner(SingleFromMany):
    name = "local"
    spec_model = LocalSpec
    backends = None  # any backend whose runtime runs on this machine

    def __init__(self, spec: LocalSpec | None = None) -> None:
        self.spec = spec or LocalSpec()
        self.hostname = socket.gethostname()

    @property
    def where(self) -> str:
        return f"local:{self.hostname}"

    def device_key(self) -> str:
        return f"local:{self.hostname}"  # every local measurement on this host loads the same cores

    def describe(self) -> str:
        return f"{self.hostname} ({cpu_model()}, {usable_cores()} cores)"

    def benchmark_many(
        self,
        backend: Backend,
        items: Sequence[tuple[Artifact, Mapping[str, np.ndarray]]],
        protocol: MeasureProtocol,
        on_progress: Progress | None = None,
        *,
        warn_noisy: bool = True,
    ) -> list[LatencyStats]:
        # A backend with a device clock (CUDA events) times each run itself; others use the host clock.
        device_timed = backend.times_on_device
        make_call = backend.device_timed_call if device_timed else backend.timed_call
        # Keys carry the position: the same artifact may appear twice (to measure repeatability).
        calls = {f"{i}:{artifact.path}": make_call(artifact, inputs) for i, (artifact, inputs) in enumerate(items)}
        where = f"{self.where} ({backend.device_clock()})" if device_timed else self.where
        stats = measure_interleaved(
            calls, protocol, on_progress=on_progress, where=where, self_timed=device_timed, warn_noisy=warn_noisy
        )
        return [stats[key] for key in calls]
