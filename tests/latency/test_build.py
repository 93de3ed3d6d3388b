"""Table build and validation through the real ONNX Runtime backend and local runner (tiny variant)."""

from __future__ import annotations

import json

import pytest

from deploy.errors import BuildInterruptedError
from deploy.latency.build import build_table, partial_table_path
from deploy.latency.predictor import LatencyPredictor
from deploy.latency.session import MeasureSession
from deploy.latency.table import LatencyTable
from deploy.latency.validate import validate_table
from deploy.search.space import SubnetConfig
from deploy.targets import DeviceInfo, MeasurementSpec, Target

FAST = MeasurementSpec(
    warmup_runs=2, min_runs=5, min_time_s=0.0, rounds=2, cv_max=10.0, max_retries=0, calibration_subnets=5
)


def _measured(row) -> float:
    return (row.measured_ms + row.measured_again_ms) / 2  # the median of two


@pytest.fixture
def target(tmp_root) -> Target:
    return Target(
        name="t1",
        device=DeviceInfo(name="test host"),
        backend="onnxruntime",
        threads=1,
        budget_ms=1.0,
        model="matformer_vit_tiny",
        measurement=FAST,
    )


def test_build_measures_every_block_and_calibrates(target, tiny):
    result = build_table(target, [tiny])
    table = LatencyTable.load(result.path)
    assert set(table.index()) == set(tiny.all_blocks())
    assert table.provenance.method == "measured"
    assert table.provenance.backend == "onnxruntime" and table.provenance.threads == 1
    assert table.calibration is not None and table.calibration.n_subnets == 5
    assert all(e.median_ms > 0 and e.n_runs >= 10 for e in table.entries)
    LatencyPredictor(table).require(tiny.all_blocks())


def _interrupt_at(monkeypatch, n: int):
    """MeasureSession.measure raises KeyboardInterrupt on its n-th call (as if Ctrl-C arrived then)."""
    real = MeasureSession.measure
    calls = {"n": 0}

    def flaky(self, items):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, items)

    monkeypatch.setattr(MeasureSession, "measure", flaky)
    return real


def test_build_resumes_after_interruption_without_losing_entries(target, tiny, monkeypatch):
    real = _interrupt_at(monkeypatch, 3)
    with pytest.raises(BuildInterruptedError, match=r"2 of \d+ blocks are saved in .*partial.json.*resume"):
        build_table(target, [tiny])
    assert not target.table_path.exists(), "no half table is ever in force"
    saved = LatencyTable.load(partial_table_path(target.table_path))
    assert len(saved.entries) == 2 and saved.calibration is None

    monkeypatch.setattr(MeasureSession, "measure", real)
    result = build_table(target, [tiny])
    total = len(tiny.all_blocks())
    assert (result.measured, result.reused) == (total - 2, 2)
    assert not partial_table_path(target.table_path).exists()
    again = build_table(target, [tiny])
    assert again.measured == 0, "a complete, calibrated table is not measured again"


def test_rebuild_keeps_the_old_table_in_force_until_done_and_resumes_when_rerun(target, tiny, monkeypatch):
    build_table(target, [tiny])
    before = target.table_path.read_text()
    real = _interrupt_at(monkeypatch, 4)
    with pytest.raises(BuildInterruptedError, match="is unchanged"):
        build_table(target, [tiny], rebuild=True)
    assert target.table_path.read_text() == before, "the old table, calibration included, stays in force"
    partial = LatencyTable.load(partial_table_path(target.table_path))
    assert len(partial.entries) == 3 and partial.build is not None and partial.build.rebuild

    monkeypatch.setattr(MeasureSession, "measure", real)
    result = build_table(target, [tiny])  # no --rebuild: the interrupted rebuild goes on
    assert (result.measured, result.reused) == (len(tiny.all_blocks()) - 3, 3)
    table = LatencyTable.load(target.table_path)
    assert table.calibration is not None and table.build is None
    old = {e.key: e.measured_at for e in LatencyTable.model_validate_json(before).entries}
    assert all(e.measured_at >= old[e.key] for e in table.entries)


def test_build_interrupted_in_the_calibration_window_keeps_every_block(target, tiny, monkeypatch):
    blocks = len(tiny.all_blocks())
    real = _interrupt_at(monkeypatch, blocks + 1)
    with pytest.raises(BuildInterruptedError, match="calibration window"):
        build_table(target, [tiny])
    assert len(LatencyTable.load(partial_table_path(target.table_path)).entries) == blocks
    monkeypatch.setattr(MeasureSession, "measure", real)
    result = build_table(target, [tiny])
    assert result.measured == 0 and LatencyTable.load(target.table_path).calibration is not None


def test_stale_entries_are_measured_again(target, tiny):
    build_table(target, [tiny])
    data = json.loads(target.table_path.read_text())
    data["entries"][0]["fingerprint"] = "other-version"
    target.table_path.write_text(json.dumps(data))
    assert build_table(target, [tiny]).measured == 1


