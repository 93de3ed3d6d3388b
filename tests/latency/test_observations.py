"""Observations of deployed artifacts: recorded, read back (skipping what is unusable), and the refit on them."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from deploy.latency import observations
from deploy.latency.drift import current_correction
from deploy.latency.observations import Observation, observations_path, observed_scale, record_observation
from deploy.latency.table import LatencyTable


def test_observed_scale_refits_on_recent_observations_of_the_same_table_when_they_disagree(
    src, tiny, with_error, observation
):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    path = observations_path(src)
    assert observed_scale(src, table, tiny.family) is None
    record_observation(observation(table, tiny.family, 1.25), path)
    record_observation(observation(table, tiny.family, 1.20), path)
    record_observation(observation(table, tiny.family, 0.7, drift_factor=1.3), path)  # judged the drift check
    record_observation(observation(table, tiny.family, 3.0, age_s=3 * 3600), path)  # too old
    other = observation(table, tiny.family, 3.0).model_copy(update={"table_identity": "another table"})
    record_observation(other, path)
    record_observation(observation(table, "other_family", 3.0), path)
    with path.open("a") as f:
        f.write("not json\n")  # a damaged line is skipped
    scale = observed_scale(src, table, tiny.family)
    assert scale is not None and scale.n_observations == 2 and scale.scale == pytest.approx(1.225)
    assert scale.applied and scale.applied_scale == scale.scale
    for _ in range(3):
        record_observation(observation(table, tiny.family, 1.0), path)
    assert not observed_scale(src, table, tiny.family).applied  # the median agrees with the table again


def _bad_line(good: Observation, **fields) -> str:
    fields = {k: v() if callable(v) else v for k, v in fields.items()}  # dates relative to now, when written
    return json.dumps({**good.model_dump(), **fields}) + "\n"


def _in(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0).isoformat()


BAD_FIELDS = {
    "zero_prediction": {"table_prediction_ms": 0},
    "negative_prediction": {"table_prediction_ms": -0.05},
    "negative_measured": {"measured_ms": -0.77},
    "infinite_measured": {"measured_ms": float("inf")},
    "nan_measured": {"measured_ms": float("nan")},
    "zero_corrected": {"corrected_prediction_ms": 0.0},
    "negative_drift_factor": {"drift_factor": -1.0},
    "future_date": {"date": "2999-01-01T00:00:00+00:00"},
    "future_beyond_skew": {"date": lambda: _in(observations.MAX_CLOCK_SKEW_S + 600)},
    "naive_date": {"date": "2026-12-02T00:00:00"},
    "garbage_date": {"date": "yesterday"},
}


@pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_observed_scale_skips_bad_lines_with_one_warning_counting_them_when_cache_damaged(
    src, tiny, caplog, fields, with_error, observation
):
    """A cache line whose figures are not positive finite numbers, or dated in the future (it would count for
    ever), corrects nothing: skipped, with one warning that names the file and counts the lines."""
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    path = observations_path(src)
    good = observation(table, tiny.family, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_bad_line(good, **fields) * 3)
    with caplog.at_level(logging.WARNING, logger="deploy.latency.observations"):
        assert observed_scale(src, table, tiny.family) is None
        assert current_correction(src, table, tiny, measure=False).factor == 1.0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and str(path) in r.getMessage()]
    assert len(warned) == 2 and "skipped 3 of 3 lines" in warned[0], warned  # once per read, not once per line


def test_observed_scale_refits_on_the_good_lines_only_when_bad_ones_are_mixed_in(
    src, tiny, caplog, with_error, observation
):
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    path = observations_path(src)
    good = observation(table, tiny.family, 1.25)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(_bad_line(good, **f) for f in BAD_FIELDS.values()) + "\n\xff\n[1]\n")
    record_observation(good, path)
    record_observation(observation(table, tiny.family, 1.25).model_copy(update={"date": _in(60)}), path)  # skew
    with caplog.at_level(logging.WARNING, logger="deploy.latency.observations"):
        scale = observed_scale(src, table, tiny.family)
    assert scale is not None and scale.n_observations == 2 and scale.scale == pytest.approx(1.25)
    n_bad = len(BAD_FIELDS) + 2
    assert [r.getMessage() for r in caplog.records if f"skipped {n_bad} of {n_bad + 2} lines" in r.getMessage()]


def test_observation_ratio_is_nan_not_a_division_by_zero_when_prediction_zero(src, tiny, observation):
    unusable = observation(LatencyTable.load(src.table_path), tiny.family, 1.0)
    assert np.isnan(unusable.model_copy(update={"table_prediction_ms": 0.0}).ratio)


@pytest.mark.parametrize("fields", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_record_observation_writes_nothing_and_warns_when_observation_unusable(
    src, tiny, caplog, fields, with_error, observation
):
    """A deploy that measured something odd finishes, but leaves no line that would correct the next ones."""
    table = with_error(LatencyTable.load(src.table_path), 5.0)
    fields = {k: v() if callable(v) else v for k, v in fields.items()}
    unusable = observation(table, tiny.family, 1.0).model_copy(update=fields)
    path = observations_path(src)
    with caplog.at_level(logging.WARNING, logger="deploy.latency.observations"):
        record_observation(unusable, path)
    assert not path.exists() and observed_scale(src, table, tiny.family) is None
    assert any(f"not recorded in {path}" in r.getMessage() for r in caplog.records)
