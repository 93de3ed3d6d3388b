"""The dense modules of a decoder-only LM (what `matformer_lm` extracts) and its KV cache.

Pre-norm decoder layers with causal attention written as plain matmuls (they export the same way to
ONNX, LiteRT and CoreML), learned absolute positions, an untied LM head. Two cache layouts, both one
stacked tensor `kv` of shape (2·L, heads, T, head_dim) (layer l's keys at 2l, its values at 2l+1; 4-D, so
every converter takes it):

- **dynamic** (ONNX Runtime): prefill returns the prompt's KV (T = prompt length); decode takes the past
  (T = context so far) and returns it one longer. The position of the new token is the past's length.
- **static** (LiteRT, CoreML): one cache of the fixed maximum context M; prefill pads the prompt's KV to M;
  decode writes the new token's K/V at `pos` (a one-hot blend: element-wise ops only) and attends over
  positions <= pos.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e9  # additive mask of a position a query must not see (finite: never NaN after softmax)


class TokenEmbed(nn.Module):
    """Token embedding plus learned absolute positions (max_context rows)."""

    def __init__(self, vocab: int, dim: int, max_context: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(max_context, dim))
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tok(tokens) + self.pos[: tokens.shape[1]]

    def after(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Tokens that follow `start` others (the dynamic decode: start is the past's length)."""
        return self.tok(tokens) + self.pos[start : start + tokens.shape[1]]

    def at(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(1, T) tokens at positions pos … pos + T − 1 (`pos` a (1,) tensor): the static cache's embedding."""
        return self.tok(tokens) + torch.index_select(self.pos, 0, pos + torch.arange(tokens.shape[1])).unsqueeze(0)


class CausalAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]  # each (b, heads, n, head_dim)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, h, n, dh = q.shape
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(dh)) + mask
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(b, n, h * dh))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(x)
        return self.attend(q, k, v, causal_mask(x.shape[1], 0))


def causal_mask(n: int, past: int = 0) -> torch.Tensor:
    """(n, past + n) additive mask: query i (at position past + i) sees keys 0 … past + i."""
    rows = torch.arange(n).unsqueeze(1) + past
    cols = torch.arange(n + past).unsqueeze(0)
    return torch.where(cols > rows, torch.tensor(NEG), torch.tensor(0.0))


