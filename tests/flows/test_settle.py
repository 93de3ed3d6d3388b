"""After a deploy measured its artifact: the observation, the refit, and never shipping over budget silently."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from deploy.errors import MeasuredOverBudgetError
from deploy.families.base import Supernet
from deploy.flows.settle import Reselect, reselect_failed, settle_measurement
from deploy.latency import drift
from deploy.latency.drift import Correction, DriftCheck
from deploy.latency.observations import Observation, observations_path, observed_scale
from deploy.latency.predictor import LatencyPredictor, table_error_pct
from deploy.latency.stats import LatencyStats
from deploy.latency.table import LatencyTable
from deploy.models import build
from deploy.search.select import Candidate
from deploy.search.space import SubnetConfig
from deploy.targets import Target, load_target


def stats(ms: float) -> LatencyStats:
    return LatencyStats(ms, ms * 1.1, ms, ms * 0.05, 400, (ms, ms), 0.01, "local:fake")


@dataclass(frozen=True)
class Settling:
    """The shipped target's smallest subnet, predicted as the table predicts it (× a correction), settled."""

    target: Target
    table: LatencyTable
    supernet: Supernet
    config: SubnetConfig

    @property
    def table_ms(self) -> float:
        return LatencyPredictor(self.table).predict(self.supernet.blocks(self.config), self.supernet.family).ms

    def __call__(
        self, measured_ms: float | None, *, correction: Correction | None = None, retry: Reselect | None = None
    ) -> tuple[dict[str, Any], list[str]]:
        predicted = self.table_ms * (correction.factor if correction is not None else 1.0)
        said: list[str] = []
        block = settle_measurement(
            target=self.target, table=self.table, supernet=self.supernet, model=self.supernet.variant,
            choice=Candidate(self.config, predicted, 0.0, 0.9, "exact", None), correction=correction,
            corrections={}, measured=None if measured_ms is None else stats(measured_ms),
            not_measured=None if measured_ms is not None else "--no-measure", artifact_sha256="abc", retry=retry,
            say=said.append,
        )  # fmt: skip
        return block, said


@pytest.fixture
def settle(shipped) -> Settling:
    target = load_target("host-cpu-ort")
    supernet = build(target.model)
    return Settling(target, LatencyTable.load(target.table_path), supernet, supernet.smallest())


def beyond(table: LatencyTable, family: str, factor: float) -> Correction:
    """A drift check that found the device `factor` × the table, beyond its threshold."""
    error = table_error_pct(table, family)
    check = DriftCheck("host-cpu-ort", "fp32", "now", "fake", (), factor, 0.1, error, error, 0.0, 0.0)
    return Correction(drift=check)


def test_settle_measurement_records_the_observation_and_ships_when_within_budget(settle):
    predicted = settle.table_ms
    block, said = settle(predicted)
    assert block["measured_ms"] == predicted and block["reselected"] is None and block["refit"] is None
    assert block["observation"]["source"] == "deploy" and block["observation"]["artifact_sha256"] == "abc"
    lines = observations_path(settle.target).read_text().splitlines()
    assert len(lines) == 1 and Observation.model_validate_json(lines[0]).measured_ms == predicted
    assert not said  # it agreed with the prediction: nothing to say


def test_settle_measurement_records_nothing_and_returns_the_block_when_not_measured(settle):
    block, _ = settle(None)
    assert block["measured_ms"] is None and block["not_measured_reason"] == "--no-measure"
    assert block["observation"] is None and not observations_path(settle.target).exists()


def test_settle_measurement_refits_on_a_disagreeing_measurement_when_no_drift_correction_applied(settle):
    block, said = settle(0.5 * settle.table_ms)
    assert block["refit"]["scale"] == pytest.approx(0.5) and block["refit"]["n_observations"] == 1
    assert "the calibration's scale refitted on 1 recent observation(s) is ×0.500" in said[0]


def test_settle_measurement_refits_nothing_when_made_under_a_drift_correction(settle):
    correction = beyond(settle.table, settle.supernet.family, 1.25)
    block, said = settle(0.5 * settle.table_ms, correction=correction)
    assert block["refit"] is None and block["drift_factor"] == 1.25
    assert "×1.250 from the drift check did not hold" in said[0] and "refits nothing" in said[0]
    assert observed_scale(settle.target, settle.table, settle.supernet.family) is None


def test_settle_measurement_raises_reselect_with_the_implied_correction_when_over_budget(settle):
    with pytest.raises(Reselect) as info:
        settle(0.9)  # the shipped budget is 0.6 ms
    first = info.value.first
    assert first["measured_ms"] == 0.9 and first["subnet"] == settle.config.id
    assert first["correction"] == pytest.approx(0.9 / first["table_prediction_ms"])
    assert info.value.corrections["fp32"].factor == pytest.approx(first["correction"])
    error = reselect_failed(info.value, ValueError("no subnet fits."), 0.6)
    assert isinstance(error, MeasuredOverBudgetError) and "found nothing under 0.6 ms (no subnet fits)" in str(error)


def test_settle_measurement_stops_with_both_numbers_when_over_budget_after_reselecting(settle):
    with pytest.raises(Reselect) as info:
        settle(0.9)
    with pytest.raises(MeasuredOverBudgetError, match=r"measured 0\.800 ms .* \(\S+ measured 0\.900 ms\)"):
        settle(0.8, retry=info.value)


# --- deploys that notice drift and never ship over budget silently (shipped model, table and target) --------


