"""ElasticViT: the hybrid space, extraction equal to the supernet, analytic counts, blocks and ONNX export."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from deploy.families.elastic_vit import ElasticViT
from deploy.families.elastic_vit_blocks import Attention
from deploy.models import build
from deploy.search.space import SubnetConfig


@pytest.fixture(scope="module")
def nets() -> dict[str, ElasticViT]:
    torch.manual_seed(0)
    return {"tiny": build("elastic_vit_tiny").eval(), "mnist": build("elastic_vit_mnist").eval()}


def _configs(net: ElasticViT, name: str) -> list:
    rng = np.random.default_rng(7)
    if name == "tiny":
        return [net.smallest(), net.largest(), *(net.sample(rng) for _ in range(5))]
    return [net.sample(rng) for _ in range(2)]


CASES = [("tiny", i) for i in range(7)] + [("mnist", i) for i in range(2)]


def _hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    count = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal count
        if isinstance(module, nn.Conv2d):
            count += out.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.Linear):
            count += out.numel() * module.in_features
        elif isinstance(module, Attention):  # q @ k^T and attn @ v are no modules
            b, n, _ = inputs[0].shape
            count += 2 * b * n * n * module.heads * module.head_dim

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return count


def test_space_size_exceeds_50000_when_mnist(nets):
    assert nets["mnist"].space().size() > 50_000  # distinct configs, not only gene vectors


def test_space_size_counts_each_distinct_config_once(nets):
    space = nets["tiny"].space()  # 8,192 gene vectors: enumerate them all
    distinct = {space.decode(g).id for g in itertools.product(*(range(len(x.options)) for x in space.genes))}
    assert nets["tiny"].space().size() == len(distinct) < space.raw_size()


def test_encode_decode_round_trips_configs(nets):
    for name, net in nets.items():
        space = net.space()
        for config in _configs(net, name):
            assert space.decode(space.encode(config)) == config


@pytest.mark.parametrize(("name", "index"), CASES)
def test_extract_equals_supernet_within_1e5(nets, name, index):
    net = nets[name]
    config = _configs(net, name)[index]
    x = torch.randn(3, *net.input_shape[1:], generator=torch.Generator().manual_seed(index))
    dense = net.extract(config)
    assert not any(isinstance(m, ElasticViT) for m in dense.modules())
    with torch.inference_mode():
        assert (net(x, config) - dense(x)).abs().max().item() <= 1e-5, config


def test_param_count_matches_extracted_model(nets):
    for name, net in nets.items():
        for config in [net.smallest(), net.largest(), *_configs(net, name)]:
            dense = net.extract(config)
            assert sum(p.numel() for p in dense.parameters()) == net.param_count(config), config
    mnist_net = nets["mnist"]
    assert mnist_net.param_count(mnist_net.largest()) > 3 * mnist_net.param_count(mnist_net.smallest())


def test_flops_match_forward_hook_count_within_1pct(nets):
    for name, net in nets.items():
        for config in [net.smallest(), net.largest(), _configs(net, name)[-1]]:
            counted = _hook_macs(net.extract(config), net.example_inputs()[0])
            assert abs(net.flops(config) - counted) <= 0.01 * counted, config


def test_blocks_run_in_sequence_give_extracted_output_shape_and_params(nets):
    for name, net in nets.items():
        for config in [net.smallest(), net.largest(), *_configs(net, name)]:
            dense = net.extract(config)
            x = net.example_inputs()[0]
            with torch.inference_mode():
                for key in net.blocks(config):
                    block, example = net.build_block(key)
                    assert example.shape == x.shape, key
                    x = block(x)
                assert x.shape == dense(net.example_inputs()[0]).shape
            block_params = sum(p.numel() for k in net.blocks(config) for p in net.build_block(k)[0].parameters())
            assert block_params == sum(p.numel() for p in dense.parameters())


def test_all_blocks_is_finite_and_contains_blocks_of_random_configs(nets):
    rng = np.random.default_rng(3)
    for net in nets.values():
        every = set(net.all_blocks())
        assert 0 < len(every) < 1_000
        assert {k.kind for k in every} == {"stem", "mbconv", "vit_merge", "vit_block", "pool_head"}
        for _ in range(50):
            assert set(net.blocks(net.sample(rng))) <= every


@pytest.mark.parametrize("name", ["tiny", "mnist"])
def test_extracted_model_exports_to_onnx_matching_onnxruntime_within_1e4(nets, name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = nets[name]
    dense = net.extract(_configs(net, name)[-1])
    x = net.example_inputs(seed=1)[0]
    path = tmp_path / "subnet.onnx"
    torch.onnx.export(dense, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.inference_mode():
        assert np.abs(got - dense(x).numpy()).max() <= 1e-4


def test_supernet_backward_reaches_only_the_chosen_slices(nets):
    net = build("elastic_vit_tiny").train()
    config = net.smallest()
    net(net.example_inputs()[0], config).sum().backward()
    dw = net.convs[0][0].dw[0].weight.grad  # full kernel 5, chosen 3: only the centre 3×3 learns
    hidden = net.dims.stem[0] * net.dims.expands[0]
    assert dw[:hidden, :, 1:4, 1:4].abs().sum() > 0
    assert dw[hidden:].abs().sum() == 0 and dw[:, :, 0].abs().sum() == 0
    assert net.convs[0][0].expand[1].num_batches_tracked.item() == 1


def test_config_rejects_unknown_kernel(nets):
    net = nets["tiny"]
    with pytest.raises(ValueError, match="kernel sizes must be in"):
        net.config([1, 1], [12], width=[8, 12], kernel=[7])


def test_config_rejects_depth_out_of_range(nets):
    net = nets["tiny"]
    with pytest.raises(ValueError, match="depth must be one of"):
        net.config([3, 1], [32])
    with pytest.raises(ValueError, match="depth must be one of"):
        net.config([1], [32])


def test_config_rejects_unknown_ffn_width_and_foreign_family(nets):
    net = nets["tiny"]
    with pytest.raises(ValueError, match="FFN widths"):
        net.config([1, 1], [3])
    with pytest.raises(ValueError, match="FFN widths"):
        net.config([1, 1], [32], width=[8, 12])  # 32 = 2 × 16 is known, but this stage is 12 wide: 12 or 24
    with pytest.raises(ValueError, match="family"):
        net.extract(SubnetConfig.make("matformer_vit", {"layers": (0,), "ffn": (128,)}))


def test_eval_uses_batchnorm_statistics_recalibrated_for_each_subnet():
    torch.manual_seed(0)
    net = build("elastic_vit_tiny").eval()
    images = torch.randn(net.dims.bn_images + 3, 1, 28, 28)
    net.set_calibration_inputs({"input": images})
    for config in (net.smallest(), net.largest()):
        dense = net.extract(config)
        conv, bn = dense[0][0], dense[0][1]  # the stem's conv and BatchNorm
        with torch.no_grad():
            act = conv(images[: net.dims.bn_images])
        assert torch.allclose(bn.running_mean, act.mean(dim=(0, 2, 3)), atol=1e-5)
        assert torch.allclose(bn.running_var, act.var(dim=(0, 2, 3), unbiased=True), atol=1e-4)
    # The stem's statistics differ between the two subnets only in how many channels they keep; a later
    # block's differ because its input differs.
    small, large = net.extract(net.smallest()), net.extract(net.largest())
    assert not torch.allclose(
        small[1].project[1].running_mean, large[1].project[1].running_mean[: len(small[1].project[1].running_mean)]
    )


def test_recalibrated_statistics_are_recomputed_after_training_changes_weights():
    torch.manual_seed(0)
    net = build("elastic_vit_tiny").eval()
    x = torch.randn(4, 1, 28, 28)
    config = net.smallest()
    with torch.inference_mode():
        before = net(x, config)
    net.train()  # weights may change from here: cached statistics are dropped
    with torch.no_grad():
        net.stem[0].weight.mul_(2.0)
    net.eval()
    with torch.inference_mode():
        after = net(x, config)
        assert torch.allclose(after, net.extract(config)(x), atol=1e-5)
    # A stem conv scaled by 2 is undone by recalibrated BatchNorm: the output hardly moves.
    assert torch.allclose(before, after, atol=1e-3)


def test_calibration_images_of_the_wrong_shape_are_rejected():
    net = build("elastic_vit_tiny")
    with pytest.raises(ValueError, match="need 256 images"):
        net.set_calibration_inputs({"input": torch.randn(10, 1, 28, 28)})
