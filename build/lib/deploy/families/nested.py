"""The MatFormer search space, shared by every family with nested FFNs (MatFormer-ViT, MatFormer-LM).

Each layer's FFN hidden width is one of {1/8, 1/4, 1/2, 1} of the full width, the smaller FFN being the
first k hidden units of the larger. Each layer chooses its own width (Mix'n'Match) or is skipped (as
Gemma 3n's slicing does). SubnetConfig: `layers` (kept layer indices) and `ffn` (hidden width of each kept
layer, aligned with `layers`).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from deploy.search.space import Gene, Genes, SearchSpace, SubnetConfig

GRANULARITIES = (8, 4, 2, 1)  # hidden width = ffn_max // g


L = TypeVar("L", bound=nn.Module)


def copy_nested_layer(src: nn.Module, dst: L, k: int) -> L:
    """`dst` (a dense layer of FFN width k) with `src`'s norms and attention and the first k units of its FFN
    (both layers with norm1, attn, norm2, fc1, fc2): what extraction does to every kept layer."""
    dst.norm1 = copy.deepcopy(src.norm1)
    dst.attn = copy.deepcopy(src.attn)
    dst.norm2 = copy.deepcopy(src.norm2)
    with torch.no_grad():
        dst.fc1.weight.copy_(src.fc1.weight[:k])
        dst.fc1.bias.copy_(src.fc1.bias[:k])
        dst.fc2.weight.copy_(src.fc2.weight[:, :k])
        dst.fc2.bias.copy_(src.fc2.bias)
    return dst


def nested_widths(ffn_max: int) -> tuple[int, ...]:
    return tuple(ffn_max // g for g in GRANULARITIES)


class NestedFFNSpace:
    """Mixin (before the Supernet base): `space`, `config`, `smallest`, `block_cover` and the config check of a
    family whose dims give `depth`, `widths` (the nested FFN widths) and `min_layers`."""

    family: ClassVar[str]
    dims: Any

    def space(self) -> SearchSpace:
        d = self.dims
        options = (0, *d.widths)  # 0 = layer skipped
        genes = tuple(Gene(f"layer{i}", options) for i in range(d.depth))

        def decode(g: Genes) -> SubnetConfig:
            kept = [i for i, o in enumerate(g) if o > 0]
            return self.config(kept, [options[g[i]] for i in kept])

        def encode(config: SubnetConfig) -> Genes:
            width = dict(zip(config["layers"], config["ffn"], strict=True))  # type: ignore[arg-type]
            return tuple(options.index(width.get(i, 0)) for i in range(d.depth))

        def is_valid(g: Genes) -> bool:
            return sum(1 for o in g if o > 0) >= d.min_layers

        return SearchSpace(self.family, genes, decode, encode, is_valid)

    def config(self, layers: list[int] | tuple[int, ...], ffn: list[int] | tuple[int, ...]) -> SubnetConfig:
        layers, ffn = tuple(layers), tuple(ffn)
        d = self.dims
        if len(layers) != len(ffn) or len(layers) < d.min_layers:
            raise ValueError(f"need >= {d.min_layers} kept layers and one FFN width per kept layer")
        if list(layers) != sorted(set(layers)) or any(not 0 <= i < d.depth for i in layers):
            raise ValueError(f"layers must be increasing indices in [0, {d.depth}), got {layers}")
        if any(w not in d.widths for w in ffn):
            raise ValueError(f"FFN widths must be in {d.widths}, got {ffn}")
        return SubnetConfig.make(self.family, {"layers": layers, "ffn": ffn})

    def uniform(self, width: int) -> SubnetConfig:
        """Every layer kept at one FFN width (MatFormer Lab's uniform shrink)."""
        return self.config(list(range(self.dims.depth)), [width] * self.dims.depth)

    def smallest(self) -> SubnetConfig:
        return self.config(list(range(self.dims.min_layers)), [self.dims.widths[0]] * self.dims.min_layers)

    def _check(self, config: SubnetConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if config.family != self.family:
            raise ValueError(f"config of family {config.family} given to {self.family}")
        layers, ffn = config["layers"], config["ffn"]
        self.config(layers, ffn)  # type: ignore[arg-type]
        return layers, ffn  # type: ignore[return-value]

    def block_cover(self) -> list[SubnetConfig]:
        return [self.uniform(w) for w in self.dims.widths]
