"""Stitchable (SN-Net): the space of anchors and stitches, the stitch as a block, least-squares init."""

from __future__ import annotations

import pytest
import torch

from deploy.families.stitchable import stitch_name
from deploy.models import build
from deploy.training.stitch import init_stitches


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build("stitchable_tiny").eval()


def test_space_holds_each_anchor_alone_and_neighbour_stitches_both_ways():
    full = build("stitchable_mnist")
    configs = list(full.space().enumerate())
    alone = [c for c in configs if c["front"] == c["back"]]
    assert [c["front"] for c in alone] == [0, 1, 2] and all(c["position"] == 6 for c in alone)
    stitched = {(c["front"], c["back"]) for c in configs if c["front"] != c["back"]}
    assert stitched == {(0, 1), (1, 0), (1, 2), (2, 1)}  # neighbours only, both directions
    assert full.space().size() == len(configs) == 3 + 4 * 5  # 5 positions between 6 blocks
    assert full.largest() == full.config(2, 2, 6) and full.smallest() == full.config(0, 0, 6)


def test_config_rejects_non_neighbours_and_positions_outside_the_blocks(small):
    with pytest.raises(ValueError, match="position must be an int in"):
        small.config(0, 1, 3)
    with pytest.raises(ValueError, match="alone has position 3"):
        small.config(1, 1, 2)
    with pytest.raises(ValueError, match="anchor index"):
        small.config(0, 2, 1)


def test_blocks_put_the_stitch_between_front_and_back_blocks(small):
    keys = small.blocks(small.config(0, 1, 2))
    kinds = [k.kind for k in keys]
    assert kinds == ["patch_embed", "vit_block", "vit_block", "stitch", "vit_block", "cls_head"]
    w = small.dims.widths
    assert keys[3]["dim_in"] == w[0] and keys[3]["dim_out"] == w[1] and keys[4]["dim"] == w[1]
    assert keys[0]["dim"] == w[0] and keys[-1]["dim"] == w[1]
    assert "stitch" not in [k.kind for k in small.blocks(small.largest())]  # an anchor alone has none


def test_extracted_stitch_is_a_plain_linear_with_the_supernets_weights(small):
    config = small.config(1, 0, 1)
    dense = small.extract(config)
    linears = [m for m in dense.blocks if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 1
    assert torch.equal(linears[0].weight, small.stitches[stitch_name(1, 0, 1)].weight)
    assert linears[0].weight.data_ptr() != small.stitches[stitch_name(1, 0, 1)].weight.data_ptr()


def test_least_squares_init_gives_the_best_linear_map_between_the_anchors(small):
    x = torch.randn(16, *small.input_shape[1:], generator=torch.Generator().manual_seed(0))
    residuals = init_stitches(small, x)
    assert set(residuals) == {stitch_name(c["front"], c["back"], c["position"]) for c in small.stitch_configs()}
    config = small.config(0, 1, 1)
    stitch = small.stitches[stitch_name(0, 1, 1)]
    with torch.no_grad():
        src, dst = small.front_features(x, 0, 1), small.front_features(x, 1, 1)
        best = (stitch(src) - dst).norm()
        assert best / dst.norm() == pytest.approx(residuals[stitch_name(0, 1, 1)], rel=1e-3)
        stitch.weight.add_(1e-2 * torch.randn_like(stitch.weight))  # any other map fits worse
        assert (stitch(src) - dst).norm() > best
    assert small.stitch_of(config) is stitch
