"""The runner contract: take an artifact to where it runs and measure it there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from deploy.backends.base import Artifact, Backend
from deploy.latency.stats import LatencyStats, MeasureProtocol


class Runner(Protocol):
    name: str

    def describe(self) -> str:
        """Where measurements run (host name and CPU for local; serial or host for remote)."""

    def benchmark(
        self,
        backend: Backend,
        artifact: Artifact,
        inputs: Mapping[str, np.ndarray],
        protocol: MeasureProtocol,
    ) -> LatencyStats: ...
