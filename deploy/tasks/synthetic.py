"""Seeded random images with random labels: a task for scale probes, whose accuracy means nothing.

It exists so that a model at a deployed scale (DeiT-Tiny's 224 × 224 × 3, 1,000 classes) can go through
the whole pipeline (selection, export, conversion, int8 calibration, timing) without a data set. Every
accuracy it reports is chance level by construction, and its facts say so.
"""

from __future__ import annotations

import torch

from deploy.tasks.base import TOP1, Split, Task, top1_batch_score


class SyntheticImages(Task):
    name = "synthetic_images"
    metric = TOP1
    input_names = ("input",)
    eval_batch = 16

    def __init__(
        self, seed: int = 0, image: int = 224, channels: int = 3, classes: int = 1000, per_split: int = 32
    ) -> None:
        super().__init__(seed)
        self.image, self.channels, self.classes, self.per_split = image, channels, classes, per_split

    def load_split(self, name: str) -> Split:
        gen = torch.Generator().manual_seed(self.seed * 1000 + ("train", "val", "test").index(name))
        x = torch.randn(self.per_split, self.channels, self.image, self.image, generator=gen)
        y = torch.randint(0, self.classes, (self.per_split,), generator=gen)
        return Split(name, {"input": x}, y)

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        return top1_batch_score(outputs, targets)

    def facts(self) -> dict[str, object]:
        return {
            "source": "seeded N(0, 1) images with uniform random labels: accuracy is chance level, meaningless",
            "shape": [self.channels, self.image, self.image],
            "classes": self.classes,
        }
