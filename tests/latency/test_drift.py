"""The drift check: reference blocks against the table, the correction a deploy applies, validate's figures."""

from __future__ import annotations

import json

import pytest

from deploy.latency import drift
from deploy.latency.drift import DriftCheck, check_drift, current_correction, reference_blocks
from deploy.latency.observations import observations_path, record_observation
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.session import MeasureSession
from deploy.latency.table import LatencyTable
from deploy.latency.validate import summarize, validate_table


def device_for(table: LatencyTable, tiny, synthetic, **options):
    """A synthetic device whose null model costs what the table's calibration measured (so ratios are exact)."""
    return synthetic(table, tiny, overhead_ms=table.calibration.call_overhead_ms, **options)


def test_drift_check_measures_the_factor_and_rescales_predictions_when_the_device_runs_slower(
    src, tiny, synthetic, with_error
):
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


def test_drift_check_leaves_predictions_alone_when_a_burst_slowed_only_one_of_its_passes(
    src, tiny, synthetic, monkeypatch, with_error
):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    device = device_for(table, tiny, synthetic)
    installed, passes = MeasureSession.measure, []

    def measure(session, items, **options):  # the first pass runs in a burst of load, the second after it
        passes.append((len(items), options))
        device.speed = 1.3 if len(passes) == 1 else 1.0
        return installed(session, items, **options)

    monkeypatch.setattr(MeasureSession, "measure", measure)
    check = check_drift(MeasureSession.open(src), table, tiny)
    # 4 reference blocks and the null model, twice; the check states its repeatability, so no gate warning
    assert passes == [(5, {"warn_noisy": False})] * 2
    assert check.factor == pytest.approx(1.15, rel=1e-6) and check.repeatability_pct == pytest.approx(26.1, abs=0.1)
    assert not check.beyond and check.applied_factor == 1.0 and "within" in check.message()


def test_drift_within_the_tables_validated_error_leaves_predictions_alone(src, tiny, synthetic, with_error):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    device_for(table, tiny, synthetic, speed=1.04)
    correction = current_correction(src, table, tiny)
    assert correction.drift is not None and correction.drift.factor == pytest.approx(1.04)
    assert not correction.drift.beyond and correction.factor == 1.0 and correction.checked
    assert "within 5.0%" in correction.drift.message()


def test_drift_threshold_is_the_same_window_error_when_the_validation_ran_while_the_device_drifted(
    src, tiny, synthetic, with_error
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


def test_correction_multiplies_the_drift_factor_and_the_observed_scale(src, tiny, synthetic, with_error, observation):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    record_observation(observation(table, tiny.family, 1.2), observations_path(src))
    device_for(table, tiny, synthetic, speed=1.5)
    correction = current_correction(src, table, tiny)
    assert correction.factor == pytest.approx(1.5 * 1.2)
    assert current_correction(src, table, tiny, observations=False).factor == pytest.approx(1.5)
    assert current_correction(src, table, tiny, measure=False).factor == pytest.approx(1.2)


# --- validate reports both -------------------------------------------------------------------------


def test_validate_reports_drift_corrected_figures_with_the_uncorrected_beside_them(
    src, tiny, synthetic, tmp_path, with_error
):
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


def test_deploy_corrections_say_why_not_when_the_tables_error_exceeds_twice_its_repeatability(
    src, tiny, synthetic, with_error
):
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
