from __future__ import annotations

import pytest

from deploy.latency.anchors import ANCHORS, build_anchor


@pytest.mark.parametrize(
    ("name", "params_m"),
    [("MobileNetV2-1.0", 3.50), ("EfficientNet-lite0", 4.65)],  # the papers' parameter counts
)
def test_anchor_models_match_their_published_parameter_counts(name, params_m):
    module, example = build_anchor(name)
    params = sum(p.numel() for p in module.parameters()) / 1e6
    assert params == pytest.approx(params_m, rel=0.02)
    assert module(example).shape == (1, 1000)


def test_anchor_registry_lists_known_models_for_an_unknown_one():
    from deploy.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"MobileNetV2-1\.0"):
        ANCHORS.load("ResNet-50")
