"""`elastic-deploy accuracy`: many candidates evaluated exactly, into the oracle's cache (local and Ray)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.accuracy.sweep import candidates, sweep
from deploy.models import build

REPO = Path(__file__).resolve().parents[2]
VARIANT = "poa_vit_mnist"  # 24 subnets, small: a sweep of 8 takes seconds


def test_candidates_are_distinct_seeded_and_start_with_the_extremes():
    net = build(VARIANT)
    first, again = candidates(net, 8, seed=3), candidates(net, 8, seed=3)
    assert [c.id for c in first] == [c.id for c in again] and len({c.id for c in first}) == 8
    assert first[0] == net.largest() and first[1] == net.smallest()
    assert len(candidates(net, 1000, seed=0)) == net.space().size()  # a small space runs out


def test_accuracy_command_fills_the_user_cache_and_a_second_run_evaluates_nothing(shipped):
    env = {**os.environ, "COLUMNS": "300"}
    cmd = [sys.executable, "-m", "deploy", "accuracy", "--model", VARIANT, "--samples", "8", "--split", "test"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "8 candidates" in first.stdout and "8 evaluated in" in first.stdout and "local executor" in first.stdout
    again = sweep(VARIANT, 8, split="test")  # the same user cache (ELASTIC_DEPLOY_CACHE)
    assert again.evaluated == 0 and again.candidates == 8


@pytest.mark.ray
def test_ray_sweep_writes_the_accuracies_the_local_sweep_writes(shipped, ray_cluster, tmp_path):
    from deploy.executors.ray_cluster import RayExecutor

    # The test split: the shipped cache holds val accuracies only, so every candidate is evaluated here.
    local = sweep(VARIANT, 8, seed=5, split="test", cache_path=tmp_path / "local.json")
    executor = RayExecutor(workers=2)
    try:
        remote = sweep(
            VARIANT, 8, seed=5, split="test", cache_path=tmp_path / "ray.json", executor=executor
        )
    finally:
        executor.close()
    assert remote.evaluated == local.evaluated == 8
    assert (remote.best, remote.worst) == (local.best, local.worst)
    entries = [json.loads((tmp_path / f"{name}.json").read_text())["entries"] for name in ("local", "ray")]
    assert entries[0] == entries[1] and len(entries[0]) == 8
