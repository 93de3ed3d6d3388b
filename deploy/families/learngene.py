"""Learngene ViT (TLEG: Transformer as Linear Expansion of learnGene).

A learngene holds two parameter sets of one transformer block, θ_A and θ_B; a descendant of depth L has
layer l's parameters θ_l = θ_A + (l−1)/(L−1)·θ_B (l = 1..L; a depth-1 descendant is θ_A alone). The
patch embedding and the head are shared by every descendant, as TLEG inherits them. The learngene is
trained once through an auxiliary expanded model of fixed depth (deploy/training/learngene.py); any depth
in the space is then a descendant without retraining. SubnetConfig: `depth`.

`LearngeneTuned` is one descendant fine-tuned on its own (`make train MODEL=learngene_mnist DEPTH=L`):
its layers are free parameters now, so it is a model of its own whose space is that one depth.

Blocks are matformer_vit's dense modules (keys shared with poa_vit: vit_block(tokens=50, dim=64, ...)).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from deploy.families.base import BlockKey, ImageSupernet
from deploy.families.matformer_vit import (
    Block,
    Head,
    PatchEmbed,
    ViT,
    build_vit_block,
    head_params,
    patch_embed_params,
    vit_block_params,
)
from deploy.search.space import Gene, Genes, SearchSpace, SubnetConfig

FAMILY = "learngene"


@dataclass(frozen=True)
class LearngeneDims:
    image: int = 28
    channels: int = 1
    patch: int = 4
    dim: int = 64
    heads: int = 4
    mlp_ratio: int = 2
    classes: int = 10
    aux_depth: int = 6  # the auxiliary expanded model the learngene is trained through
    min_depth: int = 1
    max_depth: int = 12

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(range(self.min_depth, self.max_depth + 1))


def expansion(depth: int) -> list[float]:
    """The coefficient of θ_B for each layer of a depth-`depth` descendant: (l−1)/(L−1)."""
    return [0.0] if depth == 1 else [i / (depth - 1) for i in range(depth)]


class _DepthFamily(ImageSupernet):
    """What the learngene and its fine-tuned descendants share: the depth space and the blocks."""

    family = FAMILY
    dims_type = LearngeneDims
    dims: LearngeneDims

    def space(self) -> SearchSpace:
        depths = self.dims.depths

        def decode(g: Genes) -> SubnetConfig:
            return self.config(depths[g[0]])

        def encode(config: SubnetConfig) -> Genes:
            return (depths.index(self._check(config)),)

        return SearchSpace(FAMILY, (Gene("depth", depths),), decode, encode)

    def config(self, depth: int) -> SubnetConfig:
        d = self.dims
        if isinstance(depth, bool) or not isinstance(depth, int) or depth not in d.depths:
            raise ValueError(f"{self.variant}: depth must be an int in [{d.min_depth}, {d.max_depth}], got {depth!r}")
        return SubnetConfig.make(FAMILY, {"depth": depth})

    def smallest(self) -> SubnetConfig:
        return self.config(self.dims.min_depth)

    def _check(self, config: SubnetConfig) -> int:
        if config.family != FAMILY:
            raise ValueError(f"config of family {config.family} given to {FAMILY}")
        choices = config.as_dict()
        if set(choices) != {"depth"}:
            raise ValueError(f"{FAMILY} configs have one choice, depth; got {sorted(choices)}")
        self.config(choices["depth"])  # type: ignore[arg-type]
        return choices["depth"]  # type: ignore[return-value]

    def blocks(self, config: SubnetConfig) -> list[BlockKey]:
        depth, d = self._check(config), self.dims
        return [
            BlockKey.of("patch_embed", channels=d.channels, image=d.image, patch=d.patch, dim=d.dim),
            *[BlockKey.of("vit_block", tokens=d.tokens, dim=d.dim, heads=d.heads, ffn=d.mlp_ratio * d.dim)] * depth,
            BlockKey.of("cls_head", dim=d.dim, classes=d.classes),
        ]

    def build_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor]:
        return build_vit_block(key, self.dims.tokens, FAMILY)

    def param_count(self, config: SubnetConfig) -> int:
        depth, d = self._check(config), self.dims
        embed = patch_embed_params(d.channels, d.patch, d.tokens, d.dim)
        return embed + depth * vit_block_params(d.dim, d.mlp_ratio * d.dim) + head_params(d.dim, d.classes)


class Learngene(_DepthFamily):
    def __init__(self, variant: str, dims: LearngeneDims) -> None:
        super().__init__(variant)
        if not 1 <= dims.min_depth <= dims.aux_depth <= dims.max_depth:
            raise ValueError(f"need 1 <= min_depth <= aux_depth <= max_depth, got {dims}")
        self.dims = dims
        self.embed = PatchEmbed(dims.channels, dims.image, dims.patch, dims.dim)
        self.gene_a = Block(dims.dim, dims.heads, dims.mlp_ratio * dims.dim)  # θ_A
        self.gene_b = Block(dims.dim, dims.heads, dims.mlp_ratio * dims.dim)  # θ_B
        with torch.no_grad():  # θ_B starts small: every layer near θ_A, and the expansion learns the spread
            for name, p in self.gene_b.named_parameters():
                p.mul_(0.1 if name.endswith("weight") and p.dim() == 2 else 0.0)
        self.head = Head(dims.dim, dims.classes)

    def position_embedding(self) -> nn.Parameter:
        return self.embed.pos_embed

    def layer_params(self, depth: int) -> list[dict[str, torch.Tensor]]:
        """θ_l for each layer of a depth-`depth` descendant (differentiable in θ_A and θ_B)."""
        a, b = dict(self.gene_a.named_parameters()), dict(self.gene_b.named_parameters())
        return [{name: a[name] + c * b[name] for name in a} for c in expansion(depth)]

    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        depth = self._check(config or self.largest())
        x = self.embed(x)
        for params in self.layer_params(depth):
            x = functional_call(self.gene_a, params, (x,))
        return self.head(x)

    def extract(self, config: SubnetConfig) -> nn.Module:
        depth, d = self._check(config), self.dims
        blocks = []
        for params in self.layer_params(depth):
            block = Block(d.dim, d.heads, d.mlp_ratio * d.dim)
            block.load_state_dict({k: v.detach() for k, v in params.items()})  # strict: every weight from θ
            blocks.append(block)
        return ViT(copy.deepcopy(self.embed), blocks, copy.deepcopy(self.head)).eval()


class LearngeneTuned(_DepthFamily):
    """A descendant of one depth fine-tuned as a plain ViT (its own checkpoint; one config)."""

    def __init__(self, variant: str, dims: LearngeneDims, source: str) -> None:
        super().__init__(variant)
        if dims.min_depth != dims.max_depth:
            raise ValueError(f"a tuned descendant has one depth, got {dims.min_depth}..{dims.max_depth}")
        self.dims, self.source = dims, source
        self.net = ViT(
            PatchEmbed(dims.channels, dims.image, dims.patch, dims.dim),
            [Block(dims.dim, dims.heads, dims.mlp_ratio * dims.dim) for _ in range(dims.max_depth)],
            Head(dims.dim, dims.classes),
        )

    def init_from(self, learngene: Learngene) -> None:
        """Start from the learngene's descendant of this depth (TLEG's initialisation)."""
        self.net.load_state_dict(learngene.extract(self.largest()).state_dict())

    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        self._check(config or self.largest())
        return self.net(x)

    def extract(self, config: SubnetConfig) -> nn.Module:
        self._check(config)
        return copy.deepcopy(self.net).eval()
