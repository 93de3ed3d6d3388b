"""POA ViT: one plain ViT whose width, heads and depth are elastic (POA: pre-training once for all sizes).

A subnet keeps the first `width` embedding channels everywhere (patch embedding, class token, position
embedding, every LayerNorm, attention q/k/v/proj, FFN in/out, final norm, head input) and the first
`depth` layers. As in POA, the head dim is fixed, so heads are tied to width (heads = width / head_dim,
the first heads of the full model), and the FFN hidden width is mlp_ratio * width (its first units).
An elastic LayerNorm normalises over the kept channels with the first affine parameters, so the cut is a
plain nn.LayerNorm(width). SubnetConfig: `width` and `depth`.

The extracted subnet is built from matformer_vit's dense modules, so its blocks compute exactly what
matformer_vit's do and share their block kinds (patch_embed, vit_block, cls_head): one latency table
entry serves both families wherever the shapes agree (e.g. vit_block(tokens=50, dim=64, heads=4, ffn=128)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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

FAMILY = "poa_vit"
Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PoaViTDims:
    image: int = 28
    channels: int = 1
    patch: int = 4
    head_dim: int = 16
    heads: tuple[int, ...] = (2, 3, 4, 6)  # elastic head counts; width = head_dim * heads
    depth: int = 6
    mlp_ratio: int = 2
    classes: int = 10
    min_depth: int = 1

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1  # patches + class token

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.head_dim * h for h in self.heads)

    @property
    def dim(self) -> int:
        return self.widths[-1]


# --- slicing: one place says which supernet weights a width-k subnet keeps -----------------------------
# Keys are the dense modules' state_dict names: extract loads them, forward runs them functionally.
def _cut_embed(e: PatchEmbed, k: int) -> Params:
    return {
        "cls_token": e.cls_token[..., :k],
        "pos_embed": e.pos_embed[..., :k],
        "proj.weight": e.proj.weight[:k],
        "proj.bias": e.proj.bias[:k],
    }


def _cut_block(blk: Block, k: int, hidden: int) -> Params:
    full = blk.norm1.weight.shape[0]
    return {
        "norm1.weight": blk.norm1.weight[:k],
        "norm1.bias": blk.norm1.bias[:k],
        # qkv rows are [q | k | v], each head-major: the first k rows of each keep the first heads.
        "attn.qkv.weight": blk.attn.qkv.weight.view(3, full, full)[:, :k, :k].reshape(3 * k, k),
        "attn.qkv.bias": blk.attn.qkv.bias.view(3, full)[:, :k].reshape(3 * k),
        "attn.proj.weight": blk.attn.proj.weight[:k, :k],
        "attn.proj.bias": blk.attn.proj.bias[:k],
        "norm2.weight": blk.norm2.weight[:k],
        "norm2.bias": blk.norm2.bias[:k],
        "fc1.weight": blk.fc1.weight[:hidden, :k],
        "fc1.bias": blk.fc1.bias[:hidden],
        "fc2.weight": blk.fc2.weight[:k, :hidden],
        "fc2.bias": blk.fc2.bias[:k],
    }


def _cut_head(h: Head, k: int) -> Params:
    return {
        "norm.weight": h.norm.weight[:k],
        "norm.bias": h.norm.bias[:k],
        "fc.weight": h.fc.weight[:, :k],
        "fc.bias": h.fc.bias,
    }


def _norm(x: torch.Tensor, p: Params, name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), p[f"{name}.weight"], p[f"{name}.bias"], eps)


def _run_block(x: torch.Tensor, p: Params, heads: int, eps: float) -> torch.Tensor:
    """matformer_vit.Block.forward on sliced weights (same ops, same order: equal within float error)."""
    b, n, k = x.shape
    qkv = F.linear(_norm(x, p, "norm1", eps), p["attn.qkv.weight"], p["attn.qkv.bias"])
    qkv = qkv.reshape(b, n, 3, heads, k // heads).permute(2, 0, 3, 1, 4)
    q, key, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ key.transpose(-2, -1)) * (1.0 / math.sqrt(k // heads))
    out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, k)
    x = x + F.linear(out, p["attn.proj.weight"], p["attn.proj.bias"])
    h = F.gelu(F.linear(_norm(x, p, "norm2", eps), p["fc1.weight"], p["fc1.bias"]))
    return x + F.linear(h, p["fc2.weight"], p["fc2.bias"])


class PoaViT(ImageSupernet):
    family = FAMILY
    dims_type = PoaViTDims

    def __init__(self, variant: str, dims: PoaViTDims) -> None:
        super().__init__(variant)
        if list(dims.heads) != sorted(set(dims.heads)) or dims.heads[0] < 1:
            raise ValueError(f"heads must be increasing positive counts, got {dims.heads}")
        self.dims = dims
        self.embed = PatchEmbed(dims.channels, dims.image, dims.patch, dims.dim)
        self.layers = nn.ModuleList(
            Block(dims.dim, dims.heads[-1], dims.mlp_ratio * dims.dim) for _ in range(dims.depth)
        )
        self.head = Head(dims.dim, dims.classes)

    # --- search space -------------------------------------------------------------------------
    def position_embedding(self) -> nn.Parameter:
        return self.embed.pos_embed

    def space(self) -> SearchSpace:
        d = self.dims
        depths = tuple(range(d.min_depth, d.depth + 1))
        genes = (Gene("width", d.widths), Gene("depth", depths))

        def decode(g: Genes) -> SubnetConfig:
            return self.config(d.widths[g[0]], depths[g[1]])

        def encode(config: SubnetConfig) -> Genes:
            width, depth = self._check(config)
            return (d.widths.index(width), depths.index(depth))

        return SearchSpace(FAMILY, genes, decode, encode)

    def config(self, width: int, depth: int) -> SubnetConfig:
        d = self.dims
        if isinstance(width, bool) or not isinstance(width, int) or width not in d.widths:
            raise ValueError(
                f"width must be one of {d.widths} (head_dim {d.head_dim} x heads {d.heads}), got {width!r}"
            )
        if isinstance(depth, bool) or not isinstance(depth, int) or not d.min_depth <= depth <= d.depth:
            raise ValueError(f"depth must be an int in [{d.min_depth}, {d.depth}], got {depth!r}")
        return SubnetConfig.make(FAMILY, {"width": width, "depth": depth})

    def smallest(self) -> SubnetConfig:
        return self.config(self.dims.widths[0], self.dims.min_depth)

    def _check(self, config: SubnetConfig) -> tuple[int, int]:
        if config.family != FAMILY:
            raise ValueError(f"config of family {config.family} given to {FAMILY}")
        choices = config.as_dict()
        if set(choices) != {"width", "depth"}:
            raise ValueError(f"{FAMILY} configs have choices width and depth, got {sorted(choices)}")
        self.config(choices["width"], choices["depth"])  # type: ignore[arg-type]
        return choices["width"], choices["depth"]  # type: ignore[return-value]

    def heads_of(self, width: int) -> int:
        return width // self.dims.head_dim

    # --- running and cutting ------------------------------------------------------------------
    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        config = config or self.largest()
        k, n = self._check(config)
        d = self.dims
        p = _cut_embed(self.embed, k)
        x = F.conv2d(x, p["proj.weight"], p["proj.bias"], stride=d.patch).flatten(2).transpose(1, 2)
        x = torch.cat([p["cls_token"].expand(x.shape[0], -1, -1), x], dim=1) + p["pos_embed"]
        for blk in self.layers[:n]:
            x = _run_block(x, _cut_block(blk, k, d.mlp_ratio * k), self.heads_of(k), blk.norm1.eps)
        p = _cut_head(self.head, k)
        return F.linear(_norm(x[:, 0], p, "norm", self.head.norm.eps), p["fc.weight"], p["fc.bias"])

    def extract(self, config: SubnetConfig) -> nn.Module:
        k, n = self._check(config)
        d = self.dims
        embed = PatchEmbed(d.channels, d.image, d.patch, k)
        embed.load_state_dict(_cut_embed(self.embed, k))  # strict: every dense weight comes from the cut
        blocks = []
        for src in self.layers[:n]:
            dst = Block(k, self.heads_of(k), d.mlp_ratio * k)
            dst.load_state_dict(_cut_block(src, k, d.mlp_ratio * k))
            blocks.append(dst)
        head = Head(k, d.classes)
        head.load_state_dict(_cut_head(self.head, k))
        return ViT(embed, blocks, head).eval()

    # --- latency blocks -----------------------------------------------------------------------
    def blocks(self, config: SubnetConfig) -> list[BlockKey]:
        k, n = self._check(config)
        d = self.dims
        block = BlockKey.of("vit_block", tokens=d.tokens, dim=k, heads=self.heads_of(k), ffn=d.mlp_ratio * k)
        return [
            BlockKey.of("patch_embed", channels=d.channels, image=d.image, patch=d.patch, dim=k),
            *([block] * n),
            BlockKey.of("cls_head", dim=k, classes=d.classes),
        ]

    def build_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor]:
        return build_vit_block(key, self.dims.tokens, FAMILY)

    def param_count(self, config: SubnetConfig) -> int:
        k, n = self._check(config)
        d = self.dims
        embed = patch_embed_params(d.channels, d.patch, d.tokens, k)
        return embed + n * vit_block_params(k, d.mlp_ratio * k) + head_params(k, d.classes)

    def flops(self, config: SubnetConfig) -> int:
        """Analytic multiply-accumulates of one image: convolution, linears and attention matmuls."""
        k, n = self._check(config)
        d = self.dims
        t = d.tokens
        embed = (t - 1) * k * d.channels * d.patch**2
        # qkv + q@k^T + attn@v + proj + fc1 + fc2 (heads split k, so the attention matmuls are t*t*k each)
        block = t * k * 3 * k + 2 * t * t * k + t * k * k + 2 * t * k * d.mlp_ratio * k
        head = k * d.classes  # the head reads the class token only
        return embed + n * block + head
