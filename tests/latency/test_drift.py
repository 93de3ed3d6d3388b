"""Drift: reference blocks against the table, observations and their refit, the build guard, validate's figures."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from deploy.flows.bench import evaluate
from deploy.latency import drift
from deploy.latency.build import build_table
from deploy.latency.drift import (
    BuildDriftGuard,
    DriftCheck,
    Observation,
    check_drift,
    current_correction,
    observations_path,
    observed_scale,
    record_observation,
    reference_blocks,
    table_identity,
)
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.session import MeasureSession
from deploy.latency.stats import LatencyStats
from deploy.latency.table import LatencyTable, Validation
from deploy.latency.validate import summarize, validate_table
from deploy.targets import load_target


def with_error(table: LatencyTable, pct: float, same_window_pct: float | None = None) -> LatencyTable:
    """The table as if `tables validate` had found a `pct` median error and `same_window_pct` (default `pct`)
    with its blocks re-timed beside the subnets (the drift threshold's floor)."""
    same = pct if same_window_pct is None else same_window_pct
    table.validation = Validation(
        date="2026-12-02T00:00:00+00:00", n_samples=10, seed=1, median_abs_pct_error=pct, within_5pct=1.0,
        within_10pct=1.0, p90_abs_pct_error=2 * pct, worst_pct_error=3 * pct, same_window_median_abs_pct_error=same,
        repeatability_pct=0.5, host="h", drift_pct=pct - same,
    )  # fmt: skip
    return table


def device_for(table: LatencyTable, tiny, synthetic, **options):
    """A synthetic device whose null model costs what the table's calibration measured (so ratios are exact)."""
    return synthetic(table, tiny, overhead_ms=table.calibration.call_overhead_ms, **options)


def test_drift_check_measures_the_factor_and_rescales_predictions_when_the_device_runs_slower(src, tiny, synthetic):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    device_for(table, tiny, synthetic, speed=1.3)
    check = check_drift(MeasureSession.open(src), table, tiny)
    assert check.factor == pytest.approx(1.3, rel=1e-9) and check.beyond and check.applied_factor == check.factor
    assert len(check.blocks) == 4 and check.threshold_pct == 5.0 and check.repeatability_pct == 0.0
    assert "predictions are rescaled ×1.300" in check.message()
    blocks = tiny.blocks(tiny.largest())
    corrected = LatencyPredictor(table, check.applied_factor).predict(blocks, tiny.family)
    plain = LatencyPredictor(table).predict(blocks, tiny.family)
    assert corrected.ms == pytest.approx(1.3 * plain.ms) and corrected.table_ms == plain.ms == plain.table_ms
    assert corrected.correction == check.factor and plain.correction == 1.0
    assert LatencyTable.load(src.table_path).entries == table.entries  # the table file is never changed


def test_drift_check_leaves_predictions_alone_when_a_burst_slowed_only_one_of_its_passes(src, tiny, synthetic,
                                                                                        monkeypatch):  # fmt: skip
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    device = device_for(table, tiny, synthetic)
    installed, passes = MeasureSession.measure, []

    def measure(session, items):  # the first pass runs in a burst of load, the second after it
        passes.append(len(items))
        device.speed = 1.3 if len(passes) == 1 else 1.0
        return installed(session, items)

    monkeypatch.setattr(MeasureSession, "measure", measure)
    check = check_drift(MeasureSession.open(src), table, tiny)
    assert passes == [5, 5]  # 4 reference blocks and the null model, twice
    assert check.factor == pytest.approx(1.15, rel=1e-6) and check.repeatability_pct == pytest.approx(26.1, abs=0.1)
    assert not check.beyond and check.applied_factor == 1.0 and "within" in check.message()


def test_drift_within_the_tables_validated_error_leaves_predictions_alone(src, tiny, synthetic):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    device_for(table, tiny, synthetic, speed=1.04)
    correction = current_correction(src, table, tiny)
    assert correction.drift is not None and correction.drift.factor == pytest.approx(1.04)
    assert not correction.drift.beyond and correction.factor == 1.0 and correction.checked
    assert "within 5.0%" in correction.drift.message()


def test_drift_threshold_is_the_same_window_error_when_the_validation_ran_while_the_device_drifted(
    src, tiny, synthetic
):
    table = with_error(LatencyTable.load(src.table_path), 18.0, same_window_pct=2.0)  # validated in a slow spell
    device_for(table, tiny, synthetic, speed=1.12)
    correction = current_correction(src, table, tiny)
    assert correction.drift is not None and correction.drift.threshold_pct == 2.0
    assert correction.drift.beyond and correction.factor == pytest.approx(1.12)


def test_drift_threshold_is_twice_the_checks_repeatability_when_that_exceeds_the_tables_error():
    def check(factor: float, repeat: float, error: float) -> DriftCheck:
        return DriftCheck("t", "fp32", "d", "w", (), factor, repeat, error, max(error, 2 * repeat), 0.0, 0.0)

    assert check(1.07, 1.0, 5.0).beyond and not check(1.07, 4.0, 5.0).beyond
    assert check(0.90, 1.0, 5.0).applied_factor == 0.90  # faster counts as drift too
    assert check(1.07, 4.0, 5.0).applied_factor == 1.0


def test_drift_check_is_skipped_with_the_reason_when_the_backend_cannot_run_here(src, tiny, make_target):
    target = make_target("mac", backend="coreml", precision="fp16")
    said = []
    correction = current_correction(target, LatencyTable.load(src.table_path), tiny, say=said.append)
    assert correction.drift is None and correction.factor == 1.0 and not correction.checked
    assert "coreml does not run on this machine" in correction.skipped and said[-1].startswith("no drift check")


def test_reference_blocks_spread_over_the_tables_latencies(src, tiny):
    table = LatencyTable.load(src.table_path)
    refs = reference_blocks(drift.device_baseline(table, tiny.all_blocks())[0], 4)
    ms = sorted(e.median_ms for e in table.entries)
    got = [table.index()[k].median_ms for k in refs]
    assert len(refs) == 4 and got == sorted(got) and got[0] == ms[0] and got[-1] == ms[-1]


# --- observations and the refit ---------------------------------------------------------------------


def observation(table: LatencyTable, family: str, ratio: float, *, age_s: float = 0.0, drift_factor: float = 1.0):
    date = (datetime.now(UTC) - timedelta(seconds=age_s)).replace(microsecond=0).isoformat()
    return Observation(
        date=date, source="deploy", target="src", precision="fp32", table="src.json",
        table_identity=table_identity(table), model="matformer_vit_tiny", family=family, subnet_id="x",
        table_prediction_ms=0.2, drift_factor=drift_factor, corrected_prediction_ms=0.2 * drift_factor,
        measured_ms=0.2 * drift_factor * ratio,
    )  # fmt: skip


def test_observed_scale_refits_on_recent_observations_of_the_same_table_when_they_disagree(src, tiny):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    path = observations_path(src)
    assert observed_scale(src, table, tiny.family) is None
    record_observation(observation(table, tiny.family, 1.25), path)
    record_observation(observation(table, tiny.family, 1.20), path)
    record_observation(observation(table, tiny.family, 0.7, drift_factor=1.3), path)  # judged the drift check
    record_observation(observation(table, tiny.family, 3.0, age_s=3 * 3600), path)  # too old
    other = observation(table, tiny.family, 3.0).model_copy(update={"table_identity": "another table"})
    record_observation(other, path)
    record_observation(observation(table, "other_family", 3.0), path)
    with path.open("a") as f:
        f.write("not json\n")  # a damaged line is skipped
    scale = observed_scale(src, table, tiny.family)
    assert scale is not None and scale.n_observations == 2 and scale.scale == pytest.approx(1.225)
    assert scale.applied and scale.applied_scale == scale.scale
    for _ in range(3):
        record_observation(observation(table, tiny.family, 1.0), path)
    assert not observed_scale(src, table, tiny.family).applied  # the median agrees with the table again


def _bad_line(good: Observation, **fields) -> str:
    fields = {k: v() if callable(v) else v for k, v in fields.items()}  # dates relative to now, when written
    return json.dumps({**good.model_dump(), **fields}) + "\n"


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0).isoformat()


