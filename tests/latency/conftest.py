"""A tiny measured table (FAST protocol, built once per session) and a synthetic device to transfer it to."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from deploy.backends.base import Artifact
from deploy.families.base import BlockKey, Supernet
from deploy.latency.observations import Observation, table_identity
from deploy.latency.session import MeasureSession
from deploy.latency.stats import LatencyStats
from deploy.latency.table import LatencyTable, Validation
from deploy.models import build
from deploy.targets import DeviceInfo, MeasurementSpec, Target

FAST = MeasurementSpec(
    warmup_runs=2, min_runs=5, min_time_s=0.0, rounds=2, cv_max=10.0, max_retries=0, calibration_subnets=5
)


def tiny_target(name: str, **changes) -> Target:
    base = dict(
        name=name,
        device=DeviceInfo(name=f"{name} device"),
        backend="onnxruntime",
        threads=1,
        budget_ms=1.0,
        model="matformer_vit_tiny",
        measurement=FAST,
    )
    return Target(**{**base, **changes})


def write_target(root: Path, target: Target) -> Target:
    data = target.model_dump(mode="json", exclude_defaults=True)
    (root / "targets" / f"{target.name}.yaml").write_text(yaml.safe_dump(data))
    return target


@pytest.fixture(scope="session")
def tiny_table_file(tmp_path_factory) -> Path:
    """matformer_vit_tiny measured on this machine through ONNX Runtime, 1 thread (FAST protocol)."""
    import torch

    from deploy.latency.build import build_table

    root = tmp_path_factory.mktemp("tiny-table")
    (root / "targets").mkdir()
    (root / "latency_tables").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ELASTIC_DEPLOY_ROOT", str(root))
        mp.setenv("ELASTIC_DEPLOY_CACHE", str(root / ".cache"))
        mp.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(root / "locks"))
        torch.manual_seed(0)
        target = write_target(root, tiny_target("src"))
        build_table(target, [build("matformer_vit_tiny").eval()], progress=False)
    return root / "latency_tables" / "src.json"


@pytest.fixture
def src(tmp_root, tiny_table_file) -> Target:
    """The source target `src` and its measured table, in this test's root."""
    shutil.copy2(tiny_table_file, tmp_root / "latency_tables" / "src.json")
    return write_target(tmp_root, tiny_target("src"))


class SyntheticDevice:
    """A device where a block of kind k takes `kind_scale[k]` × its figure in `base` (× `speed`), a whole
    subnet the sum of its blocks plus `offset_ms`, and the one-op null model `overhead_ms`. Installed by
    patching MeasureSession.compile (no export) and MeasureSession.measure (no timing): deterministic, fast."""

    def __init__(
        self,
        base: LatencyTable,
        supernet: Supernet,
        kind_scale: Mapping[str, float] | None = None,
        *,
        offset_ms: float = 0.0,
        overhead_ms: float = 0.0,
        noise: float = 0.0,
        speed: float = 1.0,
        seed: int = 0,
        as_table_predicts: bool = False,
    ) -> None:
        from deploy.latency.predictor import LatencyPredictor

        self.base = {k: e.median_ms for k, e in base.index().items()}
        # whole subnets as the table's calibrated prediction (× speed) instead of the sum of their blocks
        self.predictor = LatencyPredictor(base) if as_table_predicts else None
        self.supernet = supernet
        self.kind_scale = dict(kind_scale or {})
        self.offset_ms, self.overhead_ms, self.noise, self.speed = offset_ms, overhead_ms, noise, speed
        self.rng = np.random.default_rng(seed)
        self.blocks = {str(k): k for k in supernet.all_blocks()}
        self.configs = {c.id: c for c in supernet.space().enumerate()}
        self.measured: list[str] = []  # identities measured, in order

    def block_ms(self, key: BlockKey) -> float:
        return self.base[key] * self.kind_scale.get(key.kind, 1.0) * self.speed

    def subnet_ms(self, config) -> float:
        if self.predictor is not None:
            return self.predictor.predict(self.supernet.blocks(config), self.supernet.family).ms * self.speed
        return sum(self.block_ms(b) for b in self.supernet.blocks(config)) + self.offset_ms * self.speed

    def truth(self, identity: Mapping[str, str]) -> float:
        if "block" in identity:
            return self.block_ms(self.blocks[identity["block"]])
        if "subnet" in identity:
            return self.subnet_ms(self.configs[identity["subnet"]])
        return self.overhead_ms * self.speed

    def stats(self, ms: float) -> LatencyStats:
        ms = ms * float(np.exp(self.rng.normal(0, self.noise))) if self.noise else ms
        return LatencyStats(ms, ms * 1.05, ms, ms * 0.01, 10, (ms, ms), 0.001, "synthetic:slower-device")

    def install(self, monkeypatch) -> SyntheticDevice:
        device = self

        def compile(session, module, example, identity, input_names=None):
            digest = hashlib.sha256(json.dumps(dict(identity), sort_keys=True).encode()).hexdigest()[:12]
            art = Artifact(Path("/synthetic") / digest, "synthetic", "fp32", (), (), {"identity": dict(identity)})
            return art, {}

        def measure(session, items, **_):  # warn_noisy: no precision gate here
            out = []
            for artifact, _ in items:
                identity = artifact.options["identity"]
                device.measured.append(json.dumps(identity, sort_keys=True))
                out.append(device.stats(device.truth(identity)))
            return out

        monkeypatch.setattr(MeasureSession, "compile", compile)
        monkeypatch.setattr(MeasureSession, "measure", measure)
        return self


