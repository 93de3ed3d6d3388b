"""The training loop every procedure shares (deploy.training.train's sandwich, SN-Net stitches, TLEG), and its parts.

AdamW with warmup + cosine over `max(step fraction, time fraction)`, so a run that hits its wall-clock
budget still anneals to zero; a step function does one batch's forward and backward passes.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from deploy.progress import Progress, ProgressTask
from deploy.tasks.mnist import MNIST_MEAN, MNIST_STD, Splits
from deploy.training.recipes import Recipe


def shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels, filling with the background value."""
    if max_shift <= 0:
        return x
    s = max_shift
    background = (0.0 - MNIST_MEAN) / MNIST_STD
    padded = F.pad(x, (s, s, s, s), value=background)
    dx, dy = torch.randint(0, 2 * s + 1, (2, x.shape[0]), generator=gen).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))])


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads, then restore the caller's setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def init_sincos_positions(pos: torch.nn.Parameter | None, scale: float) -> None:
    """Start the position embedding at a 2-D sin-cos grid (MAE-style) instead of near zero.

    A ViT whose positions start at std 0.02 first sees a bag of patches and spends most of a short run
    discovering where they are; with the grid given, a short run is markedly more accurate
    (docs/families.md#training-notes).
    """
    if scale <= 0 or not isinstance(pos, torch.nn.Parameter) or pos.shape[-1] % 4:
        return
    dim, side = pos.shape[-1], math.isqrt(pos.shape[1] - 1)
    if side * side != pos.shape[1] - 1:
        return
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))

    def axis(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1).float() * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    with torch.no_grad():
        pos[0, 1:] = torch.cat([axis(rows), axis(cols)], dim=1) * scale
        pos[0, 0] = 0.0  # the class token's slot


@torch.no_grad()
def top1(module: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy of a module on (x, y): what the training procedures (image classification) report."""
    module.eval()
    correct = sum(int((module(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum()) for i in range(0, len(y), batch))
    return correct / len(y)


def lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    p = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * p))


def subnet_loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, r: Recipe) -> torch.Tensor:
    t = r.kd_temperature
    kd = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(teacher / t, dim=1), reduction="batchmean")
    return (1.0 - r.kd_weight) * F.cross_entropy(logits, y) + r.kd_weight * t * t * kd


@dataclass(frozen=True)
class Loop:
    steps: int
    stopped_by_time: bool
    seconds: float
    notes: dict[str, Any] = field(default_factory=dict)  # what a procedure reports beside (kept in the meta)
    planned_steps: int = 0

    def then(self, other: Loop) -> Loop:
        """Two phases run one after the other, as one."""
        return Loop(
            self.steps + other.steps,
            self.stopped_by_time or other.stopped_by_time,
            self.seconds + other.seconds,
            {**self.notes, **other.notes},
            self.planned_steps + other.planned_steps,
        )


StepFn = Callable[[torch.Tensor, torch.Tensor], str]  # one batch: computes gradients, returns a progress note


def run_steps(
    module: torch.nn.Module,
    params: Iterable[torch.nn.Parameter],
    step_fn: StepFn,
    splits: Splits,
    recipe: Recipe,
    total_steps: int,
    train_s: float,
    seed: int,
    progress: Progress | None,
    label: str,
    after_step: Callable[[int], None] | None = None,
) -> Loop:
    """The training loop every procedure shares: AdamW on `params`, warmup + cosine over max(step, time)
    fraction, gradient clipping; `step_fn(x, y)` does the forward and backward passes of one batch."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    n_train = len(splits.train)
    module.train()
    step, start = 0, time.monotonic()
    task = ProgressTask(progress, label, total_steps)
    for _epoch in range(math.ceil(total_steps * recipe.batch_size / n_train) + 1):  # bounded by the steps
        if step >= total_steps:
            break
        order = torch.randperm(n_train, generator=gen)
        for i in range(0, n_train, recipe.batch_size):
            elapsed = time.monotonic() - start
            if elapsed >= train_s:
                module.eval()
                task.finish()
                return Loop(step, True, elapsed, planned_steps=total_steps)
            frac = max(step / total_steps, elapsed / train_s)
            for group in opt.param_groups:
                group["lr"] = recipe.lr * lr_factor(frac, recipe.warmup_frac)
            idx = order[i : i + recipe.batch_size]
            x, y = shift(splits.train.x[idx], recipe.max_shift, gen), splits.train.y[idx]
            opt.zero_grad(set_to_none=True)
            note = step_fn(x, y)
            torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
            opt.step()
            step += 1
            if after_step is not None:
                after_step(step)
            task.update(step, f"{label}: {note}")
            if step >= total_steps:
                break
    module.eval()
    return Loop(step, False, time.monotonic() - start, planned_steps=total_steps)
