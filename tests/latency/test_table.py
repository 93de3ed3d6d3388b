from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy.errors import ConfigFileError, TableIncompleteError, TableNotFoundError
from deploy.families.base import BlockKey
from deploy.latency.calibration import fit_calibration
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import CalibrationSample, Entry, LatencyTable, Protocol, Provenance, Validation


def make_table(keys, ms=0.1) -> LatencyTable:
    prov = Provenance(
        target="t1",
        device="d",
        host="h",
        backend="onnxruntime",
        backend_version="1",
        precision="fp32",
        threads=2,
        runner="local",
        date="2026-11-23",
        protocol=Protocol(warmup_runs=1, min_runs=1, min_time_s=0, rounds=1, cv_max=1, max_retries=0),
        method="measured",
    )
    entries = [
        Entry(kind=k.kind, shape=dict(k.shape), median_ms=ms, p90_ms=ms, mean_ms=ms, std_ms=0, n_runs=1) for k in keys
    ]
    return LatencyTable(provenance=prov, entries=entries)


def test_table_round_trips_through_json(tmp_path, tiny):
    table = make_table(tiny.all_blocks())
    table.save(tmp_path / "t1.json")
    again = LatencyTable.load(tmp_path / "t1.json")
    assert again == table
    assert set(again.index()) == set(tiny.all_blocks())


def test_missing_table_says_how_to_build_it(tmp_path):
    with pytest.raises(TableNotFoundError, match="make latency-tables TARGET=t1"):
        LatencyTable.load(tmp_path / "t1.json", "t1")


def test_malformed_table_json_names_file_and_line(tmp_path):
    (tmp_path / "t1.json").write_text('{"provenance": ')
    with pytest.raises(ConfigFileError, match=r"t1.json: malformed JSON at line 1"):
        LatencyTable.load(tmp_path / "t1.json")


def test_table_with_unknown_field_is_rejected(tmp_path, tiny):
    data = json.loads(make_table(tiny.all_blocks()).model_dump_json())
    data["entries"][0]["median_us"] = 3
    (tmp_path / "t1.json").write_text(json.dumps(data))
    with pytest.raises(ConfigFileError, match=r"field 'entries.0.median_us'"):
        LatencyTable.load(tmp_path / "t1.json")


def test_predictor_reports_missing_entries_with_count_example_and_command(tiny):
    blocks = tiny.all_blocks()
    predictor = LatencyPredictor(make_table(blocks[:-2]))
    with pytest.raises(TableIncompleteError, match=r"lacks 2 block\(s\), e\.g\. .*make latency-tables TARGET=t1"):
        predictor.require(blocks)


def test_estimated_table_missing_entries_says_to_extend_its_source_then_estimate_again(tiny):
    blocks = tiny.all_blocks()
    table = make_table(blocks[:-1])
    table.provenance = table.provenance.model_copy(update={"method": "estimated", "estimate": {"source_target": "src"}})
    with pytest.raises(
        TableIncompleteError, match=r"ESTIMATED .*targets/src\.yaml.*TARGET=src.*estimate-tables TARGET=t1"
    ):
        LatencyPredictor(table).require(blocks)


def test_predictor_sums_blocks_and_applies_calibration(tiny):
    table = make_table(tiny.all_blocks(), ms=0.1)
    config = tiny.largest()
    blocks = tiny.blocks(config)
    assert LatencyPredictor(table).predict(blocks).ms == pytest.approx(0.1 * len(blocks))
    samples = [
        CalibrationSample(subnet_id=str(n), config={}, block_sum_ms=0.1 * n, n_blocks=n, measured_ms=0.2 * n + 0.05)
        for n in range(3, 9)
    ] + [CalibrationSample(subnet_id="x", config={}, block_sum_ms=0.5, n_blocks=3, measured_ms=0.70)]
    table.calibration = fit_calibration(samples)
    pred = LatencyPredictor(table).predict(blocks)
    assert pred.block_sum_ms == pytest.approx(0.1 * len(blocks))
    assert pred.ms == pytest.approx(table.calibration.apply(pred.block_sum_ms, len(blocks)))
    assert pred.std_ms > 0