@pytest.fixture
def synthetic(monkeypatch):
    """synthetic(table, supernet, kind_scale, **options): a SyntheticDevice, installed."""
    return lambda *args, **kwargs: SyntheticDevice(*args, **kwargs).install(monkeypatch)


@pytest.fixture
def make_target(tmp_root):
    """make_target(name, **changes): a target like `src` (ONNX Runtime, 1 thread, FAST), written to tmp_root."""
    return lambda name, **changes: write_target(tmp_root, tiny_target(name, **changes))


def table_with_error(table: LatencyTable, pct: float, same_window_pct: float | None = None) -> LatencyTable:
    """The table as if `tables validate` had found a `pct` median error and `same_window_pct` (default `pct`)
    with its blocks re-timed beside the subnets (the drift threshold's floor)."""
    same = pct if same_window_pct is None else same_window_pct
    table.validation = Validation(
        date="2026-12-02T00:00:00+00:00", n_samples=10, seed=1, median_abs_pct_error=pct, within_5pct=1.0,
        within_10pct=1.0, p90_abs_pct_error=2 * pct, worst_pct_error=3 * pct, same_window_median_abs_pct_error=same,
        repeatability_pct=0.5, host="h", drift_pct=pct - same,
    )  # fmt: skip
    return table


@pytest.fixture
def with_error():
    """with_error(table, pct, same_window_pct=None): the table with a validation of that error (table_with_error)."""
    return table_with_error


def make_observation(
    table: LatencyTable, family: str, ratio: float, *, age_s: float = 0.0, drift_factor: float = 1.0
) -> Observation:
    """A deploy's observation of target `src` that ran `ratio` × its prediction, `age_s` ago."""
    date = (datetime.now(UTC) - timedelta(seconds=age_s)).replace(microsecond=0).isoformat()
    return Observation(
        date=date, source="deploy", target="src", precision="fp32", table="src.json",
        table_identity=table_identity(table), model="matformer_vit_tiny", family=family, subnet_id="x",
        table_prediction_ms=0.2, drift_factor=drift_factor, corrected_prediction_ms=0.2 * drift_factor,
        measured_ms=0.2 * drift_factor * ratio,
    )  # fmt: skip


@pytest.fixture
def observation():
    """observation(table, family, ratio, *, age_s=0, drift_factor=1): an Observation (make_observation)."""
    return make_observation