class DecoderLayer(nn.Module):
    """A pre-norm decoder layer. `forward(x, hidden)` runs its FFN at the first `hidden` units (the supernet's
    nested widths); an extracted layer holds only those units and runs with hidden=None."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def ffn(self, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        if hidden is None:
            return self.fc2(F.gelu(self.fc1(self.norm2(x))))
        h = F.gelu(F.linear(self.norm2(x), self.fc1.weight[:hidden], self.fc1.bias[:hidden]))
        return F.linear(h, self.fc2.weight[:, :hidden], self.fc2.bias)

    def forward(self, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(x, hidden)

    def forward_kv(
        self, x: torch.Tensor, past_k: torch.Tensor | None = None, past_v: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Dynamic cache: (x, keys, values) with the past (1, heads, P, head_dim) extended by x's tokens."""
        q, k, v = self.attn.split(self.norm1(x))
        past = 0 if past_k is None else past_k.shape[2]
        if past_k is not None and past_v is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        x = x + self.attn.attend(q, k, v, causal_mask(x.shape[1], past))
        return x + self.ffn(x), k, v

    def forward_static(
        self, x: torch.Tensor, pos: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Static cache: x's T tokens at positions pos … pos + T − 1 (`pos` a (1,) tensor) written into a cache
        of the fixed maximum length (a selection matmul: no scatter), each attending to positions <= its own."""
        q, k, v = self.attn.split(self.norm1(x))
        places = torch.arange(cache_k.shape[2]).unsqueeze(0)  # (1, M)
        at = (pos + torch.arange(x.shape[1])).unsqueeze(1)  # (T, 1)
        sel = (places == at).to(x.dtype)  # (T, M): token t lands at position pos + t
        kept = 1.0 - sel.sum(dim=0).view(1, 1, -1, 1)
        cache_k = cache_k * kept + sel.t() @ k
        cache_v = cache_v * kept + sel.t() @ v
        mask = torch.where(places > at, torch.tensor(NEG), torch.tensor(0.0))
        x = x + self.attn.attend(q, cache_k, cache_v, mask)
        return x + self.ffn(x), cache_k, cache_v


class LMHead(nn.Module):
    def __init__(self, dim: int, vocab: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


class Decoder(nn.Module):
    """The extracted dense LM: `forward(tokens)` gives every position's logits (no cache); `prefill`/`decode`
    (dynamic cache) and `prefill_static`/`decode_static` (fixed maximum context) generate with a KV cache."""

    def __init__(self, embed: TokenEmbed, layers: list[DecoderLayer], head: LMHead, heads: int) -> None:
        super().__init__()
        self.embed, self.layers, self.head = embed, nn.ModuleList(layers), head
        self.heads = heads

    @property
    def max_context(self) -> int:
        return int(self.embed.pos.shape[0])

    @property
    def vocab(self) -> int:
        return int(self.embed.tok.weight.shape[0])

    def cache_shape(self, length: int) -> tuple[int, int, int, int]:
        dim = self.embed.tok.weight.shape[1]
        return (2 * len(self.layers), self.heads, length, dim // self.heads)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)

    def _run_kv(self, x: torch.Tensor, kv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        out = []
        for i, layer in enumerate(self.layers):
            past_k = None if kv is None else kv[2 * i].unsqueeze(0)
            past_v = None if kv is None else kv[2 * i + 1].unsqueeze(0)
            x, k, v = layer.forward_kv(x, past_k, past_v)
            out += [k[0], v[0]]
        return x, torch.stack(out)

    def prefill(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, P) prompt -> (the last position's logits (1, vocab), kv (2L, heads, P, head_dim))."""
        x, kv = self._run_kv(self.embed(tokens), None)
        return self.head(x[:, -1]), kv

    def decode(self, token: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 1) token after `kv` (2L, heads, P, head_dim) -> (logits (1, vocab), kv of length P + 1)."""
        x, kv = self._run_kv(self.embed.after(token, kv.shape[2]), kv)
        return self.head(x[:, -1]), kv

    def prefill_static(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, B) prompt padded to a bucket -> (every position's logits (1, B, vocab), kv padded to max_context)."""
        x, kv = self._run_kv(self.embed(tokens), None)
        return self.head(x), F.pad(kv, (0, 0, 0, self.max_context - tokens.shape[1]))

    def chunk_static(
        self, tokens: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, T) tokens at positions pos … pos + T − 1 ((1,) int) with the fixed-length cache -> (their logits
        (1, T, vocab), kv): one graph for a prompt chunk (T = a bucket) and a decode step (T = 1)."""
        x = self.embed.at(tokens, pos)
        out = []
        for i, layer in enumerate(self.layers):
            x, k, v = layer.forward_static(x, pos, kv[2 * i].unsqueeze(0), kv[2 * i + 1].unsqueeze(0))
            out += [k[0], v[0]]
        return self.head(x), torch.stack(out)

    def decode_static(
        self, token: torch.Tensor, pos: torch.Tensor, kv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 1) token at position `pos` ((1,) int) with the fixed-length cache -> (logits (1, vocab), kv)."""
        logits, kv = self.chunk_static(token, pos, kv)
        return logits[:, -1], kv


class Graph(nn.Module):
    """One method of a Decoder as a module's forward (what an exporter traces)."""

    def __init__(self, decoder: Decoder, method: str) -> None:
        super().__init__()
        self.decoder, self.method = decoder, method

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return getattr(self.decoder, self.method)(*args, **kwargs)


# --- latency blocks: each a module run alone on its example input -----------------------------------------


class PrefillLayer(nn.Module):
    """A layer as prefill runs it: (x, its keys, its values)."""

    def __init__(self, layer: DecoderLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.layer.forward_kv(x)


class DecodeLayer(nn.Module):
    """A layer as decode runs it: one token against the past (dynamic) or the fixed-length cache (static)."""

    def __init__(self, layer: DecoderLayer, static: bool) -> None:
        super().__init__()
        self.layer, self.static = layer, static

    def forward(self, x: torch.Tensor, *cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.static:
            pos, k, v = cache
            return self.layer.forward_static(x, pos, k, v)
        return self.layer.forward_kv(x, *cache)


class LastHead(nn.Module):
    """The head on the last position only (prefill and decode need no other logits)."""

    def __init__(self, head: LMHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, -1])