def _samples(family: str, slope: float, per_block: float) -> list[CalibrationSample]:
    return [
        CalibrationSample(
            subnet_id=f"{family}{n}",
            config={"family": family},
            block_sum_ms=0.1 * n + 0.01 * (n % 3),
            n_blocks=n,
            measured_ms=slope * (0.1 * n + 0.01 * (n % 3)) + per_block * n,
        )
        for n in range(3, 10)
    ]


def test_calibration_fits_each_family_on_its_own_when_a_table_serves_several():
    a, b = _samples("fam_a", 1.0, 0.0), _samples("fam_b", 2.0, 0.02)
    cal = fit_calibration(a + b)
    assert set(cal.families) == {"fam_a", "fam_b"} and cal.n_subnets == len(a) + len(b)
    assert cal.families["fam_b"].slope == pytest.approx(2.0, rel=1e-6)
    assert cal.families["fam_b"].per_block_ms == pytest.approx(0.02, rel=1e-6)
    assert cal.families["fam_a"].residual_pct < 1e-6 < cal.residual_pct  # one line over both fits worse
    for s in a + b:  # each family's own fit predicts its subnets exactly
        family = s.config["family"]
        assert cal.apply(s.block_sum_ms, s.n_blocks, family) == pytest.approx(s.measured_ms, rel=1e-6)
    union = cal.slope * 1.0 + cal.per_block_ms * 5
    assert cal.apply(1.0, 5, "unknown_family") == pytest.approx(union)  # no own fit: the union one
    assert fit_calibration(a).families == {}  # one family: the union fit is its fit


def test_calibration_captures_whole_subnets_growing_slower_than_their_blocks():
    # Measured here: whole / Σ blocks rose from ~0.95 (smallest) to ~1.4 (largest); a Σ² term fits it.
    samples = [
        CalibrationSample(subnet_id=str(i), config={}, block_sum_ms=x, n_blocks=4, measured_ms=0.9 * x + 0.4 * x * x)
        for i, x in enumerate((0.1, 0.3, 0.5, 0.8, 1.2, 1.7))
    ]
    cal = fit_calibration(samples)
    assert cal.slope == pytest.approx(0.9, rel=1e-6) and cal.quad_per_ms == pytest.approx(0.4, rel=1e-6)
    assert cal.residual_pct < 1e-6 and cal.per_block_ms >= 0


def test_calibration_never_keeps_a_negative_term():
    samples = [  # more blocks, *faster*: a per-block term would come out negative and is left out
        CalibrationSample(subnet_id=str(n), config={}, block_sum_ms=0.1 * n, n_blocks=n, measured_ms=0.1 * n - 0.01 * n)
        for n in range(2, 9)
    ]
    cal = fit_calibration(samples)
    assert min(cal.slope, cal.per_block_ms, cal.quad_per_ms) >= 0
    assert cal.apply(0.5, 5) == pytest.approx(0.45, rel=1e-3)


def test_calibration_removes_the_per_call_overhead_each_block_paid_alone():
    # Each block timed alone paid one call; the whole subnet pays one. The calls it does not make are
    # subtracted before the fit, so the fit sees the work alone and transfers to a host whose calls cost more.
    overhead, work = 0.015, [(0.3, 2), (0.05, 3), (0.6, 4), (0.1, 6), (0.9, 7), (0.2, 9), (0.4, 5)]
    samples = [
        CalibrationSample(
            subnet_id=str(n), config={}, block_sum_ms=w + n * overhead, n_blocks=n, measured_ms=w + overhead
        )
        for w, n in work
    ]
    cal = fit_calibration(samples, call_overhead_ms=overhead)
    assert cal.call_overhead_ms == overhead and cal.slope == pytest.approx(1.0, rel=1e-6) and cal.residual_pct < 1e-6
    assert cal.apply(0.4 + 4 * 0.03, 4, call_overhead_ms=0.03) == pytest.approx(0.4 + 0.03, rel=1e-6)
    assert fit_calibration(samples).residual_pct > 5  # without it, small subnets are far off


