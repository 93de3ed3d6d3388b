"""TokenMLP: int64 token ids -> embedding -> residual MLP blocks (elastic hidden width per layer, elastic
depth) -> mean pool -> class logits. Elastic like MatFormer: a narrower block is the first units of the wider."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deploy.api import BlockKey, Gene, InputSpec, SearchSpace, SubnetConfig, Supernet

FAMILY = "token_mlp"


@dataclass(frozen=True)
class TokenMLPDims:
    vocab: int = 64
    seq: int = 16
    dim: int = 32
    depth: int = 3
    hidden_max: int = 64
    classes: int = 4

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.hidden_max // 4, self.hidden_max // 2, self.hidden_max)


class Block(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        h = hidden or self.up.out_features
        y = F.gelu(F.linear(self.norm(x), self.up.weight[:h], self.up.bias[:h]))
        return x + F.linear(y, self.down.weight[:, :h], self.down.bias)


class Dense(nn.Module):
    """What extract returns: plain modules with sliced weights, no supernet code."""

    def __init__(self, embed: nn.Embedding, blocks: list[Block], head: nn.Linear) -> None:
        super().__init__()
        self.embed, self.blocks, self.head = embed, nn.ModuleList(blocks), head

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(dim=1))


class Pool(nn.Module):
    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=1))


class TokenMLP(Supernet):
    family = FAMILY
    dims_type = TokenMLPDims

    def __init__(self, variant: str, dims: TokenMLPDims) -> None:
        super().__init__(variant)
        self.dims = dims
        self.embed = nn.Embedding(dims.vocab, dims.dim)
        self.layers = nn.ModuleList([Block(dims.dim, dims.hidden_max) for _ in range(dims.depth)])
        self.head = nn.Linear(dims.dim, dims.classes)

    def inputs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("tokens", (1, self.dims.seq), "int64", high=self.dims.vocab),)

    def space(self) -> SearchSpace:
        d = self.dims
        genes = tuple(Gene(f"hidden{i}", (0, *d.widths)) for i in range(d.depth))  # 0: the layer is skipped

        def decode(g: tuple[int, ...]) -> SubnetConfig:
            return SubnetConfig.make(FAMILY, {"hidden": [genes[i].options[v] for i, v in enumerate(g)]})

        def encode(c: SubnetConfig) -> tuple[int, ...]:
            return tuple(genes[i].options.index(h) for i, h in enumerate(c["hidden"]))

        return SearchSpace(FAMILY, genes, decode, encode, is_valid=lambda g: any(g))

    def smallest(self) -> SubnetConfig:
        d = self.dims
        return SubnetConfig.make(FAMILY, {"hidden": [d.widths[0]] + [0] * (d.depth - 1)})

    def _hidden(self, config: SubnetConfig | None) -> list[int]:
        hidden = list((config or self.largest())["hidden"])
        if len(hidden) != self.dims.depth or any(h not in (0, *self.dims.widths) for h in hidden):
            raise ValueError(f"{FAMILY} config needs {self.dims.depth} hidden widths in {self.dims.widths} or 0")
        return hidden

    def forward(self, tokens: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        x = self.embed(tokens)
        for layer, h in zip(self.layers, self._hidden(config), strict=True):
            if h:
                x = layer(x, h)
        return self.head(x.mean(dim=1))

    def extract(self, config: SubnetConfig) -> nn.Module:
        blocks = []
        for layer, h in zip(self.layers, self._hidden(config), strict=True):
            if not h:
                continue
            block = Block(self.dims.dim, h)
            block.load_state_dict(
                {
                    "norm.weight": layer.norm.weight, "norm.bias": layer.norm.bias,
                    "up.weight": layer.up.weight[:h], "up.bias": layer.up.bias[:h],
                    "down.weight": layer.down.weight[:, :h], "down.bias": layer.down.bias,
                }
            )  # fmt: skip
            blocks.append(block)
        return Dense(copy.deepcopy(self.embed), blocks, copy.deepcopy(self.head)).eval()

    def blocks(self, config: SubnetConfig) -> list[BlockKey]:
        d = self.dims
        return [
            BlockKey.of("token_embed", vocab=d.vocab, seq=d.seq, dim=d.dim),
            *(BlockKey.of("mlp_block", seq=d.seq, dim=d.dim, hidden=h) for h in self._hidden(config) if h),
            BlockKey.of("pool_head", seq=d.seq, dim=d.dim, classes=d.classes),
        ]

    def build_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor]:
        s = dict(key.shape)
        gen = torch.Generator().manual_seed(0)
        if key.kind == "token_embed":
            return nn.Embedding(s["vocab"], s["dim"]).eval(), torch.randint(0, s["vocab"], (1, s["seq"]), generator=gen)
        if key.kind == "mlp_block":
            return Block(s["dim"], s["hidden"]).eval(), torch.randn(1, s["seq"], s["dim"], generator=gen)
        if key.kind == "pool_head":
            return Pool(nn.Linear(s["dim"], s["classes"])).eval(), torch.randn(1, s["seq"], s["dim"], generator=gen)
        raise ValueError(f"{FAMILY} has no block kind {key.kind}")

    def param_count(self, config: SubnetConfig) -> int:
        d = self.dims
        per = sum(2 * d.dim + d.dim * h + h + h * d.dim + d.dim for h in self._hidden(config) if h)
        return d.vocab * d.dim + per + d.dim * d.classes + d.classes
