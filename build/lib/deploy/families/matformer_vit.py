"""MatFormer ViT: a ViT encoder whose every FFN is nested (MatFormer), with Mix'n'Match and layer skipping.

Each layer's FFN hidden width is one of {1/8, 1/4, 1/2, 1} of the full width, the smaller FFN being the
first k hidden units of the larger. Each layer chooses its own width (Mix'n'Match) or is skipped
(as Gemma 3n's slicing does). SubnetConfig: `layers` (kept layer indices) and `ffn` (hidden width of
each kept layer, aligned with `layers`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deploy.families.base import BlockKey, ImageSupernet
from deploy.families.nested import NestedFFNSpace, copy_nested_layer, nested_widths
from deploy.search.space import SubnetConfig

FAMILY = "matformer_vit"


@dataclass(frozen=True)
class MatFormerViTDims:
    image: int = 28
    channels: int = 1
    patch: int = 4
    dim: int = 64
    depth: int = 6
    heads: int = 4
    ffn_max: int = 1024
    classes: int = 10
    min_layers: int = 1

    @property
    def tokens(self) -> int:
        return (self.image // self.patch) ** 2 + 1  # patches + class token

    @property
    def widths(self) -> tuple[int, ...]:
        return nested_widths(self.ffn_max)


def build_vit_block(key: BlockKey, tokens: int, family: str) -> tuple[nn.Module, torch.Tensor]:
    """The standalone module and example input of a plain-ViT block key (shared by every family whose
    dense model is built from these modules, so equal keys measure the same computation)."""
    s = dict(key.shape)
    if key.kind == "patch_embed":
        module: nn.Module = PatchEmbed(s["channels"], s["image"], s["patch"], s["dim"])
        shape: tuple[int, ...] = (1, s["channels"], s["image"], s["image"])
    elif key.kind == "vit_block":
        module, shape = Block(s["dim"], s["heads"], s["ffn"]), (1, s["tokens"], s["dim"])
    elif key.kind == "cls_head":
        module, shape = Head(s["dim"], s["classes"]), (1, tokens, s["dim"])
    else:
        raise ValueError(f"{family} has no block kind '{key.kind}'")
    return module.eval(), torch.randn(shape, generator=torch.Generator().manual_seed(0))


# Analytic parameter counts of the dense modules below (every plain-ViT family counts with these).
def patch_embed_params(channels: int, patch: int, tokens: int, dim: int) -> int:
    return channels * patch**2 * dim + dim + dim + tokens * dim  # conv weight, bias, cls token, positions


def vit_block_params(dim: int, hidden: int) -> int:
    return (
        2 * dim
        + (3 * dim * dim + 3 * dim)
        + (dim * dim + dim)
        + 2 * dim
        + (dim * hidden + hidden)
        + (hidden * dim + dim)
    )


def head_params(dim: int, classes: int) -> int:
    return 2 * dim + dim * classes + classes


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, image: int, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch, stride=patch)
        tokens = (image // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1) + self.pos_embed


class Attention(nn.Module):
    # Written with plain matmuls: exports the same way to ONNX, LiteRT and CoreML.
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(d // self.heads))
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """A dense pre-norm transformer block (what extraction produces)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Head(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x[:, 0]))


class ViT(nn.Module):
    """The extracted dense subnet: an ordinary ViT."""

    def __init__(self, embed: PatchEmbed, blocks: list[Block], head: Head) -> None:
        super().__init__()
        self.embed = embed
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class MatFormerViT(NestedFFNSpace, ImageSupernet):
    family = FAMILY
    dims_type = MatFormerViTDims

    def __init__(self, variant: str, dims: MatFormerViTDims) -> None:
        super().__init__(variant)
        self.dims = dims
        self.embed = PatchEmbed(dims.channels, dims.image, dims.patch, dims.dim)
        self.layers = nn.ModuleList(Block(dims.dim, dims.heads, dims.ffn_max) for _ in range(dims.depth))
        self.head = Head(dims.dim, dims.classes)

    # --- search space (deploy/families/nested.py) ----------------------------------------------
    def position_embedding(self) -> nn.Parameter:
        return self.embed.pos_embed

    # --- running and cutting ------------------------------------------------------------------
    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        config = config or self.largest()
        layers, ffn = self._check(config)
        x = self.embed(x)
        for i, k in zip(layers, ffn, strict=True):
            blk = self.layers[i]
            x = x + blk.attn(blk.norm1(x))
            h = F.gelu(F.linear(blk.norm2(x), blk.fc1.weight[:k], blk.fc1.bias[:k]))
            x = x + F.linear(h, blk.fc2.weight[:, :k], blk.fc2.bias)
        return self.head(x)

    def extract(self, config: SubnetConfig) -> nn.Module:
        layers, ffn = self._check(config)
        d = self.dims
        blocks = []
        for i, k in zip(layers, ffn, strict=True):
            blocks.append(copy_nested_layer(self.layers[i], Block(d.dim, d.heads, k), k))
        return ViT(copy.deepcopy(self.embed), blocks, copy.deepcopy(self.head)).eval()

    # --- latency blocks -----------------------------------------------------------------------
    def blocks(self, config: SubnetConfig) -> list[BlockKey]:
        _, ffn = self._check(config)
        d = self.dims
        return [
            BlockKey.of("patch_embed", channels=d.channels, image=d.image, patch=d.patch, dim=d.dim),
            *(BlockKey.of("vit_block", tokens=d.tokens, dim=d.dim, heads=d.heads, ffn=k) for k in ffn),
            BlockKey.of("cls_head", dim=d.dim, classes=d.classes),
        ]

    def build_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor]:
        return build_vit_block(key, self.dims.tokens, FAMILY)

    def param_count(self, config: SubnetConfig) -> int:
        _, ffn = self._check(config)
        d = self.dims
        embed = patch_embed_params(d.channels, d.patch, d.tokens, d.dim)
        return embed + sum(vit_block_params(d.dim, k) for k in ffn) + head_params(d.dim, d.classes)