def test_validate_reports_out_of_sample_errors_and_writes_back(target, tiny, tmp_path):
    build_table(target, [tiny])
    report = validate_table(target, tiny, samples=4, json_path=tmp_path / "v.json")
    table = LatencyTable.load(target.table_path)
    fitted = {s.subnet_id for s in table.calibration.samples}
    assert report.samples == 4 and not fitted & {r.subnet_id for r in report.rows}
    assert 0 <= report.within_5pct <= report.within_10pct <= 1
    assert report.worst_pct_error >= report.median_abs_pct_error >= 0
    assert report.repeatability_pct >= 0 and abs(report.drift_pct) < 1000
    assert table.validation is not None and table.validation.n_samples == 4
    assert table.validations == {tiny.family: table.validation}  # per family; tiny is the target's model
    for row in report.rows:  # the raw block sum is reported beside the calibrated prediction
        index = table.index()
        raw = sum(index[k].median_ms for k in tiny.blocks(SubnetConfig.from_json(row.config)))
        assert row.block_sum_pct_error == pytest.approx((raw - _measured(row)) / _measured(row) * 100, rel=1e-6)
    assert table.validation.block_sum_median_pct_error == report.block_sum_median_pct_error
    written = json.loads((tmp_path / "v.json").read_text())
    assert {"median_abs_pct_error", "within_5pct", "within_10pct", "worst_pct_error", "rows"} <= set(written)
    assert len(written["rows"]) == 4


def test_adding_a_model_to_a_target_measures_only_its_new_blocks(target, tiny):
    from deploy.cli import model_list
    from deploy.models import build

    first = build_table(target, [tiny])
    assert first.measured == len(tiny.all_blocks())
    other = build("matformer_vit_mnist")  # untrained: latency does not depend on weights
    serving = target.model_copy(update={"models": ("matformer_vit_mnist",)})
    assert model_list(serving, None) == ("matformer_vit_tiny", "matformer_vit_mnist")
    assert model_list(serving, "matformer_vit_mnist") == ("matformer_vit_mnist",)
    second = build_table(serving, [tiny, other])
    new = set(other.all_blocks()) - set(tiny.all_blocks())
    assert second.measured == len(new) and second.reused == len(tiny.all_blocks())
    table = LatencyTable.load(second.path)
    assert set(table.index()) == set(tiny.all_blocks()) | set(other.all_blocks())


def test_calibration_subnets_are_per_model_so_each_family_gets_its_own_fit(target, tiny):
    from deploy.latency.build import calibration_configs
    from deploy.models import build

    other = build("poa_vit_tiny")
    configs = calibration_configs([tiny, other], 4)
    by_family = {}
    for net, config in configs:
        by_family.setdefault(net.family, []).append(config)
    assert {f: len(c) for f, c in by_family.items()} == {tiny.family: 4, other.family: 4}
    # At most half a space: validation needs subnets the fit has not seen (poa_vit_tiny has 9).
    assert len(calibration_configs([other], 100)) == other.space().size() // 2
    assert len({c.id for _, c in configs}) == len(configs)
    result = build_table(target, [tiny, other])
    assert set(result.calibration.families) == {tiny.family, other.family}


def test_recalibrate_measures_the_calibration_window_again_and_keeps_every_block(target, tiny):
    build_table(target, [tiny])
    before = LatencyTable.load(target.table_path)
    result = build_table(target, [tiny], recalibrate=True)
    after = LatencyTable.load(target.table_path)
    assert result.measured == 0 and set(after.index()) == set(before.index())
    assert after.calibration is not None and after.calibration.n_subnets == before.calibration.n_subnets
    assert [s.measured_ms for s in after.calibration.samples] != [s.measured_ms for s in before.calibration.samples]


def test_validate_on_a_space_the_calibration_used_up_is_a_clear_error(target):
    from deploy.errors import NothingToValidateError
    from deploy.latency.table import LatencyTable
    from deploy.models import build

    poa = build("poa_vit_tiny")  # 9 subnets
    serving = target.model_copy(
        update={"model": "poa_vit_tiny", "measurement": FAST.model_copy(update={"calibration_subnets": 9})}
    )
    path = build_table(serving, [poa]).path
    table = LatencyTable.load(path)
    assert len(table.calibration.samples) == 4  # capped at half the space: 5 left to validate on
    # A table whose calibration did use every subnet (fitted before the cap, or a 1-config space):
    sample = table.calibration.samples[0]
    table.calibration.samples = [sample.model_copy(update={"subnet_id": c.id}) for c in poa.space().enumerate()]
    table.save(path)
    with pytest.raises(NothingToValidateError, match=r"lower measurement\.calibration_subnets"):
        validate_table(serving, poa, samples=4)


def test_build_reports_progress_as_events_and_draws_nothing_itself(target, tiny, capsys):
    events = []
    result = build_table(target, [tiny], progress=events.append)
    last = {e.task: e for e in events}
    assert set(last) == {"blocks", "calibration"}
    assert last["blocks"].completed == last["blocks"].total == result.measured
    assert last["calibration"].completed == last["calibration"].total
    assert events[0].description == "blocks on t1" and capsys.readouterr().out == ""
    events.clear()
    build_table(target, [tiny])  # progress=None: silent, and nothing to measure either
    assert events == [] and capsys.readouterr().out == ""


def test_cli_renderer_draws_one_bar_per_task_and_escapes_descriptions(monkeypatch):
    from rich.console import Console

    from deploy.cli import progress as bars
    from deploy.progress import ProgressTask

    console = Console(record=True, width=100)
    monkeypatch.setattr(bars, "console", console)
    with bars.measurement_bars() as progress:
        blocks = ProgressTask(progress, "blocks", 2, description="blocks on t1")
        blocks.advance()
        blocks.advance(description="vit_block 0.100 ms on [host]")  # markup-like text stays text
        ProgressTask(progress, "calibration", 3, description="calibration subnets").advance(3)
    lines = console.export_text().splitlines()
    assert len(lines) == 2 and "vit_block 0.100 ms on [host]" in lines[0] and "100%" in lines[0]
    assert "calibration subnets" in lines[1]
