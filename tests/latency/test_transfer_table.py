"""`tables transfer`: from a tiny table measured here to a synthetic slower device, and to 2 threads for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.errors import TransferDeviceError, TransferError, TransferSourceError
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.table import LatencyTable
from deploy.latency.transfer_table import FIT_CHOICES, describe_transferred, transfer_table
from deploy.runners.specs import SshSpec

REPO = Path(__file__).resolve().parents[2]
SCALES = {"patch_embed": 3.0, "vit_block": 1.5, "cls_head": 5.0}


def source_table(src) -> LatencyTable:
    return LatencyTable.load(src.table_path)


def per_kind_ratio(table: LatencyTable, source: LatencyTable) -> dict[str, list[float]]:
    index = source.index()
    out: dict[str, list[float]] = {}
    for e in table.entries:
        out.setdefault(e.kind, []).append(e.median_ms / index[e.key].median_ms)
    return out


def test_transfer_recovers_the_per_kind_scales_and_writes_provenance_when_kinds_slow_differently(
    src, make_target, tiny, synthetic
):
    dst = make_target("dst", threads=2)
    device = synthetic(source_table(src), tiny, SCALES)
    result = transfer_table(dst, ["src"], [tiny], samples=10)
    table = LatencyTable.load(dst.table_path)
    assert result.path == dst.table_path
    for kind, ratios in per_kind_ratio(table, source_table(src)).items():
        np.testing.assert_allclose(ratios, SCALES[kind], rtol=1e-6)
    prov = table.provenance
    assert prov.method == "transferred" and prov.threads == 2 and prov.target == "dst"
    t = prov.transfer
    assert t is not None and t.model == "kind_blocks" and t.n_subnets == 10 == len(t.subnets)
    assert [(s.target, s.method, s.backend, s.precision) for s in t.sources] == [
        ("src", "measured", "onnxruntime", "fp32")
    ]
    assert t.heldout.median_abs_pct < 1e-6 and t.table_reproduces_fit_max_pct < 1e-6
    assert {c.model for c in t.candidates} == set(FIT_CHOICES) - {"auto"}
    assert {b.kind for b in t.blocks} == set(SCALES)  # a few blocks of every kind, measured on the device
    ids = [s.subnet_id for s in t.subnets]
    assert tiny.smallest().id in ids and tiny.largest().id in ids and len(set(ids)) == 10
    assert sum(1 for m in device.measured if '"subnet"' in m) == 20  # each subnet twice
    # the held-out error is where the predictor and the deploy margin read it
    assert table.validation is not None and table.validation.source == "transfer cross-validation"
    assert LatencyPredictor(table).relative_error(tiny.family) == pytest.approx(t.heldout.median_abs_pct / 100)
    assert {s.subnet_id for s in table.calibration.samples} == set(ids)  # `tables validate` skips them
    assert "TRANSFERRED" in describe_transferred(table) and "kind_blocks fitted on 10 subnets" in describe_transferred(
        table
    )


def test_transfer_recovers_the_scales_within_tolerance_when_measurements_are_noisy(src, make_target, tiny, synthetic):
    # fit named: with 2 % noise `auto` may rightly prefer one scale where the small kinds barely move a
    # subnet's time on this machine's source table; the per-kind scales are what this test checks
    dst = make_target("dst")
    synthetic(source_table(src), tiny, SCALES, noise=0.02, seed=3)
    result = transfer_table(dst, ["src"], [tiny], samples=30, fit="kind_blocks")
    for kind, ratios in per_kind_ratio(result.table, source_table(src)).items():
        np.testing.assert_allclose(ratios, SCALES[kind], rtol=0.06)
    assert result.record.heldout.median_abs_pct < 5.0 and result.record.repeatability_pct > 0


@pytest.mark.parametrize("fit", [f for f in FIT_CHOICES if f != "auto"])
def test_written_table_reproduces_the_chosen_model_on_the_measured_subnets_for_every_candidate(
    src, make_target, tiny, synthetic, fit
):
    dst = make_target("dst")
    synthetic(source_table(src), tiny, SCALES, offset_ms=0.01, noise=0.03, seed=1)
    result = transfer_table(dst, ["src"], [tiny], samples=12, fit=fit)
    assert result.record.model == fit
    table = LatencyTable.load(dst.table_path)
    predictor = LatencyPredictor(table)
    for s in result.record.subnets:
        from deploy.search.space import SubnetConfig

        ms = predictor.predict(tiny.blocks(SubnetConfig.from_json(s.config)), tiny.family).ms
        assert ms == pytest.approx(s.predicted_ms, rel=1e-9) and s.table_predicted_ms == pytest.approx(ms, rel=1e-12)


def test_transfer_chooses_a_one_parameter_model_when_the_device_is_uniformly_slower(src, make_target, tiny, synthetic):
    dst = make_target("dst")
    synthetic(source_table(src), tiny, dict.fromkeys(SCALES, 2.0))
    record = transfer_table(dst, ["src"], [tiny], samples=10).record
    assert record.n_params == 1 and record.heldout.median_abs_pct < 1e-6


def test_transfer_with_two_sources_records_both_and_their_columns(src, make_target, tiny, synthetic, tmp_root):
    make_target("src2", threads=2)
    data = json.loads((tmp_root / "latency_tables" / "src.json").read_text())
    data["provenance"]["target"] = "src2"  # a table measured for src2 (the same blocks suffice here)
    (tmp_root / "latency_tables" / "src2.json").write_text(json.dumps(data))
    dst = make_target("dst")
    synthetic(source_table(src), tiny, SCALES, offset_ms=0.005)
    record = transfer_table(dst, ["src", "src2"], [tiny], samples=20, fit="kind_scales").record
    assert [s.target for s in record.sources] == ["src", "src2"]
    assert {k.split("/")[0] for k in record.scales} == {"src", "src2"}


# --- bad input: one named error each, nothing written ------------------------------------------------


def test_transfer_from_an_estimated_table_is_a_named_error_and_writes_nothing(src, make_target, tiny, tmp_root):
    make_target("est")
    data = json.loads((tmp_root / "latency_tables" / "src.json").read_text())
    data["provenance"].update(method="estimated", target="est")
    (tmp_root / "latency_tables" / "est.json").write_text(json.dumps(data))
    dst = make_target("dst")
    with pytest.raises(TransferSourceError, match=r"est\.json is ESTIMATED, not measured"):
        transfer_table(dst, ["est"], [tiny], samples=10)
    assert not dst.table_path.exists()


def test_transfer_from_a_table_lacking_blocks_is_a_named_error_and_writes_nothing(src, make_target, tiny, tmp_root):
    path = tmp_root / "latency_tables" / "src.json"
    data = json.loads(path.read_text())
    data["entries"].pop()
    path.write_text(json.dumps(data))
    dst = make_target("dst")
    with pytest.raises(TransferSourceError, match=r"--from src: its table lacks 1 of the 6 blocks"):
        transfer_table(dst, ["src"], [tiny], samples=10)
    assert not dst.table_path.exists()


def test_transfer_with_fewer_samples_than_the_model_needs_is_a_named_error(src, make_target, tiny, synthetic):
    dst = make_target("dst")
    device = synthetic(source_table(src), tiny, SCALES)
    with pytest.raises(TransferError, match=r"--samples 1 is below .* needs: 2 measured subnets"):
        transfer_table(dst, ["src"], [tiny], samples=1)
    with pytest.raises(TransferError, match=r"--samples 4 is below what transfer model kind_scales needs: 5"):
        transfer_table(dst, ["src"], [tiny], samples=4, fit="kind_scales")
    assert not dst.table_path.exists() and device.measured == []


def test_transfer_to_a_target_whose_backend_cannot_run_here_is_a_named_error(src, make_target, tiny):
    dst = make_target("dst", backend="coreml", precision="fp16")
    with pytest.raises(TransferDeviceError, match=r"cannot transfer to dst: its runner cannot measure here"):
        transfer_table(dst, ["src:fp32"], [tiny], samples=10)
    assert not dst.table_path.exists()


def test_transfer_to_an_unreachable_device_is_a_named_error(src, make_target, tiny):
    dst = make_target("dst", runner=SshSpec(host="127.0.0.1", port=9, user="nobody"))
    with pytest.raises(TransferDeviceError, match=r"cannot transfer to dst: .*nothing was written"):
        transfer_table(dst, ["src"], [tiny], samples=10)
    assert not dst.table_path.exists()


def test_transfer_onto_its_own_or_a_measured_table_is_refused(src, make_target, tiny, tmp_root):
    with pytest.raises(TransferSourceError, match="own table"):
        transfer_table(src, ["src"], [tiny], samples=10)
    dst = make_target("dst")
    data = json.loads(src.table_path.read_text())
    data["provenance"]["target"] = "dst"  # a table measured for dst
    (tmp_root / "latency_tables" / "dst.json").write_text(json.dumps(data))
    before = dst.table_path.read_bytes()
    with pytest.raises(TransferError, match=r"is a MEASURED table; .*--force, or --out PATH"):
        transfer_table(dst, ["src"], [tiny], samples=10)
    assert dst.table_path.read_bytes() == before


def test_cli_transfer_from_an_estimated_table_exits_2_with_one_line(src, make_target, tmp_root):
    make_target("est")
    data = json.loads(src.table_path.read_text())
    data["provenance"].update(method="estimated", target="est")
    (tmp_root / "latency_tables" / "est.json").write_text(json.dumps(data))
    make_target("dst")
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "tables", "transfer", "--target", "dst", "--from", "est", "--samples", "10"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ},
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "ESTIMATED, not measured" in lines[0] and not (tmp_root / "latency_tables" / "dst.json").exists()


# --- for real: 1 thread to 2 threads on this machine -------------------------------------------------


def test_transfer_to_two_threads_on_the_local_runner_writes_a_table_that_validates(src, make_target, tiny):
    from deploy.latency.validate import validate_table

    dst = make_target("dst", threads=2)
    result = transfer_table(dst, ["src"], [tiny], samples=6, blocks_per_kind=1)
    table = LatencyTable.load(dst.table_path)
    assert table.provenance.method == "transferred" and table.provenance.runner == "local"
    assert result.record.where == table.provenance.host and len(result.record.blocks) == 3
    assert all(s.measured_ms > 0 for s in result.record.subnets) and result.record.table_reproduces_fit_max_pct < 1e-6
    report = validate_table(dst, tiny, samples=3)
    fitted = {s.subnet_id for s in result.record.subnets}
    assert not fitted & {r.subnet_id for r in report.rows}
    after = LatencyTable.load(dst.table_path)
    assert after.validation.source == "tables validate" and after.provenance.method == "transferred"


def test_transfer_from_a_source_of_another_precision_records_it_in_the_provenance(src, make_target, tiny, synthetic):
    dst = make_target("dst", precision="fp16")
    synthetic(source_table(src), tiny, SCALES)
    table = transfer_table(dst, ["src"], [tiny], samples=8).table
    assert table.provenance.precision == "fp16" and table.provenance.transfer.sources[0].precision == "fp32"


def test_transfer_says_when_the_models_offer_fewer_subnets_than_asked(src, make_target, tiny, synthetic):
    """--samples beyond the distinct subnets is said, not capped silently (issue 24)."""
    from deploy.latency.transfer_table import plan_transfer

    dst = make_target("dst")
    synthetic(source_table(src), tiny, SCALES)
    said: list[str] = []
    plan = plan_transfer(
        dst, ["src"], [tiny], samples=100_000, fit="auto", blocks_per_kind=2, seed=0, force=False, path=None,
        say=said.append,
    )  # fmt: skip
    offered = len(plan.subnets)
    assert offered < 100_000
    assert any(f"--samples 100000: the models offer {offered} distinct subnets" in m for m in said), said
