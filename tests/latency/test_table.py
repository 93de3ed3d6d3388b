from __future__ import annotations

import json

import pytest

from deploy.errors import ConfigFileError, TableIncompleteError, TableNotFoundError
from deploy.latency.build import fit_calibration
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import CalibrationSample, Entry, LatencyTable, Protocol, Provenance
from deploy.supernets.base import BlockKey


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


def test_block_key_is_typed_and_ordered():
    a = BlockKey.of("vit_block", tokens=50, dim=64, heads=4, ffn=128)
    assert a["ffn"] == 128
    assert str(a) == "vit_block(dim=64,ffn=128,heads=4,tokens=50)"
    assert a < BlockKey.of("vit_block", tokens=50, dim=64, heads=4, ffn=256)
