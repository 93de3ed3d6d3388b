"""LM latency tables: prefill blocks keyed by prompt length, decode blocks by KV length, one fit per regime;
predictions of TTFT and ms/token; validation by whole generation loops. Tiny model, tiny protocol (ms)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from deploy.errors import BuildInterruptedError, ConfigFileError, PromptError
from deploy.latency.build import partial_table_path
from deploy.latency.session import MeasureSession
from deploy.latency.table import LatencyTable
from deploy.lm.latency import LMLatency, build_lm_table, is_static, regime_key, table_blocks
from deploy.lm.validate import validate_lm_table
from deploy.models import build
from deploy.targets import load_target

REPO = Path(__file__).resolve().parents[2]
FAST = {"warmup_runs": 1, "min_runs": 2, "min_time_s": 0.0, "rounds": 2, "cv_max": 10.0, "max_retries": 0}


def write_target(root, name="tiny-ort-lm", backend="onnxruntime", **lm):
    spec = {
        "name": name, "device": {"name": "host"}, "backend": backend, "threads": 1, "model": "matformer_lm_tiny",
        "measurement": {**FAST, "calibration_subnets": 4},
        "lm": {"prompt_buckets": [4, 8], "kv_lengths": [8, 16], "ttft_prompt": 6, "decode_context": 12,
               "ttft_ms": 50.0, "ms_per_token": 20.0, "generate_tokens": 4, "calibration_prompts": 4, **lm},
    }  # fmt: skip
    (root / "targets" / f"{name}.yaml").write_text(yaml.safe_dump(spec))
    return load_target(name)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return build("matformer_lm_tiny").eval()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """One throwaway root (targets, tables, hub cache) for the module: the table is built once."""
    base = tmp_path_factory.mktemp("lm-latency")
    (base / "root" / "targets").mkdir(parents=True)
    (base / "root" / "latency_tables").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ELASTIC_DEPLOY_ROOT", str(base / "root"))
        mp.setenv("ELASTIC_DEPLOY_CACHE", str(base / "cache"))
        mp.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(base / "locks"))
        yield base / "root"


@pytest.fixture(scope="module")
def built(workspace, lm):
    target = write_target(workspace)
    result = build_lm_table(target, lm)
    return target, LatencyTable.load(result.path), result


def test_lm_table_holds_both_regimes_and_one_fit_per_regime(built, lm):
    target, table, result = built
    kinds = {e.kind for e in table.entries}
    assert {"lm_prefill_layer", "lm_decode_layer", "lm_embed", "lm_last_head"} <= kinds
    assert {e.shape["tokens"] for e in table.entries if e.kind == "lm_prefill_layer"} == {4, 8}
    assert {e.shape["kv"] for e in table.entries if e.kind == "lm_decode_layer"} == {8, 16}
    assert set(table.calibration.families) == {regime_key("matformer_lm", r) for r in ("prefill", "decode")}
    assert result.blocks == len(table_blocks(target, lm)) == len(table.entries)


def test_ttft_and_ms_per_token_are_predicted_for_every_slice_and_grow_with_length(built, lm):
    target, table, _ = built
    latency = LMLatency(table, lm, target)
    for config in (lm.smallest(), lm.largest()):
        assert latency.ttft(config, 4).ms > 0 and latency.ms_per_token(config, 8).ms > 0
        mid = latency.ms_per_token(config, 12).ms  # interpolated between the KV lengths 8 and 16
        lo, hi = latency.ms_per_token(config, 8).ms, latency.ms_per_token(config, 16).ms
        assert min(lo, hi) <= mid <= max(lo, hi)
    with pytest.raises(PromptError, match="outside what"):
        latency.ttft(lm.largest(), 9)  # longer than the largest prompt bucket


def test_static_cache_targets_time_decode_at_the_maximum_context(workspace, lm):
    target = write_target(workspace, "tiny-litert-lm", backend="tflite")
    assert is_static(target)
    kv = {k["kv"] for k in table_blocks(target, lm) if k.kind == "lm_decode_layer"}
    assert kv == {lm.dims.max_context}


def test_validation_times_whole_generation_loops_and_writes_per_regime_figures(built, lm):
    target, _, _ = built
    report = validate_lm_table(target, lm, samples=2, rounds=2)
    assert report.samples == 2 and len(report.rows) == 2
    for figures in (report.prefill, report.decode):
        assert {"median_abs_pct_error", "within_5pct", "within_10pct", "repeatability_pct"} <= set(figures)
    assert report.tokens_per_s["median"] > 0 and "TTFT: median error" in report.summary()
    table = LatencyTable.load(target.table_path)
    assert table.validations[regime_key("matformer_lm", "decode")].source == "lm generation loops"


def test_an_lm_target_without_budgets_is_refused(workspace):
    with pytest.raises(ConfigFileError, match=r"ttft_ms or lm\.ms_per_token"):
        write_target(workspace, "no-budget-lm", ttft_ms=None, ms_per_token=None)


def test_kv_length_at_max_context_is_refused_when_the_decode_step_would_write_past_it(workspace, lm):
    from deploy.lm.latency import lengths

    max_context = lm.dims.max_context
    target = write_target(workspace, name="tiny-ort-lm-long", kv_lengths=[8, max_context])
    with pytest.raises(ConfigFileError, match=rf"kv_lengths.*\[{max_context}\] exceed {max_context - 1}"):
        lengths(target, lm, "decode")
    assert lengths(write_target(workspace, name="tiny-ort-lm-ok", kv_lengths=[8, max_context - 1]), lm, "decode") == (
        8,
        max_context - 1,
    )


# --- builds resume, rebuild, recalibrate; flags an LM build cannot honour are refused ------------------------


def _interrupt_block_measure(monkeypatch, after: int):
    """MeasureSession.measure raises KeyboardInterrupt on the block measurement after `after` of them (a block
    is measured alone; the drift guard's and the calibration window's calls hold several items)."""
    real = MeasureSession.measure
    seen = {"blocks": 0}

    def flaky(self, items, *args, **kwargs):
        if len(items) == 1:
            seen["blocks"] += 1
            if seen["blocks"] > after:
                raise KeyboardInterrupt
        return real(self, items, *args, **kwargs)

    monkeypatch.setattr(MeasureSession, "measure", flaky)
    return real


def test_lm_build_resumes_after_an_interrupt_reusing_the_blocks_measured(workspace, lm, monkeypatch):
    target = small_target(workspace, "tiny-ort-lm-resume")  # no drift guard: its calls would shift the count
    total = len(table_blocks(target, lm))
    real = _interrupt_block_measure(monkeypatch, after=3)
    with pytest.raises(BuildInterruptedError, match=rf"3 of {total} blocks are saved in .*partial\.json.*resume"):
        build_lm_table(target, lm)
    assert not target.table_path.exists(), "no half table is ever in force"
    saved = LatencyTable.load(partial_table_path(target.table_path))
    assert len(saved.entries) == 3 and saved.calibration is None

    monkeypatch.setattr(MeasureSession, "measure", real)
    result = build_lm_table(target, lm)
    assert (result.measured, result.blocks, result.written) == (total - 3, total, True)
    assert not partial_table_path(target.table_path).exists()
    table = LatencyTable.load(target.table_path)
    assert len(table.entries) == total and set(table.calibration.families) == {
        regime_key("matformer_lm", r) for r in ("prefill", "decode")
    }
    again = build_lm_table(target, lm)
    assert (again.measured, again.written) == (0, False), "a complete, calibrated table is not measured again"


def small_target(root, name):
    """One prompt bucket and one KV length: fewer blocks than the drift guard's 12 to measure."""
    return write_target(root, name, prompt_buckets=[4], kv_lengths=[8], ttft_prompt=4, decode_context=8)


