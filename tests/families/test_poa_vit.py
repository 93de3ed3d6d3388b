"""POA ViT: elastic width/heads/depth cut out exactly, counted analytically, exported to ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from deploy.families.matformer_vit import Attention
from deploy.families.poa_vit import FAMILY
from deploy.models import build
from deploy.search.space import SubnetConfig


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return build("poa_vit_tiny").eval()


@pytest.fixture(scope="module")
def full():
    torch.manual_seed(0)
    return build("poa_vit_mnist").eval()


def _configs(net):
    rng = np.random.default_rng(3)
    return [net.smallest(), net.largest(), *(net.sample(rng) for _ in range(3))]


def _mnist_and_tiny_configs(small, full):
    return [(small, c) for c in small.space().enumerate()] + [(full, c) for c in _configs(full)]


def test_space_enumerates_widths_times_depths(small, full):
    assert small.space().size() == 3 * 3
    assert full.space().size() == 4 * 6
    assert {c["width"] for c in full.space().enumerate()} == {32, 48, 64, 96}
    for net in (small, full):
        for config in net.space().enumerate():
            assert net.space().decode(net.space().encode(config)) == config


def test_extract_equals_supernet_within_1e5_for_every_tiny_and_sampled_mnist_config(small, full):
    for net, config in _mnist_and_tiny_configs(small, full):
        x = torch.randn(2, *net.input_shape[1:])
        dense = net.extract(config)
        with torch.inference_mode():
            assert (net(x, config) - dense(x)).abs().max().item() <= 1e-5, config


def test_extract_is_dense_with_layernorms_of_the_chosen_width(full):
    config = full.config(48, 2)
    dense = full.extract(config)
    assert not any(type(m).__name__ == type(full).__name__ for m in dense.modules())
    norms = [m for m in dense.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(m.normalized_shape == (48,) for m in norms)
    assert {m.heads for m in dense.modules() if isinstance(m, Attention)} == {3}
    assert max(m.out_features for m in dense.modules() if isinstance(m, nn.Linear)) == 3 * 48


def test_param_count_matches_extracted_model(small, full):
    for net, config in _mnist_and_tiny_configs(small, full):
        assert sum(p.numel() for p in net.extract(config).parameters()) == net.param_count(config), config


def test_full_model_is_several_times_larger_than_smallest(small, full):
    for net in (small, full):
        assert net.param_count(net.largest()) > 3 * net.param_count(net.smallest())


def _hooked_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += out.numel() * module.in_features
        elif isinstance(module, nn.Conv2d):
            total += out.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        elif isinstance(module, Attention):
            _, n, d = inputs[0].shape
            total += 2 * n * n * d  # q @ k^T and attn @ v, summed over heads

    handles = [m.register_forward_hook(count) for m in model.modules()]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return total


def test_flops_match_forward_hooks_within_1pct(small, full):
    for net, config in _mnist_and_tiny_configs(small, full):
        hooked = _hooked_macs(net.extract(config), net.example_inputs()[0])
        assert abs(net.flops(config) - hooked) <= 0.01 * hooked, config


def test_flops_match_torch_flop_counter_within_1pct(full):
    from torch.utils.flop_counter import FlopCounterMode

    for config in (full.smallest(), full.largest()):
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            full.extract(config)(full.example_inputs()[0])
        macs = counter.get_total_flops() // 2
        assert abs(full.flops(config) - macs) <= 0.01 * macs, config


def test_blocks_chain_to_extracted_output_and_sum_its_params(small, full):
    for net, config in _mnist_and_tiny_configs(small, full):
        dense = net.extract(config)
        keys = net.blocks(config)
        assert [k.kind for k in keys] == ["patch_embed", *["vit_block"] * config["depth"], "cls_head"]
        assert set(keys) <= set(net.all_blocks())
        x, params = net.example_inputs()[0], 0
        with torch.inference_mode():
            for key in keys:
                module, example = net.build_block(key)
                assert example.shape == x.shape, key
                x = module(x)
                params += sum(p.numel() for p in module.parameters())
            assert x.shape == dense(net.example_inputs()[0]).shape
        assert params == net.param_count(config)


def test_all_blocks_holds_one_block_per_width_and_kind(full):
    assert len(full.all_blocks()) == 3 * len(full.dims.widths)
    heads = {k["dim"]: k["heads"] for k in full.all_blocks() if k.kind == "vit_block"}
    assert heads == {32: 2, 48: 3, 64: 4, 96: 6}


def test_build_block_rejects_unknown_kind(small):
    from deploy.families.base import BlockKey

    with pytest.raises(ValueError, match="no block kind"):
        small.build_block(BlockKey.of("conv_stem", dim=16))


@pytest.mark.parametrize("which", ["smallest", "largest"])
def test_extract_exports_to_onnx_matching_torch_within_1e4(full, which, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    config = getattr(full, which)()
    dense, x = full.extract(config), full.example_inputs()[0]
    path = tmp_path / "poa.onnx"
    torch.onnx.export(dense, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.inference_mode():
        want = dense(x).numpy()
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize(
    ("width", "depth", "match"),
    [(40, 2, "width must be one of"), (96, 0, "depth must be"), (96, 7, "depth must be"), (True, 1, "width")],
)
def test_config_raises_when_width_or_depth_invalid(full, width, depth, match):
    with pytest.raises(ValueError, match=match):
        full.config(width, depth)


def test_forward_raises_when_config_is_foreign_or_malformed(full):
    x = full.example_inputs()[0]
    with pytest.raises(ValueError, match="family"):
        full(x, SubnetConfig.make("matformer_vit", {"width": 96, "depth": 6}))
    with pytest.raises(ValueError, match="width and depth"):
        full(x, SubnetConfig.make(FAMILY, {"width": 96}))
    with pytest.raises(ValueError, match="width must be one of"):
        full.extract(SubnetConfig.make(FAMILY, {"width": 80, "depth": 6}))
    with pytest.raises(ValueError, match="width must be one of"):
        build("poa_vit_tiny").blocks(SubnetConfig.make(FAMILY, {"width": 48, "depth": 1}))


def test_largest_config_equals_plain_full_vit(full):
    from deploy.families.matformer_vit import ViT

    plain = ViT(full.embed, list(full.layers), full.head).eval()  # the supernet's own modules, unsliced
    x = torch.randn(2, *full.input_shape[1:])
    with torch.inference_mode():
        assert (full(x) - plain(x)).abs().max().item() <= 1e-5


def test_extract_keeps_first_heads_of_q_k_v_and_first_ffn_units(full):
    k, d = 48, full.dims.dim
    src, dst = full.layers[1], full.extract(full.config(k, 2)).blocks[1]
    rows = torch.cat([torch.arange(i * d, i * d + k) for i in range(3)])  # first 3 heads of q, of k, of v
    assert torch.equal(dst.attn.qkv.weight, src.attn.qkv.weight[rows, :k])
    assert torch.equal(dst.attn.qkv.bias, src.attn.qkv.bias[rows])
    assert torch.equal(dst.fc1.weight, src.fc1.weight[: 2 * k, :k])
    assert torch.equal(dst.norm2.weight, src.norm2.weight[:k])