def test_predictor_uses_the_familys_own_validation_error_when_the_table_has_it(tiny):
    table = make_table(tiny.all_blocks())
    table.calibration = fit_calibration(_samples("fam_a", 1.0, 0.0) + _samples("fam_b", 2.0, 0.02))
    base = dict(date="d", n_samples=5, seed=0, within_5pct=1, within_10pct=1, p90_abs_pct_error=1, worst_pct_error=1)
    more = dict(same_window_median_abs_pct_error=1, repeatability_pct=1, host="h")
    table.validation = Validation(median_abs_pct_error=3.0, **base, **more)
    table.validations = {"fam_b": Validation(median_abs_pct_error=8.0, **base, **more)}
    predictor = LatencyPredictor(table)
    assert predictor.relative_error("fam_b") == pytest.approx(0.08)
    assert predictor.relative_error("fam_a") == pytest.approx(0.03)  # not validated alone: the headline figure
    blocks = tiny.blocks(tiny.largest())
    assert predictor.predict(blocks, "fam_b").ms == pytest.approx(2.0 * 0.1 * len(blocks) + 0.02 * len(blocks))


def test_block_key_is_typed_and_ordered():
    a = BlockKey.of("vit_block", tokens=50, dim=64, heads=4, ffn=128)
    assert a["ffn"] == 128
    assert str(a) == "vit_block(dim=64,ffn=128,heads=4,tokens=50)"
    assert a < BlockKey.of("vit_block", tokens=50, dim=64, heads=4, ffn=256)


def test_load_refuses_table_of_another_target_naming_both_and_the_rebuild_command(tmp_path, tiny):
    make_table(tiny.all_blocks()).save(tmp_path / "t2.json")  # provenance: target t1
    with pytest.raises(ConfigFileError) as info:
        LatencyTable.load(tmp_path / "t2.json", "t2")
    line = str(info.value)
    assert line.startswith(f"{tmp_path / 't2.json'}: the latency table of target t1, not of t2") and "\n" not in line
    assert "`elastic-deploy tables build --target t2`" in line and "copy t2's own table" in line
    assert LatencyTable.load(tmp_path / "t2.json").provenance.target == "t1"  # no target given: nothing to check


def test_load_accepts_estimated_table_whose_source_is_another_target(tmp_path, tiny):
    table = make_table(tiny.all_blocks())
    prov = table.provenance.model_copy(
        update={"target": "t2", "method": "estimated", "estimation": "t1 × 2", "estimate": {"source_target": "t1"}}
    )
    table.model_copy(update={"provenance": prov}).save(tmp_path / "t2.json")
    assert LatencyTable.load(tmp_path / "t2.json", "t2").provenance.estimate == {"source_target": "t1"}


def _shipped_tables():
    from deploy.targets import load_target

    repo = Path(__file__).resolve().parents[2]
    for yaml_path in sorted((repo / "targets").glob("*.yaml")):
        target = load_target(yaml_path.stem)
        for precision in target.search_precisions:
            yield target.at_precision(precision)


def test_every_shipped_table_loads_for_its_own_target_at_every_precision(tmp_root):
    """The ownership check refuses no shipped table, estimated ones included (they name their source apart)."""
    loaded = []
    for target in _shipped_tables():
        if not target.table_path.exists():
            continue  # not measured yet (tests/test_targets.py says which)
        table = LatencyTable.load(target.table_path, target.name)
        assert table.provenance.precision == target.precision, target.table_path
        loaded.append(table.provenance.method)
    assert "measured" in loaded and "estimated" in loaded


def test_deploy_exits_2_with_one_line_when_the_workspace_table_belongs_to_another_target(ship_files, tmp_root, capsys):
    from deploy.cli import main

    ship_files("targets/host-cpu-ort.yaml", "checkpoints")
    pixel7 = Path(__file__).resolve().parents[2] / "latency_tables" / "pixel7.json"
    (tmp_root / "latency_tables" / "host-cpu-ort.json").write_bytes(pixel7.read_bytes())
    with pytest.raises(SystemExit) as exit_info:
        main(["deploy", "--target", "host-cpu-ort"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "the latency table of target pixel7, not of host-cpu-ort" in lines[0]
    assert not (tmp_root / "dist").exists()