BAD_FIELDS = {
    "zero_prediction": {"table_prediction_ms": 0},
    "negative_prediction": {"table_prediction_ms": -0.05},
    "negative_measured": {"measured_ms": -0.77},
    "infinite_measured": {"measured_ms": float("inf")},
    "nan_measured": {"measured_ms": float("nan")},
    "zero_corrected": {"corrected_prediction_ms": 0.0},
    "negative_drift_factor": {"drift_factor": -1.0},
    "future_date": {"date": "2999-01-01T00:00:00+00:00"},
    "future_beyond_skew": {"date": lambda: _in(drift.MAX_CLOCK_SKEW_S + 600)},
    "naive_date": {"date": "2026-12-02T00:00:00"},
    "garbage_date": {"date": "yesterday"},
}


@pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_observed_scale_skips_bad_lines_with_one_warning_counting_them_when_cache_damaged(src, tiny, caplog, fields):
    """A cache line whose figures are not positive finite numbers, or dated in the future (it would count for
    ever), corrects nothing: skipped, with one warning that names the file and counts the lines."""
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    path = observations_path(src)
    good = observation(table, tiny.family, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_bad_line(good, **fields) * 3)
    with caplog.at_level(logging.WARNING, logger="deploy.latency.drift"):
        assert observed_scale(src, table, tiny.family) is None
        assert current_correction(src, table, tiny, measure=False).factor == 1.0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]
    assert len(warned) == 2 and "skipped 3 of 3 lines" in warned[0], warned  # once per read, not once per line