def test_lm_rebuild_measures_every_block_again_and_recalibrate_only_the_window(built, lm):
    target, table, _ = built
    before = {e.key: e.measured_at for e in table.entries}
    recalibrated = build_lm_table(target, lm, recalibrate=True)
    assert (recalibrated.measured, recalibrated.written) == (0, True)
    rebuilt = build_lm_table(target, lm, rebuild=True)
    assert rebuilt.measured == rebuilt.blocks == len(before) and rebuilt.written
    after = LatencyTable.load(target.table_path)
    assert all(e.measured_at >= before[e.key] for e in after.entries) and after.calibration is not None


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "COLUMNS": "300", **env}, timeout=300,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("flag", "needle"),
    [
        (["--precision", "fp16"], "--precision fp16: tiny-ort-lm is a language-model target"),
        (["--executor", "ray"], "--executor ray cannot build tiny-ort-lm: its calibration times generation loops"),
    ],
)
def test_lm_build_flag_it_cannot_honour_is_refused_in_one_line_exit_2(built, flag, needle):
    target, _, _ = built
    before = target.table_path.read_bytes()
    proc = _cli("tables", "build", "--target", target.name, *flag)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert needle in lines[0] and target.table_path.read_bytes() == before


def test_lm_precision_check_accepts_the_targets_own_precision(built):
    from deploy.lm.latency import check_lm_precision

    target, _, _ = built
    check_lm_precision(target, target.precision)  # no error: the one precision an LM target has
    check_lm_precision(target, None)


def test_cli_lm_rebuild_interrupted_by_sigint_exits_130_and_the_same_command_resumes(workspace, built, lm):
    name = "tiny-ort-lm-sigint"
    target = small_target(workspace, name)
    data = json.loads(built[0].table_path.read_text())
    data["provenance"]["target"] = name  # a table in force, measured here with the same settings
    target.table_path.write_text(json.dumps(data))
    before = target.table_path.read_bytes()
    partial = partial_table_path(target.table_path)
    command = [sys.executable, "-m", "deploy", "tables", "build", "--target", name, "--rebuild"]
    env = {**os.environ, "COLUMNS": "300"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (partial.exists() and json.loads(partial.read_text())["entries"]):  # atomic writes: whole files
            assert proc.poll() is None and time.monotonic() < deadline, "the build ended before a block was saved"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    stopped = [line for line in stderr.splitlines() if line.startswith("interrupted:")]
    assert proc.returncode == 130 and len(stopped) == 1, stderr
    assert "run the same command again to resume" in stopped[0] and "Traceback" not in stderr
    assert target.table_path.read_bytes() == before, "the table in force stays until the rebuild is done"
    saved = len(LatencyTable.load(partial).entries)

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{saved} blocks already measured" in again.stderr and not partial.exists()
    assert f"wrote {target.table_path}" in " ".join(again.stdout.split())
    rebuilt = LatencyTable.load(target.table_path)
    assert rebuilt.calibration is not None and len(rebuilt.entries) == len(table_blocks(target, lm))
