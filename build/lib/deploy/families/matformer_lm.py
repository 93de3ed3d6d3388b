"""MatFormer-LM: a decoder-only transformer whose every FFN is nested, with Mix'n'Match and layer skipping.

As MatFormer and Gemma 3n (E2B nested in E4B): each layer's FFN width is one of {1/8, 1/4, 1/2, 1} of the
largest, the smaller being the first units of the larger; each layer picks its own width or is skipped
(deploy/families/nested.py). Causal attention, learned absolute positions (max_context of them: the KV
cache capacity of every artifact), pre-norm, untied LM head. Input: int64 token ids (1, seq).

`extract` gives a dense `Decoder` (deploy/families/lm_blocks.py) equal to the supernet at that config, run
as a whole (`forward`: every position's logits) or with a KV cache (`prefill`/`decode`).

Latency blocks come in three regimes: `blocks(config)` is the plain forward the hub exports (seq tokens,
every position's logits); `regime_blocks(config, "prefill", p)` is time to first token for a prompt of p
tokens; `regime_blocks(config, "decode", c)` is one generated token with c tokens of context (dynamic
cache) or against the fixed-length cache (static: c is then max_context).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from deploy.families.base import BlockKey, InputSpec, Supernet
from deploy.families.lm_blocks import DecodeLayer, Decoder, DecoderLayer, LastHead, LMHead, PrefillLayer, TokenEmbed
from deploy.families.matformer_vit import vit_block_params
from deploy.families.nested import NestedFFNSpace, copy_nested_layer, nested_widths
from deploy.search.space import SubnetConfig

FAMILY = "matformer_lm"
TOKENS = "tokens"
Regime = Literal["prefill", "decode"]
REGIMES: tuple[Regime, ...] = ("prefill", "decode")


@dataclass(frozen=True)
class MatFormerLMDims:
    vocab: int = 256  # byte-level by default (deploy/lm/tokenizer.py)
    dim: int = 128
    depth: int = 6
    heads: int = 4
    ffn_max: int = 512
    seq: int = 128  # tokens of one scored window (the task's), and of the plain subnet's input
    max_context: int = 256  # learned positions: the longest prompt + generation an artifact holds
    min_layers: int = 1

    @property
    def widths(self) -> tuple[int, ...]:
        return nested_widths(self.ffn_max)

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


class MatFormerLM(NestedFFNSpace, Supernet):
    family = FAMILY
    language_model = True  # deployed by deploy/lm to targets with an `lm:` section
    dims_type = MatFormerLMDims

    def __init__(self, variant: str, dims: MatFormerLMDims) -> None:
        super().__init__(variant)
        if dims.dim % dims.heads:
            raise ValueError(f"dim {dims.dim} must be a multiple of heads {dims.heads}")
        if not 1 <= dims.seq <= dims.max_context:
            raise ValueError(f"seq {dims.seq} must lie in [1, max_context {dims.max_context}]")
        if dims.ffn_max % 8:
            raise ValueError(f"ffn_max {dims.ffn_max} must be a multiple of 8 (its nested widths are 1/8 … 1)")
        self.dims = dims
        self.embed = TokenEmbed(dims.vocab, dims.dim, dims.max_context)
        self.layers = nn.ModuleList(DecoderLayer(dims.dim, dims.heads, dims.ffn_max) for _ in range(dims.depth))
        self.head = LMHead(dims.dim, dims.vocab)

    def inputs(self) -> tuple[InputSpec, ...]:
        return (InputSpec(TOKENS, (1, self.dims.seq), "int64", high=self.dims.vocab),)

    # --- running and cutting ------------------------------------------------------------------
    def forward(self, tokens: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        layers, ffn = self._check(config or self.largest())
        x = self.embed(tokens)
        for i, k in zip(layers, ffn, strict=True):
            x = self.layers[i](x, k)
        return self.head(x)

    def extract(self, config: SubnetConfig) -> Decoder:
        layers, ffn = self._check(config)
        d = self.dims
        kept = [
            copy_nested_layer(self.layers[i], DecoderLayer(d.dim, d.heads, k), k)
            for i, k in zip(layers, ffn, strict=True)
        ]
        return Decoder(copy.deepcopy(self.embed), kept, copy.deepcopy(self.head), d.heads).eval()

    def param_count(self, config: SubnetConfig) -> int:
        _, ffn = self._check(config)
        d = self.dims
        embed = (d.vocab + d.max_context) * d.dim
        return embed + sum(vit_block_params(d.dim, k) for k in ffn) + 2 * d.dim + d.dim * d.vocab + d.vocab

    # --- latency blocks -----------------------------------------------------------------------
    def _embed_key(self, tokens: int) -> BlockKey:
        d = self.dims
        return BlockKey.of("lm_embed", vocab=d.vocab, dim=d.dim, max_context=d.max_context, tokens=tokens)

    def blocks(self, config: SubnetConfig) -> list[BlockKey]:
        _, ffn = self._check(config)
        d = self.dims
        return [
            self._embed_key(d.seq),
            *(BlockKey.of("lm_layer", tokens=d.seq, dim=d.dim, heads=d.heads, ffn=k) for k in ffn),
            BlockKey.of("lm_head", tokens=d.seq, dim=d.dim, vocab=d.vocab),
        ]

    def regime_blocks(self, config: SubnetConfig, regime: Regime, length: int, static: bool = False) -> list[BlockKey]:
        """The blocks of time to first token for a prompt of `length` tokens (prefill), or of one generated
        token with `length` tokens of context (decode; static: against the cache of max_context)."""
        _, ffn = self._check(config)
        d = self.dims
        if not 1 <= length <= d.max_context:
            raise ValueError(f"{regime} length {length} must lie in [1, max_context {d.max_context}]")
        shape = {"dim": d.dim, "heads": d.heads}
        if regime == "prefill":
            layers = [BlockKey.of("lm_prefill_layer", tokens=length, ffn=k, **shape) for k in ffn]
            first = self._embed_key(length)
        elif regime == "decode":
            kv = d.max_context if static else length
            layers = [BlockKey.of("lm_decode_layer", kv=kv, static=int(static), ffn=k, **shape) for k in ffn]
            first = self._embed_key(1)
        else:
            raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
        return [first, *layers, BlockKey.of("lm_last_head", dim=d.dim, vocab=d.vocab)]

    def regime_block_keys(self, regime: Regime, lengths: tuple[int, ...], static: bool = False) -> list[BlockKey]:
        """Every block of a regime at these lengths, over every slice (what an LM latency table holds)."""
        found = {k for c in self.block_cover() for n in lengths for k in self.regime_blocks(c, regime, n, static)}
        return sorted(found)

    def build_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor | tuple[torch.Tensor, ...]]:
        s = dict(key.shape)
        gen = torch.Generator().manual_seed(0)

        def x(n: int) -> torch.Tensor:
            return torch.randn(1, n, s["dim"], generator=gen)

        if key.kind == "lm_embed":
            tokens = torch.randint(0, s["vocab"], (1, s["tokens"]), generator=gen)
            return TokenEmbed(s["vocab"], s["dim"], s["max_context"]).eval(), tokens
        if key.kind in ("lm_head", "lm_last_head"):
            head = LMHead(s["dim"], s["vocab"])
            return (head.eval(), x(s["tokens"])) if key.kind == "lm_head" else (LastHead(head).eval(), x(1))
        layer = DecoderLayer(s["dim"], s["heads"], s["ffn"])
        if key.kind == "lm_layer":
            return layer.eval(), x(s["tokens"])
        if key.kind == "lm_prefill_layer":
            return PrefillLayer(layer).eval(), x(s["tokens"])
        if key.kind == "lm_decode_layer":
            cache = (1, s["heads"], s["kv"], s["dim"] // s["heads"])
            past = (torch.randn(cache, generator=gen), torch.randn(cache, generator=gen))
            if s["static"]:
                return DecodeLayer(layer, True).eval(), (x(1), torch.tensor([s["kv"] - 1]), *past)
            return DecodeLayer(layer, False).eval(), (x(1), *past)
        raise ValueError(f"{FAMILY} has no block kind '{key.kind}'")
