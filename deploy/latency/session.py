"""A measuring session for one target: turns modules into compiled artifacts and measures them on the
target's runner through the target's backend, the same path a deployed artifact takes."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deploy import workspace
from deploy.backends import get_backend
from deploy.backends.base import Artifact, Backend
from deploy.export import hub
from deploy.latency.lock import measuring
from deploy.latency.stats import LatencyStats
from deploy.runners import get_runner
from deploy.runners.base import Runner, quiet_gate
from deploy.targets import Target

Measurable = tuple[Artifact, Mapping[str, np.ndarray]]


@dataclass
class MeasureSession:
    target: Target
    backend: Backend
    runner: Runner
    cache_dir: Path

    @classmethod
    def open(cls, target: Target, cache_dir: Path | None = None) -> MeasureSession:
        backend = get_backend(target.backend)
        reason = backend.runs_here()
        if reason and target.runner.measures_in_process:
            from deploy.errors import BackendUnavailableError

            estimate = f", or write an estimated one: `elastic-deploy tables estimate --target {target.name}`"
            raise BackendUnavailableError(
                f"cannot measure {target.name} on this machine: {reason}; run this on the device itself"
                + (estimate if target.estimate is not None else "")
            )
        return cls(target, backend, get_runner(target.runner), cache_dir or workspace.cache_dir())

    def fingerprint(self, runner_name: str | None = None) -> str:
        """What a table entry was measured with; an entry with another fingerprint is stale."""
        m = self.target.measurement
        ident = {
            "backend": self.backend.name,
            "version": self.backend.version(),
            "threads": self.target.threads,
            "precision": self.target.precision,
            "runner": runner_name or self.runner.name,
            "protocol": [m.warmup_runs, m.min_runs, m.min_time_s, m.rounds],
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]

    def fingerprints(self) -> dict[str, str]:
        """Device id -> fingerprint, for every device of the target (one table may merge several)."""
        return {d.id: self.fingerprint(d.runner.kind) for d in self.target.device_list}

    def device_id(self) -> str:
        """The device the last measurement ran on (a farm of devices fails over; else the first one)."""
        return self.runner.device_id or self.target.device_list[0].id

    def compile(
        self,
        module: nn.Module,
        example: hub.Example,
        identity: Mapping[str, str],
        input_names: Sequence[str] | None = None,
    ) -> Measurable:
        with_program = self.backend.needs_program
        entry = hub.get_or_export(
            module, example, identity, cache_dir=self.cache_dir, with_program=with_program, input_names=input_names
        )
        # per precision: a target's precisions compile the same hub entry into different artifacts
        out_dir = self.cache_dir / "artifacts" / self.target.name / self.target.precision / entry.key
        artifact = self.backend.compile(entry, self.target, out_dir)
        return artifact, entry.reference_inputs()

    def measure(self, items: Sequence[Measurable], *, warn_noisy: bool = True) -> list[LatencyStats]:
        """Measure artifacts interleaved, round by round, so they share one time window. `warn_noisy` False:
        the caller states the spread itself, so no warning for items above the precision gate."""
        protocol, quiet = self.target.measurement.protocol(), quiet_gate(self.runner, warn_noisy)
        with measuring(self.runner, f"measuring for {self.target.name}"):
            return self.runner.benchmark_many(self.backend, list(items), protocol, **quiet)

    def versions(self) -> dict[str, str]:
        import onnx

        return {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            self.backend.name: self.backend.version(),
        }
