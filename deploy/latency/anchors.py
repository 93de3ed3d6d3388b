"""Anchor models: architectures whose latency on real phones is published (each estimated target's
`estimate.anchor` gives the figure and where it was published, e.g. targets/pixel7.yaml), rebuilt here so the
same architecture can be measured on a machine we have. The ratio of the two is what scales an estimated table.

Weights are random: latency does not depend on them. Architectures follow the papers' tables
(MobileNetV2: Sandler et al. 2018, Table 2; EfficientNet-lite0: EfficientNet-B0 without
squeeze-excitation, ReLU6 activations, fixed stem and head, as in tensorflow/tpu's lite README).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deploy.registry import Registry


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, k, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def _mbnet(stages: list[tuple[int, int, int, int, int]], stem: int, head: int, classes: int = 1000) -> nn.Module:
    """stages: (expand, channels, repeats, first stride, kernel)."""
    layers: list[nn.Module] = [_conv_bn(3, stem, 3, 2)]
    cin = stem
    for expand, cout, repeats, stride, k in stages:
        for i in range(repeats):
            layers.append(InvertedResidual(cin, cout, k, stride if i == 0 else 1, expand))
            cin = cout
    layers += [_conv_bn(cin, head, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, classes)]
    return nn.Sequential(*layers).eval()


def mobilenet_v2() -> nn.Module:
    stages = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 32, 3, 2, 3), (6, 64, 4, 2, 3), (6, 96, 3, 1, 3)]
    stages += [(6, 160, 3, 2, 3), (6, 320, 1, 1, 3)]
    return _mbnet(stages, stem=32, head=1280)


def efficientnet_lite0() -> nn.Module:
    stages = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5)]
    stages += [(6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
    return _mbnet(stages, stem=32, head=1280)


# name -> (factory, input resolution); names match the `model` column of the anchors CSV
ANCHORS: Registry[Callable[[], nn.Module]] = Registry(
    "anchor model",
    {
        "MobileNetV2-1.0": "deploy.latency.anchors:mobilenet_v2",
        "EfficientNet-lite0": "deploy.latency.anchors:efficientnet_lite0",
    },
)
RESOLUTION = {"MobileNetV2-1.0": 224, "EfficientNet-lite0": 224}


def build_anchor(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The anchor module (random weights, eval mode) and a batch-1 input of its published resolution."""
    torch.manual_seed(0)
    module = ANCHORS.load(name)()
    return module, torch.randn(1, 3, RESOLUTION[name], RESOLUTION[name])
