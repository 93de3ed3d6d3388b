"""ElasticViT's dense blocks: what `extract` produces, what the supernet holds at full size, and their
analytic parameter and multiply-accumulate counts per block shape (BlockKey)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deploy.families.base import BlockKey


def out_size(size: int, stride: int) -> int:
    return (size - 1) // stride + 1  # odd kernels padded by k // 2


class Stem(nn.Sequential):
    def __init__(self, channels: int, width: int) -> None:
        super().__init__(nn.Conv2d(channels, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.Hardswish())


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand, k×k depthwise (stride), 1×1 project; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.dw = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class Merge(nn.Module):
    """Into a transformer stage: a 3×3 conv (the stage's stride) to the embed dim, as tokens plus positions."""

    def __init__(self, cin: int, dim: int, stride: int, size: int, from_tokens: bool) -> None:
        super().__init__()
        self.size, self.from_tokens = size, from_tokens
        self.proj = nn.Conv2d(cin, dim, 3, stride, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, out_size(size, stride) ** 2, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_tokens:  # the previous transformer stage's tokens back to a feature map
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], self.size, self.size)
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos_embed


class Attention(nn.Module):
    # Plain matmuls (no nn.MultiheadAttention fast path): exports the same way to ONNX, LiteRT and CoreML.
    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.head_dim**-0.5
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim)
        return self.proj(out)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, ffn: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, ffn)
        self.fc2 = nn.Linear(ffn, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PoolHead(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x).mean(dim=1))


class HybridViT(nn.Sequential):
    """The extracted dense subnet: its children are exactly the blocks of `blocks(config)`, in order."""


def make_block(key: BlockKey) -> nn.Module:
    s = dict(key.shape)
    if key.kind == "stem":
        return Stem(s["channels"], s["width"])
    if key.kind == "mbconv":
        return MBConv(s["cin"], s["cout"], s["expand"], s["kernel"], s["stride"])
    if key.kind == "vit_merge":
        return Merge(s["cin"], s["dim"], s["stride"], s["size"], bool(s["from_tokens"]))
    if key.kind == "vit_block":
        return TransformerBlock(s["dim"], s["heads"], s["head_dim"], s["ffn"])
    if key.kind == "pool_head":
        return PoolHead(s["dim"], s["classes"])
    raise ValueError(f"elastic_vit has no block kind '{key.kind}'")


def block_params(key: BlockKey) -> int:
    s = dict(key.shape)
    if key.kind == "stem":
        return s["channels"] * 9 * s["width"] + 2 * s["width"]
    if key.kind == "mbconv":
        h = s["cin"] * s["expand"]
        return s["cin"] * h + 2 * h + h * s["kernel"] ** 2 + 2 * h + h * s["cout"] + 2 * s["cout"]
    if key.kind == "vit_merge":
        tokens = out_size(s["size"], s["stride"]) ** 2
        return s["cin"] * 9 * s["dim"] + s["dim"] + tokens * s["dim"]
    if key.kind == "vit_block":
        d, i, f = s["dim"], s["heads"] * s["head_dim"], s["ffn"]
        return 4 * d + d * 3 * i + 3 * i + i * d + d + d * f + f + f * d + d
    return 2 * s["dim"] + s["dim"] * s["classes"] + s["classes"]


def block_macs(key: BlockKey) -> int:
    """Multiply-accumulates of convolutions, linears and attention matmuls (norms and activations excluded)."""
    s = dict(key.shape)
    if key.kind == "stem":
        return out_size(s["image"], 2) ** 2 * s["channels"] * 9 * s["width"]
    if key.kind == "mbconv":
        h, out = s["cin"] * s["expand"], out_size(s["size"], s["stride"]) ** 2
        return s["size"] ** 2 * s["cin"] * h + out * (h * s["kernel"] ** 2 + h * s["cout"])
    if key.kind == "vit_merge":
        return out_size(s["size"], s["stride"]) ** 2 * s["cin"] * 9 * s["dim"]
    if key.kind == "vit_block":
        n, d, i, f = s["tokens"], s["dim"], s["heads"] * s["head_dim"], s["ffn"]
        return n * (d * 3 * i + i * d + 2 * d * f) + 2 * n * n * i
    return s["dim"] * s["classes"]