def test_observed_scale_refits_on_the_good_lines_only_when_bad_ones_are_mixed_in(src, tiny, caplog):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    path = observations_path(src)
    good = observation(table, tiny.family, 1.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_bad_line(good, **f) for f in BAD_FIELDS.values()) + "\n\xff\n[1]\n")
    record_observation(good, path)
    record_observation(observation(table, tiny.family, 1.25).model_copy(update={"date": _in(60)}), path)  # skew
    with caplog.at_level(logging.WARNING, logger="deploy.latency.drift"):
        scale = observed_scale(src, table, tiny.family)
    assert scale is not None and scale.n_observations == 2 and scale.scale == pytest.approx(1.25)
    n_bad = len(BAD_FIELDS) + 2
    assert [r.getMessage() for r in caplog.records if f"skipped {n_bad} of {n_bad + 2} lines" in r.getMessage()]


def test_observation_ratio_is_nan_not_a_division_by_zero_when_prediction_zero(src, tiny):
    unusable = observation(LatencyTable.load(src.table_path), tiny.family, 1.0)
    assert np.isnan(unusable.model_copy(update={"table_prediction_ms": 0.0}).ratio)


@pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_record_observation_writes_nothing_and_warns_when_observation_unusable(src, tiny, caplog, fields):
    """A deploy that measured something odd finishes, but leaves no line that would correct the next ones."""
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    fields = {k: v() if callable(v) else v for k, v in fields.items()}
    unusable = observation(table, tiny.family, 1.0).model_copy(update=fields)
    path = observations_path(src)
    with caplog.at_level(logging.WARNING, logger="deploy.latency.drift"):
        record_observation(unusable, path)
    assert not path.exists() and observed_scale(src, table, tiny.family) is None
    assert any(f"not recorded in {path}" in r.getMessage() for r in caplog.records)


