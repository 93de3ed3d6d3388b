"""Complexity-aware sampling: adjacent steps stay close in FLOPs while the schedule sweeps the whole range."""

from __future__ import annotations

import numpy as np
import pytest

from deploy.models import build
from deploy.training.sampling import ComplexitySampler, make_sampler


@pytest.fixture(scope="module")
def net():
    return build("elastic_vit_mnist")


def _flops_of(sampler, n):
    return np.array([sampler.pick().flops for _ in range(n)], dtype=float)


def test_complexity_sampling_sweeps_the_whole_flops_range_in_bounded_steps(net):
    sampler = ComplexitySampler(net.space(), net.flops, np.random.default_rng(0))
    low, high = net.flops(net.smallest()), net.flops(net.largest())
    flops = _flops_of(sampler, 4 * (len(sampler.targets) - 1))  # two full sweeps up and down
    assert flops.min() <= low * sampler.level_ratio and flops.max() >= high / sampler.level_ratio
    steps = np.exp(np.abs(np.diff(np.log(flops))))
    assert steps.max() <= sampler.level_ratio**3  # about one rung, never a jump across the range

    rng = np.random.default_rng(0)
    uniform = np.array([net.flops(net.sample(rng)) for _ in range(len(flops))], dtype=float)
    assert np.exp(np.abs(np.diff(np.log(uniform)))).max() > 2 * steps.max()  # what it avoids
    assert uniform.min() > flops.min() and uniform.max() < flops.max()  # and the ends uniform misses


def test_complexity_sampling_is_reproducible_from_its_seed(net):
    first = make_sampler("complexity", net, np.random.default_rng(5))
    second = make_sampler("complexity", net, np.random.default_rng(5))
    assert [first().id for _ in range(10)] == [second().id for _ in range(10)]


def test_triangle_schedule_moves_one_rung_per_step(net):
    sampler = ComplexitySampler(net.space(), net.flops, np.random.default_rng(0), levels=4)
    assert [sampler.level(s) for s in range(8)] == [0, 1, 2, 3, 2, 1, 0, 1]


def test_unknown_sampler_or_family_without_flops_is_a_clear_error(net):
    with pytest.raises(ValueError, match="known: uniform, complexity"):
        make_sampler("greedy", net, np.random.default_rng(0))
    with pytest.raises(ValueError, match="has no flops"):
        make_sampler("complexity", build("matformer_vit_tiny"), np.random.default_rng(0))
