"""TokenParity: sequences of token ids, labelled by the sum of their ids modulo the number of classes.
Scored by the mean cross-entropy (a loss: lower is better), the direction a language model's perplexity has."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deploy.api import Metric, Split, Task


class TokenParity(Task):
    name = "token_parity"
    metric = Metric("nll", "lower")
    input_names = ("tokens",)
    eval_batch = 64

    def __init__(self, seed: int = 0, vocab: int = 64, seq: int = 16, classes: int = 4, per_split: int = 64) -> None:
        super().__init__(seed)
        self.vocab, self.seq, self.classes, self.per_split = vocab, seq, classes, per_split

    def load_split(self, name: str) -> Split:
        gen = torch.Generator().manual_seed(self.seed * 10 + ("train", "val", "test").index(name))
        tokens = torch.randint(0, self.vocab, (self.per_split, self.seq), generator=gen)
        return Split(name, {"tokens": tokens}, tokens.sum(dim=1) % self.classes)

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        return float(F.cross_entropy(outputs, targets, reduction="sum")), float(targets.shape[0])

    def facts(self) -> dict[str, object]:
        return {"source": "seeded random token ids; label = sum of ids mod classes", "classes": self.classes}