def test_correction_multiplies_the_drift_factor_and_the_observed_scale(src, tiny, synthetic):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    record_observation(observation(table, tiny.family, 1.2), observations_path(src))
    device_for(table, tiny, synthetic, speed=1.5)
    correction = current_correction(src, table, tiny)
    assert correction.factor == pytest.approx(1.5 * 1.2)
    assert current_correction(src, table, tiny, observations=False).factor == pytest.approx(1.5)
    assert current_correction(src, table, tiny, measure=False).factor == pytest.approx(1.2)


# --- validate reports both -------------------------------------------------------------------------


def test_validate_reports_drift_corrected_figures_with_the_uncorrected_beside_them(src, tiny, synthetic, tmp_path):
    table = with_error(LatencyTable.load(src.table_path), 2.0)
    table.save(src.table_path)
    device_for(table, tiny, synthetic, speed=1.4, as_table_predicts=True)
    report = validate_table(src, tiny, samples=4, json_path=tmp_path / "v.json", progress=False)
    assert report.correction["drift_check"]["factor"] == pytest.approx(1.4) == report.correction["factor"]
    for row in report.rows:
        assert row.corrected_predicted_ms == pytest.approx(1.4 * row.predicted_ms)
    corrected = summarize([r.corrected_pct_error for r in report.rows])
    assert report.median_abs_pct_error == corrected["median_abs_pct_error"]
    assert report.uncorrected == summarize([r.pct_error for r in report.rows])
    assert report.median_abs_pct_error == pytest.approx(0.0, abs=1e-6)  # the device is the table × 1.4
    assert report.uncorrected["median_abs_pct_error"] == pytest.approx(100 * (1 - 1 / 1.4))
    written = json.loads((tmp_path / "v.json").read_text())
    assert {"median_abs_pct_error", "within_5pct", "within_10pct", "uncorrected", "correction"} <= set(written)
    stored = LatencyTable.load(src.table_path).validation
    assert stored.correction_factor == pytest.approx(1.4)
    assert stored.uncorrected_median_abs_pct_error == report.uncorrected["median_abs_pct_error"]


# --- bench gates on the corrected prediction ----------------------------------------------------------


def test_bench_prediction_gate_uses_the_drift_corrected_prediction_and_says_both(src, tmp_path):
    kwargs = dict(target=src, tolerance_pct=10.0, baseline=None, baseline_file=tmp_path / "b.json")
    plain = {c.name: c for c in evaluate(0.30, predicted_ms=0.20, **kwargs)}["prediction"]
    fixed = {c.name: c for c in evaluate(0.30, predicted_ms=0.20, corrected_ms=0.29, **kwargs)}["prediction"]
    assert plain.passed is False and fixed.passed is True and fixed.reference_ms == 0.29
    assert "measured 0.300 ms vs predicted 0.200 ms, 0.290 ms drift-corrected now (+3.4%" in fixed.detail


# --- long builds ----------------------------------------------------------------------------------


def _stats(ms: float) -> LatencyStats:
    return LatencyStats(ms, ms, ms, 0.0, 10, (ms, ms), 0.0, "fake")


def test_build_guard_remeasures_the_segment_when_reference_blocks_moved_and_accepts_when_back(caplog):
    speed = {"now": 1.0}
    checks = []

    def measure(keys):
        checks.append(speed["now"])
        return [_stats(0.1 * (i + 1) * speed["now"]) for i in range(len(keys))] * 2

    redone = []

    def remeasure(key):
        redone.append(key)
        speed["now"] = 1.0  # the device recovered while the segment was measured again
        return _stats(1.0)

    guard = BuildDriftGuard(["r1", "r2", "r3"], measure, remeasure, every=3, say=logging.getLogger("t").warning)
    assert guard.after("a") == {} and guard.after("b") == {}
    speed["now"] = 1.3  # throttled while "c" is measured
    out = guard.after("c")
    assert list(out) == ["a", "b", "c"] == redone and checks == [1.0, 1.3, 1.0]
    assert guard.history[0]["move_pct"] == pytest.approx(30.0) and guard.history[1]["move_pct"] == pytest.approx(0.0)
    assert guard.after("d") == {} and guard.since == ["d"]


