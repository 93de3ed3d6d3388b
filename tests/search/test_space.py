from __future__ import annotations

import json

import numpy as np
import pytest

from deploy.search.space import SubnetConfig


def test_subnet_config_round_trips_json_with_same_id():
    config = SubnetConfig.make("matformer_vit", {"layers": [0, 2], "ffn": (128, 512)})
    again = SubnetConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert again == config
    assert again.id == config.id
    assert len(config.id) == 12


def test_subnet_config_id_is_independent_of_choice_order():
    a = SubnetConfig.make("f", {"a": 1, "b": (1, 2)})
    b = SubnetConfig.make("f", {"b": [1, 2], "a": 1})
    assert a.id == b.id
    assert a.id != SubnetConfig.make("f", {"a": 2, "b": (1, 2)}).id


def test_subnet_config_is_frozen_and_hashable():
    config = SubnetConfig.make("f", {"a": 1})
    with pytest.raises(AttributeError):
        config.family = "g"  # type: ignore[misc]
    assert {config: 1}[SubnetConfig.make("f", {"a": 1})] == 1


def test_subnet_config_rejects_float_values():
    with pytest.raises(TypeError):
        SubnetConfig.make("f", {"a": 0.5})


def test_space_sample_mutate_crossover_stay_valid(tiny):
    space = tiny.space()
    rng = np.random.default_rng(0)
    a, b = space.sample_genes(rng), space.sample_genes(rng)
    for _ in range(50):
        child = space.crossover(space.mutate(a, rng, 0.5), b, rng)
        assert space.is_valid(child)
        assert space.encode(space.decode(child)) == child


def test_space_size_counts_only_valid_configs(tiny):
    # 3 layers, each skipped or one of 4 widths, at least one kept: 5^3 - 1
    assert tiny.space().size() == 124
    assert len(set(c.id for c in tiny.space().enumerate())) == 124


def test_space_features_are_one_hot_per_gene(tiny):
    space = tiny.space()
    feats = space.features(tiny.largest())
    assert feats.shape == (3 * 5,)
    assert feats.sum() == 3
