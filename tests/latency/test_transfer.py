from __future__ import annotations

import numpy as np
import pytest

from deploy.errors import DeployError, TableIncompleteError, TransferError
from deploy.families.base import BlockKey
from deploy.latency.solvers import nnls
from deploy.latency.table import Entry, LatencyTable, Protocol, Provenance
from deploy.latency.transfer import (
    LINEAR_MODELS,
    Column,
    choose_samples,
    fit_transfer,
    kind_features,
    kind_multipliers,
    predict,
)

KINDS = tuple(Column("src", k) for k in ("embed", "block", "head", "merge"))


def kind_data(n: int, seed: int = 0) -> np.ndarray:
    """Per-kind source sums of n subnets: every subnet has an embed and a head, blocks and merges vary."""
    rng = np.random.default_rng(seed)
    x = np.stack(
        [
            rng.uniform(0.05, 0.1, n),
            rng.integers(1, 12, n) * rng.uniform(0.08, 0.12, n),
            rng.uniform(0.01, 0.02, n),
            rng.integers(0, 3, n) * 0.03,
        ],
        axis=1,
    )
    return x


def test_kind_scales_recover_the_per_kind_scales_exactly_when_noiseless():
    x = kind_data(12)
    scales = np.array([3.0, 1.5, 8.0, 0.5])
    fit = fit_transfer(x, x @ scales, KINDS)
    assert fit.model == "kind_scales"
    np.testing.assert_allclose(fit.coef, scales, rtol=1e-9)
    assert fit.heldout.within_5pct == 1.0 and fit.heldout.median_abs_pct < 1e-6


def test_kind_scales_with_offset_recover_the_per_inference_cost_when_noiseless():
    x = kind_data(14, seed=1)
    fit = fit_transfer(x, x @ np.array([3.0, 1.5, 8.0, 0.5]) + 0.2, KINDS, models=("kind_scales_offset",))
    np.testing.assert_allclose(fit.coef, [3.0, 1.5, 8.0, 0.5, 0.2], rtol=1e-8)


def test_factor_is_recovered_and_chosen_when_the_destination_is_proportional():
    x = kind_data(10, seed=2)
    fit = fit_transfer(x, 2.5 * x.sum(axis=1), KINDS)
    assert fit.model == "factor"  # every model fits exactly: the simplest wins
    assert fit.coef == pytest.approx((2.5,))
    np.testing.assert_allclose(fit.predict(kind_data(5, seed=3)), 2.5 * kind_data(5, seed=3).sum(axis=1))


@pytest.mark.parametrize("seed", range(5))
def test_choice_prefers_a_simple_model_when_the_kind_model_would_fit_noise(seed):
    rng = np.random.default_rng(seed)
    cols = tuple(Column("src", f"k{i}") for i in range(6))
    x = rng.uniform(0.1, 1.0, (12, 6))
    y = 1.8 * x.sum(axis=1) * np.exp(rng.normal(0, 0.05, 12))  # one true factor, 5% noise
    fit = fit_transfer(x, y, cols)
    assert fit.n_params <= 2, fit.candidates
    richer = {c.model: c for c in fit.candidates}["kind_scales"]
    assert richer.heldout is not None  # it was tried, and lost on held-out error


def test_richer_model_is_chosen_when_the_kinds_really_scale_differently():
    x = kind_data(30, seed=4)
    y = (x @ np.array([6.0, 1.0, 20.0, 0.2])) * np.exp(np.random.default_rng(4).normal(0, 0.01, 30))
    fit = fit_transfer(x, y, KINDS)
    assert fit.model.startswith("kind_scales")
    factor = {c.model: c for c in fit.candidates}["factor"]
    assert fit.heldout.median_abs_pct < factor.heldout.median_abs_pct / 3


def test_too_few_measurements_raise_transfer_error_with_the_count_needed():
    x = kind_data(1)
    with pytest.raises(TransferError, match=r"at least 2 destination measurements .* got 1"):
        fit_transfer(x, [1.0], KINDS)
    assert issubclass(TransferError, DeployError)


def test_models_needing_more_parameters_are_skipped_when_n_is_small():
    x = kind_data(3, seed=5)
    fit = fit_transfer(x, x @ np.array([3.0, 1.5, 8.0, 0.5]), KINDS)
    by_model = {c.model: c for c in fit.candidates}
    assert fit.model == "factor"
    assert by_model["kind_scales"].heldout is None
    assert "needs 6 measurements (4 parameters), got 3" in by_model["kind_scales"].skipped


def test_restricting_to_models_that_need_more_raises_with_the_count_needed():
    with pytest.raises(TransferError, match="6 are needed"):
        fit_transfer(kind_data(4), np.ones(4), KINDS, models=("kind_scales",))


def test_mismatched_features_raise_transfer_error():
    with pytest.raises(TransferError, match=r"\(subnets, 4 columns\)"):
        fit_transfer(np.ones((5, 3)), np.ones(5), KINDS)
    with pytest.raises(TransferError, match="finite latencies > 0"):
        fit_transfer(kind_data(5), [1.0, 2.0, 0.0, 1.0, 1.0], KINDS)


