"""text_lm: next-token prediction on the shipped Python-source corpus (deploy/tasks/corpus.py), byte-level.

Each example is a window of `seq` tokens; its targets are the same window shifted by one. The metric is the
validation perplexity, exp(mean next-token NLL), lower is better; next-token accuracy is reported beside it.
Windows do not overlap; val and test windows are spread evenly over their files (fixed by the corpus, not
the seed: the seed is recorded, the data never depends on it).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deploy.errors import ConfigFileError
from deploy.lm.tokenizer import ByteTokenizer
from deploy.tasks import corpus as corpus_mod
from deploy.tasks.base import Metric, Predict, Split, Task


def tokenizer_path(stem: Path) -> Path:
    """`<stem>.tokenizer.json` beside `<stem>.safetensors`."""
    stem = Path(stem)
    return stem.parent / f"{stem.name.removesuffix('.safetensors')}.tokenizer.json"


PERPLEXITY = Metric("perplexity", "lower")
TOKENS = "tokens"


def windows(ids: np.ndarray, seq: int, count: int | None) -> np.ndarray:
    """Non-overlapping windows of seq + 1 tokens; `count` of them spread evenly (None: all, in order)."""
    n = (len(ids) - 1) // seq
    if n < 1:
        raise ConfigFileError(f"text_lm: a split of {len(ids)} tokens holds no window of {seq + 1}; lower seq")
    starts = np.arange(n) * seq
    if count is not None and count < n:
        starts = starts[np.unique(np.linspace(0, n - 1, count).round().astype(int))]
    return np.stack([ids[s : s + seq + 1] for s in starts])


class TextLM(Task):
    name = "text_lm"
    metric = PERPLEXITY
    input_names = (TOKENS,)
    eval_batch = 16

    def __init__(self, seed: int = 0, seq: int = 128, val_windows: int = 64, test_windows: int = 64) -> None:
        super().__init__(seed)
        if seq < 2 or val_windows < 1 or test_windows < 1:
            raise ConfigFileError("text_lm needs seq >= 2 and at least one val and one test window")
        self.seq, self.counts = seq, {"train": None, "val": val_windows, "test": test_windows}
        self.tokenizer = ByteTokenizer()

    def load_split(self, name: str) -> Split:
        corpus = corpus_mod.load()
        ids = np.asarray(self.tokenizer.encode(corpus.text(name)), dtype=np.int64)
        w = torch.from_numpy(windows(ids, self.seq, self.counts[name]))
        return Split(name, {TOKENS: w[:, :-1].contiguous()}, w[:, 1:].contiguous())

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        logits = outputs.reshape(-1, outputs.shape[-1]).float()
        return float(F.cross_entropy(logits, targets.reshape(-1), reduction="sum")), float(targets.numel())

    def finalize(self, total: float, weight: float) -> float:
        return math.exp(min(total / max(weight, 1e-12), 50.0))

    def next_token_accuracy(self, predict: Predict, split: str) -> float:
        """Share of positions whose argmax is the next token (reported beside the perplexity)."""
        data, hits = self.split(split), 0
        with torch.inference_mode():
            for start in range(0, len(data), self.eval_batch):
                inputs, targets = data.batch(start, start + self.eval_batch)
                hits += int((predict(inputs).argmax(-1) == targets).sum())
        return hits / max(data.targets.numel(), 1)

    def extra_metrics(self, predict: Predict, split: str) -> dict[str, float]:
        return {"next_token_accuracy": self.next_token_accuracy(predict, split)}

    def checkpoint_files(self, stem: Path) -> dict[str, object]:
        path = self.tokenizer.save(tokenizer_path(stem))
        return {"tokenizer": {"file": path.name, "sha256": self.tokenizer.sha256, "vocab": self.tokenizer.vocab}}

    def facts(self) -> dict[str, object]:
        return {
            **corpus_mod.load().facts(),
            "tokenizer": {"kind": self.tokenizer.kind, "vocab": self.tokenizer.vocab, "sha256": self.tokenizer.sha256},
            "window": f"{self.seq} tokens, targets shifted by one; val/test windows spread evenly over held-out files",
            "metric": "perplexity = exp(mean next-token NLL) on val; next-token accuracy reported beside it",
        }
