"""Sweeps every registered variant: extraction equals the supernet, counts match, blocks build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy.families import VARIANTS, build
from deploy.families.base import BlockKey
from deploy.search.space import SubnetConfig


@pytest.fixture(scope="module", params=VARIANTS.names())
def net(request):
    torch.manual_seed(0)
    return build(request.param).eval()


def _configs(net, n=6):
    rng = np.random.default_rng(1)
    return [net.smallest(), net.largest(), *(net.sample(rng) for _ in range(n))]


def test_extract_equals_supernet_within_1e5(net):
    x = torch.randn(3, *net.input_shape[1:])
    with torch.inference_mode():
        for config in _configs(net):
            dense = net.extract(config)
            assert (net(x, config) - dense(x)).abs().max().item() <= 1e-5, config


def test_extract_param_count_matches_analytic(net):
    for config in _configs(net):
        dense = net.extract(config)
        assert sum(p.numel() for p in dense.parameters()) == net.param_count(config)


def test_extract_has_no_supernet_code_or_dead_channels(net):
    # Family-agnostic (each family's own tests check its slices): the smallest subnet's dense module
    # holds exactly the analytic count, far below the supernet's, and none of the supernet's classes.
    config = net.smallest()
    dense = net.extract(config)
    assert not any(type(m).__name__ == type(net).__name__ for m in dense.modules())
    dense_params = sum(p.numel() for p in dense.parameters())
    assert dense_params == net.param_count(config)
    one_config = net.space().size() == 1  # a fine-tuned descendant: its one subnet is all of it
    assert dense_params < sum(p.numel() for p in net.parameters()) or one_config


def test_blocks_are_typed_keys_covered_by_all_blocks(net):
    every = set(net.all_blocks())
    for config in _configs(net):
        blocks = net.blocks(config)
        assert all(isinstance(b, BlockKey) for b in blocks)
        assert set(blocks) <= every


def test_build_block_runs_each_block_shape(net):
    for key in net.all_blocks():
        module, example = net.build_block(key)
        with torch.inference_mode():
            out = module(example)
        assert out.shape[0] == 1
        assert BlockKey.from_json(key.to_json()) == key


def test_config_with_an_unknown_choice_is_rejected(net):
    # Family-agnostic: replace one choice of the largest config with a value no space offers.
    data = net.largest().to_json()
    key, value = next(iter(sorted(data["choices"].items())))
    bad = [999_983, *value[1:]] if isinstance(value, list) else 999_983
    config = SubnetConfig.from_json({**data, "choices": {**data["choices"], key: bad}})
    with pytest.raises(ValueError):
        net.extract(config)


def test_full_model_is_several_times_larger_than_smallest(net):
    if net.space().size() == 1:
        pytest.skip(f"{net.variant} is one fine-tuned subnet: no smallest and largest to compare")
    assert net.param_count(net.largest()) > 3 * net.param_count(net.smallest())