def test_kind_multipliers_written_as_a_table_reproduce_the_fit():
    x = kind_data(12, seed=6)
    fit = fit_transfer(x, x @ np.array([3.0, 1.5, 8.0, 0.5]) + 0.1, KINDS, models=LINEAR_MODELS)
    mult = kind_multipliers(fit)
    table_sum = sum(mult.scales[c] * x[:, j] for j, c in enumerate(KINDS)) + mult.offset_ms
    np.testing.assert_allclose(table_sum, predict(fit, x), rtol=1e-9)


def test_kind_multipliers_use_the_pooled_scale_when_a_kind_was_never_measured():
    x = kind_data(10, seed=7)
    x[:, 3] = 0.0  # no measured subnet has a merge block
    mult = kind_multipliers(fit_transfer(x, x @ np.array([3.0, 1.5, 8.0, 0.5]), KINDS, models=("kind_scales",)))
    assert mult.unsupported == (KINDS[3],)
    assert mult.scales[KINDS[3]] == pytest.approx(3.0)  # median of 3.0, 1.5, 8.0


def test_kind_multipliers_refuse_a_model_that_is_not_linear():
    x = kind_data(10, seed=8)
    fit = fit_transfer(x, x.sum(axis=1) ** 1.3, KINDS, models=("power",))
    with pytest.raises(TransferError, match="not linear"):
        kind_multipliers(fit)


def test_several_sources_become_columns_per_source_and_kind():
    keys = [BlockKey.of("embed", d=8), BlockKey.of("block", d=8, f=16), BlockKey.of("block", d=8, f=32)]
    a = make_table(keys, [0.1, 0.2, 0.3])
    b = make_table(keys, [1.0, 2.0, 4.0])
    x, cols = kind_features([[keys[0], keys[1], keys[2]], [keys[0], keys[1]]], {"a": a, "b": b})
    assert cols == (Column("a", "block"), Column("a", "embed"), Column("b", "block"), Column("b", "embed"))
    np.testing.assert_allclose(x, [[0.5, 0.1, 6.0, 1.0], [0.2, 0.1, 2.0, 1.0]])
    with pytest.raises(TableIncompleteError):
        kind_features([[BlockKey.of("head", d=8)]], {"a": a})


def test_choose_samples_includes_the_smallest_and_largest_and_spreads_the_rest():
    candidates = [(f"s{i}", float(i)) for i in range(100)]
    chosen = choose_samples(candidates, 10)
    assert len(chosen) == 10 == len(set(chosen))
    assert {"s0", "s99"} <= set(chosen)
    assert np.histogram([int(c[1:]) for c in chosen], bins=5, range=(0, 100))[0].min() >= 1
    assert choose_samples(candidates, 10, seed=1) != choose_samples(candidates, 10, seed=2)
    assert {"s0", "s99"} <= set(choose_samples(candidates, 4, seed=3))


def test_nnls_matches_least_squares_when_unconstrained_and_clips_otherwise():
    rng = np.random.default_rng(9)
    a = rng.uniform(0, 1, (20, 3))
    np.testing.assert_allclose(nnls(a, a @ [1.0, 2.0, 3.0]), [1.0, 2.0, 3.0], rtol=1e-9)
    x = nnls(a, a @ [1.0, -2.0, 3.0])
    assert x[1] == 0.0 and np.all(x >= 0)


def make_table(keys: list[BlockKey], ms: list[float]) -> LatencyTable:
    prov = Provenance(
        target="t1",
        device="d",
        host="h",
        backend="onnxruntime",
        backend_version="1",
        precision="fp32",
        threads=1,
        runner="local",
        date="2026-11-23",
        protocol=Protocol(warmup_runs=1, min_runs=1, min_time_s=0, rounds=1, cv_max=1, max_retries=0),
        method="measured",
    )
    entries = [
        Entry(kind=k.kind, shape=dict(k.shape), median_ms=m, p90_ms=m, mean_ms=m, std_ms=0, n_runs=1)
        for k, m in zip(keys, ms, strict=True)
    ]
    return LatencyTable(provenance=prov, entries=entries)


def load_benchmark():
    from benchmarks import transfer_external

    return transfer_external


def test_benchmark_core_scores_a_small_synthetic_setup():
    bench = load_benchmark()
    rng = np.random.default_rng(10)
    x = kind_data(300, seed=10)
    y = (x @ np.array([3.0, 1.5, 8.0, 0.5])) * np.exp(rng.normal(0, 0.02, 300))
    setup = bench.Setup("synthetic", "test", x, y, KINDS)
    out = bench.evaluate(setup, ns=(5, 20), draws=3, coverage_draws=2)
    assert set(out) == {"5", "20"}
    at20 = out["20"]["random"]
    assert at20["auto"]["within_10pct"] > 0.9 and at20["auto"]["spearman"] > 0.9
    assert at20["auto"]["within_10pct"] > at20["factor"]["within_10pct"]
    assert sum(at20["chosen"].values()) == 3 and out["20"]["coverage"]["draws"] == 2
    assert bench.spearman(np.arange(5.0), np.ones(5)) == 0.0  # a constant prediction ranks nothing


def test_benchmark_nb201_features_mark_dead_ops():
    bench = load_benchmark()
    ops = np.array(
        [
            ["nor_conv_3x3", "none", "none", "none", "none", "none"],  # 0→1 leads nowhere: dead
            ["nor_conv_3x3", "none", "none", "none", "skip_connect", "none"],  # 0→1→3: live
        ]
    )
    live = bench._live(ops)
    assert not live[0, 0] and live[1, 0] and live[1, 4]
