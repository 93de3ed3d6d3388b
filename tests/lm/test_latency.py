"""LM latency tables: prefill blocks keyed by prompt length, decode blocks by KV length, one fit per regime;
predictions of TTFT and ms/token; validation by whole generation loops. Tiny model, tiny protocol (ms)."""

from __future__ import annotations

import pytest
import torch
import yaml

from deploy.errors import ConfigFileError, PromptError
from deploy.latency.table import LatencyTable
from deploy.lm.latency import LMLatency, build_lm_table, is_static, regime_key, table_blocks
from deploy.lm.validate import validate_lm_table
from deploy.models import build
from deploy.targets import load_target

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
    result = build_lm_table(target, lm, progress=False)
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
