"""The backend contract: compile a hub entry for a target, run it, make it timeable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from deploy.hub import HubEntry
    from deploy.targets import Target


@dataclass(frozen=True)
class Artifact:
    """A compiled model on disk and what is needed to load it again."""

    path: Path
    backend: str
    precision: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)  # e.g. threads, optimisation level


class Backend(Protocol):
    name: str

    def version(self) -> str:
        """Version of the runtime/converter (recorded in tables and manifests)."""

    def compile(self, entry: HubEntry, target: Target, out_dir: Path) -> Artifact:
        """Convert the hub entry into this backend's artifact under out_dir."""

    def run(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Run the artifact once here; raises BackendUnavailableError where its runtime cannot run here."""

    def timed_call(self, artifact: Artifact, inputs: Mapping[str, np.ndarray]) -> Callable[[], object]:
        """A zero-argument callable that runs one inference (loaded once), for the local runner to time."""
