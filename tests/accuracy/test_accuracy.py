"""Accuracy oracle: caching by config id and checkpoint sha, the fitted predictor, the shipped cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deploy.accuracy.model import AccuracyModel, build_accuracy_model, reference_configs, uniform_configs
from deploy.accuracy.oracle import EvalOracle, accuracy_cache_path, evaluate
from deploy.accuracy.surrogate import FittedAccuracyPredictor, spearman
from deploy.models import build, checkpoint
from deploy.tasks.base import ArrayTask

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "checkpoints" / "matformer_vit_mnist.safetensors"


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second thread, and on a shared 2-core machine it costs 10x.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)


def test_oracle_second_call_is_served_from_memory_and_file(tiny, batch, tmp_path):
    x, y = batch
    cache = tmp_path / "acc.json"
    oracle = EvalOracle(tiny, ArrayTask.of(x, y), "val", cache, "sha-a")
    config = tiny.smallest()
    first = oracle(config)
    assert oracle(config) == first and oracle.evaluations == 1
    assert first == evaluate(tiny, ArrayTask.of(x, y), "val", config)
    saved = json.loads(cache.read_text())
    assert saved["checkpoint_sha256"] == "sha-a" and saved["split"] == "val"
    assert [e["id"] for e in saved["entries"]] == [config.id]

    again = EvalOracle(tiny, ArrayTask.of(x, y), "val", cache, "sha-a")
    assert again(config) == first and again.evaluations == 0


def test_oracle_ignores_cache_file_with_another_sha(tiny, batch, tmp_path, caplog):
    x, y = batch
    cache = tmp_path / "acc.json"
    config = tiny.smallest()
    EvalOracle(tiny, ArrayTask.of(x, y), "val", cache, "sha-a")(config)
    data = json.loads(cache.read_text())
    data["entries"][0]["accuracy"] = 0.123456  # a value the file must not be trusted for
    cache.write_text(json.dumps(data))

    other = EvalOracle(tiny, ArrayTask.of(x, y), "val", cache, "sha-b")
    assert len(other) == 0 and "ignoring cached accuracies made for another checkpoint_sha256" in caplog.text
    assert other(config) != 0.123456 and other.evaluations == 1
    assert json.loads(cache.read_text())["checkpoint_sha256"] == "sha-b"  # rewritten for the new checkpoint


def test_oracle_ignores_cache_file_of_another_split(tiny, batch, tmp_path):
    x, y = batch
    cache = tmp_path / "acc.json"
    EvalOracle(tiny, ArrayTask.of(x, y), "val", cache, "sha-a")(tiny.smallest())
    assert len(EvalOracle(tiny, ArrayTask.of(x, y), "test", cache, "sha-a")) == 0


def test_oracle_evaluate_many_keeps_order_and_evaluates_duplicates_once(tiny, batch):
    x, y = batch
    oracle = EvalOracle(tiny, ArrayTask.of(x, y), "val", None, "sha")
    a, b = tiny.smallest(), tiny.largest()
    accs = oracle.evaluate_many([a, b, a])
    assert oracle.evaluations == 2 and accs[0] == accs[2]
    assert accs == [evaluate(tiny, ArrayTask.of(x, y), "val", c) for c in (a, b, a)]


def _additive_truth(space, rng):
    table = [rng.uniform(0, 0.05, len(g.options)) for g in space.genes]

    def truth(config):
        return 0.5 + sum(t[v] for t, v in zip(table, space.encode(config), strict=True))

    return truth


def test_predictor_recovers_synthetic_additive_function():
    net = build("matformer_vit_mnist")
    space, rng = net.space(), np.random.default_rng(1)
    truth = _additive_truth(space, rng)
    configs = [net.sample(rng) for _ in range(150)]
    model = FittedAccuracyPredictor.fit(space, configs, [truth(c) for c in configs])
    unseen = [net.sample(np.random.default_rng(99)) for _ in range(1)] + [net.sample(rng) for _ in range(200)]
    pred = model.predict_many(unseen)
    want = np.array([truth(c) for c in unseen])
    assert np.max(np.abs(pred - want)) < 0.005  # under half a percentage point
    assert spearman(pred, want) > 0.99
    assert model.predict(unseen[0]) == pytest.approx(pred[0])
    q = model.quality
    assert q is not None and q.n_fit == 120 and q.n_holdout == 30 and q.spearman > 0.99 and q.mae_pp < 0.5


def test_spearman_is_one_for_monotone_and_minus_one_for_reversed():
    a = np.array([0.1, 0.5, 0.2, 0.9, 0.9])
    assert spearman(a, a**3) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_surrogate_is_exact_on_reference_configs_only(tiny, batch):
    x, y = batch
    oracle = EvalOracle(tiny, ArrayTask.of(x, y), "val", None, "sha")
    configs = list(tiny.space().enumerate())[:30]
    oracle.evaluate_many(configs)
    fitted = FittedAccuracyPredictor.fit(tiny.space(), configs, [0.5] * 30)
    model = AccuracyModel(oracle, fitted, frozenset(c.id for c in configs))
    cached = configs[3]
    assert model.surrogate(cached) == oracle.cached(cached)
    assert model.surrogate_many([cached])[0] == oracle.cached(cached)
    assert model.exact(cached) == oracle.cached(cached) and oracle.evaluations == 30
    fresh = next(c for c in tiny.space().enumerate() if c not in oracle)
    assert model.surrogate(fresh) == pytest.approx(0.5)
    model.exact(fresh)  # a finalist evaluated by an earlier deploy does not change the surrogate
    assert model.surrogate(fresh) == pytest.approx(0.5)


def test_reference_configs_hold_extremes_uniforms_and_a_deterministic_sample():
    net = build("matformer_vit_mnist")
    configs = reference_configs(net, n_samples=40, seed=3)
    ids = [c.id for c in configs]
    assert len(ids) == len(set(ids)) == 40 + 5  # largest is also uniform_1024
    assert {net.largest().id, net.smallest().id} <= set(ids)
    assert {c.id for c in uniform_configs(net).values()} <= set(ids)
    assert ids == [c.id for c in reference_configs(net, n_samples=40, seed=3)]
    assert ids[:25] == [c.id for c in reference_configs(net, n_samples=20, seed=3)]


def test_build_accuracy_model_needs_no_evaluation_when_shipped_cache_matches(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_DEPLOY_CACHE", str(tmp_path / "user-cache"))
    path = checkpoint.save(tiny, tmp_path / "tiny", {"accuracy_cache": {"samples": 30, "seed": 0}})
    net, info = checkpoint.load("matformer_vit_tiny", path)
    built = build_accuracy_model(net, info, cache_path=accuracy_cache_path(path))
    assert built.oracle.evaluations == len(built.oracle) == 35  # 30 sampled + the 5 named configs

    fresh = build_accuracy_model(net, info)  # what deploy does on a fresh clone
    assert fresh.oracle.evaluations == 0 and len(fresh.oracle) == 35
    assert not (tmp_path / "user-cache").exists()  # nothing new to write
    config = net.space().decode((2, 0, 4))
    assert fresh.surrogate(config) == built.surrogate(config)


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped checkpoint yet (make train)")
def test_shipped_checkpoint_has_complete_accuracy_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_DEPLOY_CACHE", str(tmp_path / "user-cache"))
    net, info = checkpoint.load("matformer_vit_mnist", SHIPPED)
    model = build_accuracy_model(net, info)
    assert model.oracle.evaluations == 0 and len(model.oracle) >= 120
    val = info.meta["accuracy"]["val"]
    assert model.exact(net.largest()) == val["full"] and model.exact(net.smallest()) == val["smallest"]
    assert val["full"] - val["smallest"] > 0.03  # selection must matter
    assert model.quality is not None and model.quality.spearman > 0.7
