from __future__ import annotations

import math

import numpy as np
import pytest

from deploy.errors import ParityError
from deploy.export.parity import check_parity


def test_check_parity_passes_within_tolerance():
    ref = {"logits": np.array([[1.0, 2.0]], np.float32)}
    report = check_parity([ref["logits"] + 5e-5], ref, atol=1e-4)
    assert report.ok and report.max_abs_diff == pytest.approx(5e-5, rel=1e-2)
    report.raise_if_failed("x")  # no raise


def test_raise_if_failed_lists_each_output_against_tolerance():
    ref = {"logits": np.zeros((1, 10), np.float32), "aux": np.zeros(3, np.float32)}
    got = {"logits": np.full((1, 10), 0.031, np.float32), "aux": np.full(3, 1e-6, np.float32)}
    report = check_parity(got, ref, atol=1e-4)
    assert not report.ok and report.max_abs_diff == pytest.approx(0.031)
    with pytest.raises(ParityError) as info:
        report.raise_if_failed("onnxruntime artifact dist/x/model.onnx")
    msg = str(info.value)
    assert msg.startswith("parity failed for onnxruntime artifact dist/x/model.onnx: ")
    assert "logits max abs diff 3.1e-02 > 1e-04" in msg and "aux max abs diff 1.0e-06 <= 1e-04" in msg
    assert "parity_atol" in msg and "\n" not in msg


def test_check_parity_fails_on_nan_shape_mismatch_and_missing_output():
    ref = {"a": np.zeros(2), "b": np.zeros(2), "c": np.zeros(2)}
    report = check_parity({"a": np.array([0.0, np.nan]), "b": np.zeros(3)}, ref, atol=1.0)
    assert not report.ok and math.isinf(report.per_output["a"])
    assert "b shape (3,) != reference (2,)" in report.summary()
    assert "c missing from the artifact" in report.summary()


def test_check_parity_accepts_matching_nans_and_infinities():
    ref = {"x": np.array([np.nan, np.inf, 1.0])}
    assert check_parity([np.array([np.nan, np.inf, 1.0])], ref, atol=0.0).ok