def test_build_guard_accepts_a_speed_that_stayed_after_one_remeasure():
    speed = {"now": 1.0}

    def measure(keys):
        return [_stats(0.1 * speed["now"])] * (2 * len(keys))

    said = []
    guard = BuildDriftGuard(["r"], measure, lambda k: _stats(1.0), every=2, say=said.append)
    guard.after("a")
    speed["now"] = 0.7
    assert list(guard.after("b")) == ["a", "b"]
    assert "changed and stayed" in said[-1] and guard.baseline == [pytest.approx(0.07)]
    assert guard.after("c") == {} and guard.after("d") == {}  # the new speed is the baseline now


def test_build_remeasures_blocks_measured_while_the_device_slowed(make_target, tiny, synthetic, src, monkeypatch):
    monkeypatch.setattr(drift, "BUILD_CHECK_EVERY", 2)
    target = make_target("built")
    device = synthetic(LatencyTable.load(src.table_path), tiny)
    installed = MeasureSession.measure
    calls: list[list[str]] = []

    def measure(session, items):  # slower during the 5th to 7th measurement (blocks 3 and 4, then the check)
        calls.append([json.dumps(a.options["identity"], sort_keys=True) for a, _ in items])
        device.speed = 1.5 if 5 <= len(calls) <= 7 else 1.0
        return installed(session, items)

    monkeypatch.setattr(MeasureSession, "measure", measure)
    result = build_table(target, [tiny], progress=False)
    assert result.measured == len(tiny.all_blocks())
    singles = [c[0] for c in calls if len(c) == 1]  # blocks measured one by one (the loop and the guard's redo)
    slow = [calls[4][0], calls[5][0]]  # blocks 3 and 4, measured while the device ran 1.5x slower
    assert len(calls[1]) == len(calls[6]) == 6  # the guard's baseline and the check that saw the move
    assert len(singles) == len(tiny.all_blocks()) + 2
    assert sorted(s for s in singles if singles.count(s) == 2) == sorted(slow * 2)
    assert calls[7:9] == [[slow[0]], [slow[1]]]  # measured again right after that check
    assert np.isfinite(LatencyTable.load(target.table_path).calibration.slope)


# --- deploys that notice drift and never ship over budget silently (shipped model, table and target) --------


def fake_drift(monkeypatch, factor: float) -> None:
    """The drift check finds the device `factor` × the table (beyond any threshold unless 1.0)."""

    def check(session, table, supernet, **_):
        error = drift.table_error_pct(table, supernet.family)
        return DriftCheck(
            table.provenance.target, table.provenance.precision, "now", "fake", (), factor, 0.1, error, error, 0.0, 0.0
        )

    monkeypatch.setattr(drift, "check_drift", check)


def fake_measurements(monkeypatch, values: list[float]) -> list[float]:
    """The deploy's measurements of its artifact, in order (the real artifact is built and checked)."""
    import deploy.flows.deploy

    def measure_artifact(backend, artifact, entry, target, check, measure, say):
        ms = values.pop(0)
        return LatencyStats(ms, ms * 1.1, ms, ms * 0.05, 400, (ms, ms), 0.01, "local:fake"), None

    monkeypatch.setattr(deploy.flows.deploy, "measure_artifact", measure_artifact)
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


