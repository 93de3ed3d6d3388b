"""Stitchable ViT (SN-Net): anchors of one shape family joined by stitching layers.

The anchors are plain ViTs of the same depth and different widths (a head dim of 16, so heads grow with
width), each trained on its own. A stitching layer is a Linear map from anchor F's tokens after its
block p to anchor B's input at block p; it is initialised by least squares on training activations and
then trained with the anchors frozen (deploy/training/stitch.py). A config is (front anchor, position,
back anchor): blocks 0..p-1 of the front anchor, the stitch, blocks p..D-1 and the head of the back
anchor. As in SN-Net, stitches join neighbouring anchors (by width), in both directions; an anchor alone
is front == back with position D. SubnetConfig: `front`, `back` (anchor indices) and `position`.

Blocks are matformer_vit's dense modules, so patch_embed / vit_block / cls_head keys are shared with the
other ViT families; the stitch is one more block kind, `stitch(tokens, dim_in, dim_out)`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

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

FAMILY = "stitchable"


@dataclass(frozen=True)
class StitchableDims:
    image: int = 28
    channels: int = 1
    patch: int = 4
    head_dim: int = 16
    heads: tuple[int, ...] = (2, 4, 6)  # one anchor per head count; width = head_dim * heads
    depth: int = 6
    mlp_ratio: int = 2
    classes: int = 10

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.head_dim * h for h in self.heads)


class Anchor(nn.Module):
    """One anchor: a plain ViT (the same modules extraction produces)."""

    def __init__(self, d: StitchableDims, heads: int) -> None:
        super().__init__()
        width = d.head_dim * heads
        self.embed = PatchEmbed(d.channels, d.image, d.patch, width)
        self.layers = nn.ModuleList(Block(width, heads, d.mlp_ratio * width) for _ in range(d.depth))
        self.head = Head(width, d.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.layers:
            x = blk(x)
        return self.head(x)


def stitch_name(front: int, back: int, position: int) -> str:
    return f"f{front}_b{back}_p{position}"


def neighbour_pairs(n_anchors: int) -> list[tuple[int, int]]:
    """(front, back) anchor pairs that get stitches: neighbours by width, both directions."""
    return [(a, a + 1) for a in range(n_anchors - 1)] + [(a + 1, a) for a in range(n_anchors - 1)]


class Stitchable(ImageSupernet):
    family = FAMILY
    dims_type = StitchableDims

    def __init__(self, variant: str, dims: StitchableDims) -> None:
        super().__init__(variant)
        if list(dims.heads) != sorted(set(dims.heads)) or len(dims.heads) < 2:
            raise ValueError(f"a stitchable model needs >= 2 anchors of increasing heads, got {dims.heads}")
        self.dims = dims
        self.anchors = nn.ModuleList(Anchor(dims, h) for h in dims.heads)
        w = dims.widths
        self.stitches = nn.ModuleDict(
            {
                stitch_name(f, b, p): nn.Linear(w[f], w[b])
                for f, b in neighbour_pairs(len(w))
                for p in range(1, dims.depth)
            }
        )

    # --- search space -------------------------------------------------------------------------
    def space(self) -> SearchSpace:
        d, n = self.dims, len(self.dims.widths)
        anchors, positions = tuple(range(n)), tuple(range(1, d.depth + 1))
        genes = (Gene("front", anchors), Gene("back", anchors), Gene("position", positions))

        def valid(g: Genes) -> bool:
            front, back, position = g[0], g[1], positions[g[2]]
            if front == back:
                return position == d.depth
            return abs(front - back) == 1 and position < d.depth

        def decode(g: Genes) -> SubnetConfig:
            return self.config(g[0], g[1], positions[g[2]])

        def encode(config: SubnetConfig) -> Genes:
            front, back, position = self._check(config)
            return (front, back, positions.index(position))

        return SearchSpace(FAMILY, genes, decode, encode, is_valid=valid)

    def config(self, front: int, back: int, position: int) -> SubnetConfig:
        d, n = self.dims, len(self.dims.widths)
        for name, value in (("front", front), ("back", back)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
                raise ValueError(f"{name} must be an anchor index in [0, {n - 1}] (widths {d.widths}), got {value!r}")
        if front == back and position != d.depth:
            raise ValueError(f"anchor {front} alone has position {d.depth} (all its blocks), got {position!r}")
        if front != back:
            if abs(front - back) != 1:
                raise ValueError(f"stitches join neighbouring anchors only, got front {front} and back {back}")
            if isinstance(position, bool) or not isinstance(position, int) or not 1 <= position < d.depth:
                raise ValueError(f"a stitch position must be an int in [1, {d.depth - 1}], got {position!r}")
        return SubnetConfig.make(FAMILY, {"front": front, "back": back, "position": position})

    def smallest(self) -> SubnetConfig:
        return self.config(0, 0, self.dims.depth)

    def _check(self, config: SubnetConfig) -> tuple[int, int, int]:
        if config.family != FAMILY:
            raise ValueError(f"config of family {config.family} given to {FAMILY}")
        choices = config.as_dict()
        if set(choices) != {"front", "back", "position"}:
            raise ValueError(f"{FAMILY} configs have choices front, back and position, got {sorted(choices)}")
        front, back, position = choices["front"], choices["back"], choices["position"]
        self.config(front, back, position)  # type: ignore[arg-type]
        return front, back, position  # type: ignore[return-value]

    def stitch_configs(self) -> list[SubnetConfig]:
        return [c for c in self.space().enumerate() if c["front"] != c["back"]]

    def stitch_of(self, config: SubnetConfig) -> nn.Linear | None:
        front, back, position = self._check(config)
        return None if front == back else self.stitches[stitch_name(front, back, position)]

    # --- running and cutting ------------------------------------------------------------------
    def front_features(self, x: torch.Tensor, anchor: int, position: int) -> torch.Tensor:
        """Tokens of `anchor` after its first `position` blocks (what a stitch reads)."""
        a = self.anchors[anchor]
        x = a.embed(x)
        for blk in a.layers[:position]:
            x = blk(x)
        return x

    def back_from(self, x: torch.Tensor, anchor: int, position: int) -> torch.Tensor:
        """Run `anchor` from its block `position` on, head included."""
        a = self.anchors[anchor]
        for blk in a.layers[position:]:
            x = blk(x)
        return a.head(x)

    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        config = config or self.largest()
        front, back, position = self._check(config)
        stitch = self.stitch_of(config)
        if stitch is None:
            return self.anchors[front](x)
        return self.back_from(stitch(self.front_features(x, front, position)), back, position)

    def extract(self, config: SubnetConfig) -> nn.Module:
        front, back, position = self._check(config)
        f, b = self.anchors[front], self.anchors[back]
        stitch_layer = self.stitch_of(config)
        if stitch_layer is None:
            return ViT(_copy(f.embed), [_copy(m) for m in f.layers], _copy(f.head)).eval()
        stitch = _copy(stitch_layer)
        blocks = [_copy(m) for m in f.layers[:position]] + [stitch] + [_copy(m) for m in b.layers[position:]]
        return ViT(_copy(f.embed), blocks, _copy(b.head)).eval()  # type: ignore[arg-type]

    # --- latency blocks -----------------------------------------------------------------------
    def _vit_block(self, width: int) -> BlockKey:
        d = self.dims
        return BlockKey.of("vit_block", tokens=d.tokens, dim=width, heads=width // d.head_dim, ffn=d.mlp_ratio * width)

    def blocks(self, config: SubnetConfig) -> list[BlockKey]:
        front, back, position = self._check(config)
        d, w = self.dims, self.dims.widths
        keys = [BlockKey.of("patch_embed", channels=d.channels, image=d.image, patch=d.patch, dim=w[front])]
        keys += [self._vit_block(w[front])] * position
        if front != back:
            keys.append(BlockKey.of("stitch", tokens=d.tokens, dim_in=w[front], dim_out=w[back]))
        keys += [self._vit_block(w[back])] * (d.depth - position)
        return [*keys, BlockKey.of("cls_head", dim=w[back], classes=d.classes)]

    def build_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor]:
        if key.kind == "stitch":
            s = dict(key.shape)
            example = torch.randn((1, s["tokens"], s["dim_in"]), generator=torch.Generator().manual_seed(0))
            return nn.Linear(s["dim_in"], s["dim_out"]).eval(), example
        return build_vit_block(key, self.dims.tokens, FAMILY)

    def param_count(self, config: SubnetConfig) -> int:
        front, back, position = self._check(config)
        d, w = self.dims, self.dims.widths
        embed = patch_embed_params(d.channels, d.patch, d.tokens, w[front])
        blocks = position * vit_block_params(w[front], d.mlp_ratio * w[front])
        blocks += (d.depth - position) * vit_block_params(w[back], d.mlp_ratio * w[back])
        stitch = 0 if front == back else w[front] * w[back] + w[back]
        return embed + blocks + stitch + head_params(w[back], d.classes)


def _copy(module: nn.Module) -> nn.Module:
    """A detached copy, so the extracted model shares no parameters with the supernet."""
    return copy.deepcopy(module).eval()
