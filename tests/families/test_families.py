"""Sweeps every registered variant: extraction equals the supernet, counts match, blocks build."""

from __future__ import annotations

import pytest
import torch

from deploy.families.checks import CHECKS, check_family, sample_configs
from deploy.models import build, known_models
from deploy.search.space import SubnetConfig


@pytest.fixture(scope="module", params=known_models())
def net(request):
    torch.manual_seed(0)
    return build(request.param).eval()


def _configs(net, n=6):
    return sample_configs(net, n)


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_family_protocol_check_passes(net, check):
    problem = CHECKS[check](net, _configs(net))
    assert problem is None, f"{net.variant}: {problem}"


def test_check_family_reports_a_broken_extract_without_raising(net, monkeypatch):
    monkeypatch.setattr(type(net), "extract", lambda self, config: torch.nn.Identity())
    findings = check_family(net, n_configs=1)
    assert {f.check for f in findings} >= {"extract"}, findings


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
