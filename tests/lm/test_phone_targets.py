"""The shipped phone LM targets end to end with their ESTIMATED tables: pixel7-lm converts the LiteRT artifact
and checks greedy parity on this machine's interpreter but times nothing (its runner is adb); iphone15-lm
converts the stateful Core ML program and inspects it (prediction needs macOS)."""

from __future__ import annotations

import pytest

from deploy.flows.deploy import deploy

pytestmark = pytest.mark.slow


def test_pixel7_lm_deploy_says_estimated_checks_parity_here_and_times_nothing(tmp_root):
    pytest.importorskip("ai_edge_litert")
    said: list[str] = []
    m = deploy("pixel7-lm", progress=False, say=said.append).manifest
    assert said[0].startswith("ESTIMATED latency table for pixel7-lm"), said[0]
    assert m.latency.method == "estimated" and m.latency.measured is None
    assert "runner is adb" in (m.latency.not_measured_reason or "")
    assert m.parity is not None and m.parity["identical"] == m.parity["prompts"] >= 8
    assert m.artifact.cache == "static" and (tmp_root / "dist" / "pixel7-lm" / "lm").is_dir()


# the Core ML LM half's conversion is in the backend contract test; this adds the whole deploy
@pytest.mark.extended
def test_iphone15_lm_deploy_converts_a_stateful_program_and_says_prediction_needs_macos(tmp_root):
    pytest.importorskip("coremltools")
    said: list[str] = []
    m = deploy("iphone15-lm", progress=False, say=said.append).manifest
    assert said[0].startswith("ESTIMATED latency table for iphone15-lm"), said[0]
    assert m.parity is None and "macOS" in (m.not_run_reason or "")
    assert m.artifact.cache == "state" and m.precision == "fp16"
    assert m.latency.measured is None and m.accuracy.artifact_test is None
