"""LM parity: greedy generation from several prompts gives the same tokens from the torch decoder and from the
artifact, and the logits of every step (while the tokens agree) lie within the backend's tolerance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from deploy.errors import ParityError
from deploy.lm.artifact import LMArtifact
from deploy.lm.generate import Generation, greedy

PROMPTS = 8
NEW_TOKENS = 32
PROMPT_LENGTHS = (5, 12, 24, 40, 9, 17, 31, 48)  # cut to what the artifact takes


def parity_prompts(source: torch.Tensor, longest: int, n: int = PROMPTS) -> list[list[int]]:
    """n prompts of varied lengths, each the start of a row of `source` (token windows of the test split)."""
    prompts = []
    for i in range(n):
        row = source[i % len(source)].tolist()
        length = max(1, min(PROMPT_LENGTHS[i % len(PROMPT_LENGTHS)], longest, len(row)))
        prompts.append(row[:length])
    return prompts


@dataclass(frozen=True)
class GreedyParity:
    prompts: int
    new_tokens: int
    identical: int  # prompts whose generated tokens all agree
    first_divergence: tuple[int | None, ...]  # per prompt: the first step whose token differs (None: none)
    max_abs_logit_diff: float  # over every step both generated from the same context
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.identical == self.prompts and self.max_abs_logit_diff <= self.tolerance

    def summary(self) -> str:
        return (
            f"{self.identical}/{self.prompts} prompts gave identical greedy tokens ({self.new_tokens} each); "
            f"max abs logit diff {self.max_abs_logit_diff:.1e} (tolerance {self.tolerance:.0e})"
        )

    def raise_if_failed(self, what: str) -> None:
        if not self.ok:
            raise ParityError(f"LM parity failed for {what}: {self.summary()}; check the converter or the tolerance")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "first_divergence": list(self.first_divergence)}


def compare(reference: Sequence[Generation], got: Sequence[Generation], tolerance: float) -> GreedyParity:
    diverge: list[int | None] = []
    worst = 0.0
    for ref, out in zip(reference, got, strict=True):
        first = next((i for i, (a, b) in enumerate(zip(ref.tokens, out.tokens, strict=False)) if a != b), None)
        if first is None and len(ref.tokens) != len(out.tokens):
            first = min(len(ref.tokens), len(out.tokens))
        diverge.append(first)
        same = len(ref.logits) if first is None else first + 1  # step `first` still had the same context
        for a, b in list(zip(ref.logits, out.logits, strict=False))[:same]:
            worst = max(worst, float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max()))
    identical = sum(d is None for d in diverge)
    return GreedyParity(len(got), len(got[0].tokens) if got else 0, identical, tuple(diverge), worst, tolerance)


def greedy_parity(
    reference: Any,
    session: Any,
    artifact: LMArtifact,
    prompts: Sequence[Sequence[int]],
    tolerance: float,
    new_tokens: int = NEW_TOKENS,
) -> tuple[GreedyParity, list[Generation]]:
    """Greedy generations of `session` (the artifact's) against `reference` (the torch decoder's), and the
    artifact's generations themselves."""
    spec = artifact.spec
    limits = {"vocab": spec.vocab, "max_context": spec.max_context, "longest_prompt": spec.longest_prompt}
    ref = [greedy(reference, p, new_tokens, keep_logits=True, **limits) for p in prompts]
    got = [greedy(session, p, new_tokens, keep_logits=True, **limits) for p in prompts]
    return compare(ref, got, tolerance), got
