"""Greedy generation against any LMSession (an artifact's, or the torch decoder's), timed as it runs.

Time to first token is the prefill of the prompt (plus the first argmax); each further token is one decode.
Prompts are checked first: text that is not UTF-8, empty, longer than the artifact takes, or holding ids
outside the vocabulary are each a PromptError naming the limit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deploy.errors import PromptError
from deploy.families.lm_blocks import Decoder
from deploy.latency.stats import MeasureProtocol


@dataclass(frozen=True)
class Generation:
    prompt: tuple[int, ...]
    tokens: tuple[int, ...]  # generated, the first from the prefill
    ttft_ms: float
    decode_ms: tuple[float, ...]  # one per token after the first
    logits: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)

    @property
    def ms_per_token(self) -> float | None:
        return float(np.median(self.decode_ms)) if self.decode_ms else None

    @property
    def tokens_per_s(self) -> float | None:
        total = sum(self.decode_ms)
        return len(self.decode_ms) / total * 1000 if total > 0 else None


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """The prompt's token ids, or a PromptError where the text cannot be UTF-8 (bytes a non-UTF-8 command line
    passed through as surrogate escapes, or a lone surrogate)."""
    try:
        return tokenizer.encode(text)
    except UnicodeEncodeError as exc:
        code = ord(text[exc.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"lone surrogate U+{code:04X}"
        raise PromptError(
            f"the prompt is not UTF-8 text ({what} at character {exc.start}); pass it as UTF-8 (a UTF-8 locale "
            "for the command line)"
        ) from None


def check_prompt(prompt: Sequence[int], vocab: int, longest: int, what: str = "the model") -> np.ndarray:
    """The prompt as (n,) int64, or a PromptError naming the limit it breaks."""
    ids = np.asarray(list(prompt), dtype=np.int64)
    if ids.size == 0:
        raise PromptError(f"the prompt is empty; {what} needs at least one token to start from")
    if ids.size > longest:
        raise PromptError(f"the prompt has {ids.size} tokens but {what} takes at most {longest}; shorten the prompt")
    bad = ids[(ids < 0) | (ids >= vocab)]
    if bad.size:
        raise PromptError(
            f"token id {int(bad[0])} is outside the vocabulary of {what} (ids 0 … {vocab - 1}); "
            "encode the prompt with the artifact's tokenizer.json"
        )
    return ids


def greedy(
    session: Any,
    prompt: Sequence[int],
    max_new: int,
    *,
    vocab: int,
    max_context: int,
    longest_prompt: int | None = None,
    on_token: Callable[[int], None] | None = None,
    keep_logits: bool = False,
) -> Generation:
    """Generate up to `max_new` tokens greedily (fewer where max_context ends the context first)."""
    ids = check_prompt(prompt, vocab, min(longest_prompt or max_context, max_context))
    logits_kept = []
    start = time.perf_counter()
    logits, state = session.prefill(ids)
    token = int(np.argmax(logits))
    ttft = (time.perf_counter() - start) * 1000
    out, decode_ms = [token], []
    if keep_logits:
        logits_kept.append(np.asarray(logits, dtype=np.float32).copy())
    if on_token is not None:
        on_token(token)
    for _ in range(min(max_new - 1, max_context - ids.size)):  # each step feeds one more position of the context
        start = time.perf_counter()
        logits, state = session.decode(token, state)
        token = int(np.argmax(logits))
        decode_ms.append((time.perf_counter() - start) * 1000)
        out.append(token)
        if keep_logits:
            logits_kept.append(np.asarray(logits, dtype=np.float32).copy())
        if on_token is not None:
            on_token(token)
    return Generation(tuple(int(i) for i in ids), tuple(out), ttft, tuple(decode_ms), tuple(logits_kept))


class TorchSession:
    """The torch decoder as an LMSession (dynamic cache): the reference every artifact is compared with."""

    def __init__(self, decoder: Decoder) -> None:
        self.decoder = decoder.eval()

    def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        with torch.inference_mode():
            logits, kv = self.decoder.prefill(torch.from_numpy(np.asarray(prompt, np.int64)).unsqueeze(0))
        return logits[0].numpy(), kv

    def decode(self, token: int, state: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        with torch.inference_mode():
            logits, kv = self.decoder.decode(torch.tensor([[int(token)]]), state)
        return logits[0].numpy(), kv


def time_loops(
    session: Any, prompt: Sequence[int], tokens: int, loops: int, *, vocab: int, max_context: int, longest: int
) -> dict[str, float]:
    """Median TTFT, median ms per decoded token and tokens/s over `loops` generation loops (after 2 warm-up)."""
    runs = []
    for i in range(loops + 2):
        g = greedy(session, prompt, tokens, vocab=vocab, max_context=max_context, longest_prompt=longest)
        if i >= 2:
            runs.append(g)
    per_token = float(np.median([d for g in runs for d in g.decode_ms]))
    return {
        "ttft_ms": float(np.median([g.ttft_ms for g in runs])),
        "ms_per_token": per_token,
        "tokens_per_s": 1000.0 / per_token,
    }


def time_loops_gated(
    session: Any, prompt: Sequence[int], tokens: int, protocol: MeasureProtocol, *, vocab: int, max_context: int,
    longest: int, loops: int = 10,
) -> tuple[dict[str, float], dict[str, Any]]:  # fmt: skip
    """`time_loops` under a target's measurement protocol and its precision gate: batches of `loops` generation
    loops (after 2 warm-up) until the relative standard error of the per-loop ms/token is within
    `protocol.cv_max`, at most `protocol.max_retries` more batches. (figures, how they were taken)."""
    for _ in range(2):
        greedy(session, prompt, tokens, vocab=vocab, max_context=max_context, longest_prompt=longest)
    ttfts: list[float] = []
    decode: list[float] = []
    per_loop: list[float] = []
    rse = float("inf")
    for _ in range(protocol.max_retries + 1):
        for _ in range(loops):
            g = greedy(session, prompt, tokens, vocab=vocab, max_context=max_context, longest_prompt=longest)
            ttfts.append(g.ttft_ms)
            decode.extend(g.decode_ms)
            per_loop.append(float(np.median(g.decode_ms)))
        spread = np.asarray(per_loop)
        rse = float(spread.std(ddof=1) / spread.mean() / np.sqrt(len(spread))) if len(spread) > 1 else 0.0
        if rse <= protocol.cv_max:
            break
    per_token = float(np.median(decode))
    figures = {"ttft_ms": float(np.median(ttfts)), "ms_per_token": per_token, "tokens_per_s": 1000.0 / per_token}
    return figures, {"loops": len(per_loop), "rse": rse, "within_gate": rse <= protocol.cv_max}


def teacher_forced_nll(session: Any, window: Sequence[int]) -> tuple[float, int]:
    """Summed next-token NLL of a window through the session's own KV-cache path: prefill its first token, then
    decode each true token in turn (what the artifact computes when it generates)."""
    logits, state = session.prefill(np.asarray(window[:1], np.int64))
    total = 0.0
    for i, nxt in enumerate(window[1:]):
        z = np.asarray(logits, np.float64)
        total += float(np.log(np.exp(z - z.max()).sum()) + z.max() - z[int(nxt)])
        if i + 2 < len(window):
            logits, state = session.decode(int(nxt), state)
    return total, len(window) - 1
