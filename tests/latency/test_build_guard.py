"""The drift guard of a long build: a segment measured while the reference blocks moved is measured again."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from deploy.latency import build_guard
from deploy.latency.build import build_table
from deploy.latency.build_guard import BuildDriftGuard
from deploy.latency.session import MeasureSession
from deploy.latency.stats import LatencyStats
from deploy.latency.table import LatencyTable


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
    monkeypatch.setattr(build_guard, "BUILD_CHECK_EVERY", 2)
    target = make_target("built")
    device = synthetic(LatencyTable.load(src.table_path), tiny)
    installed = MeasureSession.measure
    calls: list[list[str]] = []

    def measure(session, items, **options):  # slower during the 5th to 7th measurement (blocks 3 and 4, then the check)
        calls.append([json.dumps(a.options["identity"], sort_keys=True) for a, _ in items])
        device.speed = 1.5 if 5 <= len(calls) <= 7 else 1.0
        return installed(session, items, **options)

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
