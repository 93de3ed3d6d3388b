"""Training of an elastic language model (recipe procedure "lm"): MatFormer's sandwich on next-token prediction.

Each step trains the full model on the next tokens, then the smallest slice and random Mix'n'Match slices
on the next tokens and on the full model's detached distribution (KL distillation), exactly the image
sandwich (deploy/training/train.py `_step`) on logits flattened to one row per position.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deploy.families.base import Supernet
from deploy.progress import Progress
from deploy.search.space import SubnetConfig
from deploy.tasks.base import Splits
from deploy.training.loop import Loop, run_steps
from deploy.training.recipes import Recipe
from deploy.training.sampling import make_sampler

log = logging.getLogger(__name__)

LOG_EVERY = 100  # steps between val perplexity lines in the log
LOG_VAL_WINDOWS = 16  # of the val split, for those lines (the full split is evaluated at the end)


class PerPosition:
    """A supernet whose (B, T, V) logits are seen as (B·T, V) rows: what the classification losses take."""

    def __init__(self, net: Supernet) -> None:
        self.net = net

    def __call__(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor:
        logits = self.net(x, config)
        return logits.reshape(-1, logits.shape[-1])


@torch.no_grad()
def perplexity(net: Supernet, x: torch.Tensor, y: torch.Tensor, config: SubnetConfig | None = None) -> float:
    was = net.training
    net.eval()
    logits = net(x, config)
    net.train(was)
    return math.exp(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))))


def fit_lm(
    net: Supernet,
    splits: Splits,
    recipe: Recipe,
    total_steps: int,
    train_s: float,
    seed: int,
    progress: Progress | None,
) -> Loop:
    from deploy.training.train import _step  # the sandwich step (train.py registers this procedure)

    rng = np.random.default_rng(seed)
    smallest = net.smallest()
    sample = make_sampler(recipe.sampling, net, rng)
    flat = PerPosition(net)
    val_x, val_y = splits.val.x[:LOG_VAL_WINDOWS], splits.val.y[:LOG_VAL_WINDOWS]
    last = [0.0, 0.0]
    notes: dict[str, Any] = {
        "objective": "next-token cross-entropy; subnets also distilled from the full model",
        "amp": recipe.amp,
    }

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> str:
        subnets = [smallest] if recipe.sandwich_smallest else []
        subnets += [sample() for _ in range(recipe.random_subnets)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.amp == "bf16"):
            last[:] = _step(flat, x, y.reshape(-1), subnets, recipe)  # type: ignore[arg-type]
        return f"loss {last[0]:.3f}/{last[1]:.3f}"

    def after_step(step: int) -> None:
        if step % LOG_EVERY == 0 or step == total_steps:
            log.info(
                "step %d: loss full %.3f subnets %.3f; val perplexity full %.2f smallest %.2f",
                step,
                last[0],
                last[1],
                perplexity(net, val_x, val_y),
                perplexity(net, val_x, val_y, smallest),
            )

    loop = run_steps(
        net, net.parameters(), step_fn, splits, recipe, total_steps, train_s, seed, progress, f"train {net.variant}",
        after_step,
    )  # fmt: skip
    return Loop(loop.steps, loop.stopped_by_time, loop.seconds, notes, loop.planned_steps)