@pytest.mark.slow
def test_deploy_stops_with_both_numbers_when_the_reselected_artifact_is_over_budget_too(shipped, monkeypatch):
    from deploy.errors import MeasuredOverBudgetError
    from deploy.flows.deploy import deploy

    fake_drift(monkeypatch, 1.0)
    fake_measurements(monkeypatch, [0.7, 0.65, 0.1])
    with pytest.raises(MeasuredOverBudgetError) as info:
        deploy("host-cpu-ort", progress=False)
    message = str(info.value)
    assert "\n" not in message and "measured 0.650 ms" in message and "over the budget of 0.6 ms (predicted" in message
    assert "measured 0.700 ms" in message and "nothing was written" in message
    assert not (shipped / "dist" / "host-cpu-ort").exists()


@pytest.mark.slow
def test_deploy_stops_when_nothing_fits_with_the_measured_correction(shipped, monkeypatch):
    from deploy.errors import MeasuredOverBudgetError
    from deploy.flows.deploy import deploy

    fake_drift(monkeypatch, 1.0)
    fake_measurements(monkeypatch, [50.0])
    with pytest.raises(MeasuredOverBudgetError, match=r"measured 50\.000 ms .* found nothing under 0\.6 ms"):
        deploy("host-cpu-ort", progress=False)
    assert not (shipped / "dist" / "host-cpu-ort").exists()


def test_deploy_corrections_say_why_not_when_the_tables_error_exceeds_twice_its_repeatability(src, tiny, synthetic):
    table = with_error(LatencyTable.load(src.table_path), 5.0)  # repeatability 0.5%
    table.save(src.table_path)
    device_for(table, tiny, synthetic)
    said: list[str] = []
    drift.deploy_corrections(src, tiny, measure=True, say=said.append)
    assert said[0].startswith("note: the src.json table was validated at 5.0% median error, more than twice")
    assert "--recalibrate` in a quiet window" in said[0] and said[1].startswith("drift check on")
    with_error(table, 0.9).save(src.table_path)
    said.clear()
    drift.deploy_corrections(src, tiny, measure=True, say=said.append)
    assert not any(m.startswith("note:") for m in said)
    with_error(table, 5.0, same_window_pct=0.8).save(src.table_path)  # off in speed only, during that run
    said.clear()
    drift.deploy_corrections(src, tiny, measure=True, say=said.append)
    assert "while the device ran +4.2% off the table's speed" in said[0] and "the speed, not the calibration" in said[0]
    assert "--recalibrate" not in said[0]


def test_a_transferred_table_lacking_a_models_blocks_says_to_transfer_again(src, make_target, tiny, synthetic):
    from deploy.errors import TableIncompleteError
    from deploy.latency.transfer_table import transfer_table
    from deploy.models import build

    dst = make_target("dst")
    synthetic(LatencyTable.load(src.table_path), tiny, {"vit_block": 2.0})
    table = transfer_table(dst, ["src"], [tiny], samples=6, progress=False).table
    with pytest.raises(TableIncompleteError, match=r"TRANSFERRED latency table of 'dst' lacks .* tables transfer"):
        LatencyPredictor(table).require(build("poa_vit_tiny").all_blocks())


def test_drift_check_of_a_transferred_table_compares_with_the_blocks_the_transfer_timed_on_the_device(
    src, make_target, tiny, synthetic
):
    from deploy.latency.transfer_table import transfer_table

    dst = make_target("dst")
    device = synthetic(LatencyTable.load(src.table_path), tiny, {"vit_block": 2.0}, offset_ms=0.05)
    table = transfer_table(dst, ["src"], [tiny], samples=10, fit="calibrated_factor", progress=False).table
    baseline, overhead = drift.device_baseline(table, tiny.all_blocks())
    assert len(baseline) == len(table.provenance.transfer.blocks) == 4 and overhead == 0.0  # embed, head, 2 vit
    device.speed = 1.5
    check = check_drift(MeasureSession.open(dst), table, tiny)
    assert check.factor == pytest.approx(1.5) and all(
        r.table_ms == pytest.approx(baseline[next(k for k in baseline if str(k) == r.block)]) for r in check.blocks
    )