def fake_drift(monkeypatch, factor: float) -> None:
    """The drift check finds the device `factor` × the table (beyond any threshold unless 1.0)."""

    def check(session, table, supernet, **_):
        error = table_error_pct(table, supernet.family)
        return DriftCheck(
            table.provenance.target, table.provenance.precision, "now", "fake", (), factor, 0.1, error, error, 0.0, 0.0
        )

    monkeypatch.setattr(drift, "check_drift", check)


def fake_measurements(monkeypatch, values: list[float]) -> list[float]:
    """The deploy's measurements of its artifact, in order (the real artifact is built and checked)."""
    import deploy.flows.image

    def measure_artifact(backend, artifact, entry, target, check, measure, say):
        ms = values.pop(0)
        return LatencyStats(ms, ms * 1.1, ms, ms * 0.05, 400, (ms, ms), 0.01, "local:fake"), None

    monkeypatch.setattr(deploy.flows.image, "measure_artifact", measure_artifact)
    return values


@pytest.mark.slow
def test_deploy_rescales_predictions_and_records_them_in_the_manifest_when_the_device_drifted(shipped, monkeypatch):
    from deploy.flows.deploy import deploy

    fake_drift(monkeypatch, 1.25)
    fake_measurements(monkeypatch, [0.3])
    said: list[str] = []
    result = deploy("host-cpu-ort", progress=False, say=said.append)
    d, lat = result.manifest.model_dump(mode="json")["drift"], result.manifest.model_dump(mode="json")["latency"]
    assert d["drift_factor"] == 1.25 == d["correction_factor"] and d["measured_ms"] == 0.3 and d["reselected"] is None
    assert d["corrected_prediction_ms"] == pytest.approx(1.25 * d["table_prediction_ms"]) == lat["predicted_ms"]
    assert d["correction"]["drift_check"]["beyond"] and any("rescaled ×1.250" in m for m in said)
    lines = observations_path(load_target("host-cpu-ort")).read_text().splitlines()
    obs = Observation.model_validate_json(lines[-1])
    assert len(lines) == 1 and obs.source == "deploy" and obs.measured_ms == 0.3 and obs.drift_factor == 1.25
    assert obs.subnet_id == result.manifest.model_dump(mode="json")["subnet"]["id"] and obs.where == "local:fake"
    assert "drift correction" in (shipped / "dist" / "host-cpu-ort" / "report.md").read_text()
    # measured far below the corrected prediction: that judges the drift check, and refits nothing
    assert any("×1.250 from the drift check did not hold" in m and "refits nothing" in m for m in said)
    target = load_target("host-cpu-ort")
    assert observed_scale(target, LatencyTable.load(target.table_path), obs.family) is None


@pytest.mark.slow
def test_deploy_reselects_once_with_the_measured_correction_when_the_artifact_exceeds_the_budget(shipped, monkeypatch):
    from deploy.flows.deploy import deploy

    fake_drift(monkeypatch, 1.0)
    left = fake_measurements(monkeypatch, [0.7, 0.3])
    said: list[str] = []
    result = deploy("host-cpu-ort", progress=False, say=said.append)
    d = result.manifest.model_dump(mode="json")["drift"]
    first = d["reselected"]
    assert left == [] and first["measured_ms"] == 0.7 and d["measured_ms"] == 0.3
    assert first["subnet"] != result.manifest.model_dump(mode="json")["subnet"]["id"]
    assert d["correction_factor"] == pytest.approx(0.7 / first["table_prediction_ms"])
    assert d["corrected_prediction_ms"] == pytest.approx(d["table_prediction_ms"] * d["correction_factor"])
    assert result.manifest.model_dump(mode="json")["latency"]["predicted_ms"] <= 0.6
    assert any("over the budget of 0.6 ms" in m and "re-selecting once" in m for m in said)
    assert len(observations_path(load_target("host-cpu-ort")).read_text().splitlines()) == 2


# its rule is test_settle_measurement_stops_with_both_numbers_when_over_budget_after_reselecting; two deploys more
@pytest.mark.extended
@pytest.mark.slow
def test_deploy_stops_with_both_numbers_when_the_reselected_artifact_is_over_budget_too(shipped, monkeypatch):
    from deploy.flows.deploy import deploy

    fake_drift(monkeypatch, 1.0)
    fake_measurements(monkeypatch, [0.7, 0.65, 0.1])
    with pytest.raises(MeasuredOverBudgetError) as info:
        deploy("host-cpu-ort", progress=False)
    message = str(info.value)
    assert "\n" not in message and "measured 0.650 ms" in message and "over the budget of 0.6 ms (predicted" in message
    assert "measured 0.700 ms" in message and "nothing was written" in message
    assert not (shipped / "dist" / "host-cpu-ort").exists()


# the re-selection is the reselect deploy test above; this adds the path where it finds nothing
@pytest.mark.extended
@pytest.mark.slow
def test_deploy_stops_when_nothing_fits_with_the_measured_correction(shipped, monkeypatch):
    from deploy.flows.deploy import deploy

    fake_drift(monkeypatch, 1.0)
    fake_measurements(monkeypatch, [50.0])
    with pytest.raises(MeasuredOverBudgetError, match=r"measured 50\.000 ms .* found nothing under 0\.6 ms"):
        deploy("host-cpu-ort", progress=False)
    assert not (shipped / "dist" / "host-cpu-ort").exists()
