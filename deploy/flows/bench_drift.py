"""The drift check of a bench, and the observation its measurement leaves for the deploys' refit.

The bench gates on the table's prediction × the drift factor measured now (deploy/latency/drift.py), and
records what it measured (deploy/latency/observations.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.errors import BackendUnavailableError, DeployError, RunnerError
from deploy.latency.drift import Correction, current_correction
from deploy.latency.observations import observation_of, observations_path, record_observation
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import LatencyTable
from deploy.models import build
from deploy.search.space import SubnetConfig

if TYPE_CHECKING:
    from deploy.families.base import Supernet
    from deploy.latency.session import MeasureSession
    from deploy.latency.stats import LatencyStats
    from deploy.packaging.manifest import ImageManifest
    from deploy.targets import Target

log = logging.getLogger(__name__)


@dataclass
class BenchDrift:
    """The drift check of a bench and what it makes of the deployed subnet's prediction.

    The bench gates on the table's prediction × the drift factor measured now, not × the observed scale:
    the observations include earlier benches of this very artifact, which would make the gate circular."""

    target: Target
    table: LatencyTable
    supernet: Supernet
    subnet_id: str
    table_ms: float
    correction: Correction

    @property
    def corrected_ms(self) -> float:
        return self.table_ms * self.correction.drift_factor

    def to_json(self) -> dict[str, Any]:
        return {
            "table_prediction_ms": self.table_ms,
            "drift_factor": self.correction.drift_factor,
            "corrected_prediction_ms": self.corrected_ms,
            "correction": self.correction.to_json(),
        }

    def observe(self, measured: LatencyStats, artifact_sha256: str, cache_dir: Path | None = None) -> Path:
        obs = observation_of(
            self.target,
            self.table,
            measured,
            source="bench",
            model=self.supernet.variant,
            family=self.supernet.family,
            subnet_id=self.subnet_id,
            artifact_sha256=artifact_sha256,
            table_prediction_ms=self.table_ms,
            drift_factor=self.correction.drift_factor,
            corrected_prediction_ms=self.corrected_ms,
        )
        return record_observation(obs, observations_path(self.target, cache_dir))


def bench_drift(
    target: Target,
    manifest: ImageManifest,
    *,
    session_for: Callable[[Target], MeasureSession],
    say: Callable[[str], None] = log.info,
) -> BenchDrift | None:
    """The drift check before a bench measures the deployed artifact; None (said why) where it cannot run."""
    try:
        at = target.at_precision(manifest.precision)
        table = LatencyTable.load(at.table_path, at.name)
        supernet = build(manifest.model)  # latency does not depend on the weights
        config = SubnetConfig.from_json(manifest.subnet.config)
        table_ms = LatencyPredictor(table).predict(supernet.blocks(config), supernet.family).ms
    except (DeployError, KeyError, ValueError) as exc:
        say(f"no drift check: {str(exc).rstrip('.') or type(exc).__name__}")
        return None
    try:
        session = session_for(at)
    except (BackendUnavailableError, RunnerError) as exc:
        say(f"no drift check for {at.name}: {str(exc).rstrip('.')}")
        return BenchDrift(at, table, supernet, config.id, table_ms, Correction(skipped=str(exc)))
    correction = current_correction(at, table, supernet, session=session, say=say, observations=False)
    return BenchDrift(at, table, supernet, config.id, table_ms, correction)
