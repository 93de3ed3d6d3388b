"""TLEG training of a learngene, and the fine-tune of one of its descendants.

Kept from the paper: the learngene (θ_A, θ_B per block) is trained once through an auxiliary model of
fixed depth whose layers are its linear expansion, with soft distillation from a larger teacher; the
descendants of other depths are then read off without training. Changed: the teacher is a wider ViT
trained here for a few epochs (the paper uses a pretrained LeViT on ImageNet), the auxiliary model is
6 layers deep (the paper: 12), and the labels are in the loss beside the teacher's logits.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from deploy.families.learngene import Learngene, LearngeneTuned
from deploy.families.matformer_vit import Block, Head, PatchEmbed, ViT
from deploy.models import checkpoint
from deploy.progress import Progress
from deploy.tasks.base import Splits
from deploy.training.loop import Loop, init_sincos_positions, run_steps, subnet_loss, top1
from deploy.training.recipes import Recipe

TEACHER_WIDTH_FACTOR = 1.5  # the teacher is this much wider than the learngene (64 -> 96), same depth


def make_teacher(net: Learngene) -> ViT:
    d = net.dims
    heads = round(d.heads * TEACHER_WIDTH_FACTOR)
    width = heads * (d.dim // d.heads)
    return ViT(
        PatchEmbed(d.channels, d.image, d.patch, width),
        [Block(width, heads, d.mlp_ratio * width) for _ in range(d.aux_depth)],
        Head(width, d.classes),
    )


def _ce_step(module: torch.nn.Module):
    def step(x: torch.Tensor, y: torch.Tensor) -> str:
        loss = F.cross_entropy(module(x), y)
        loss.backward()
        return f"loss {float(loss.detach()):.3f}"

    return step


def fit(
    net: Learngene,
    splits: Splits,
    recipe: Recipe,
    total_steps: int,
    train_s: float,
    seed: int,
    progress: Progress | None,
) -> Loop:
    """The teacher for recipe.stage2_epochs, then the auxiliary model for `total_steps` (recipe.epochs)."""
    teacher = make_teacher(net)
    init_sincos_positions(teacher.embed.pos_embed, recipe.pos_init_scale)  # as the learngene's own embedding starts
    teacher_steps = recipe.stage2_epochs * math.ceil(len(splits.train) / recipe.batch_size)
    teacher_s = train_s * teacher_steps / (teacher_steps + total_steps)
    first = run_steps(
        teacher,
        teacher.parameters(),
        _ce_step(teacher),
        splits,
        recipe,
        teacher_steps,
        teacher_s,
        seed,
        progress,
        "teacher",
    )
    teacher.eval()
    aux = net.config(net.dims.aux_depth)

    def aux_step(x: torch.Tensor, y: torch.Tensor) -> str:
        with torch.no_grad():
            soft = teacher(x)
        loss = subnet_loss(net(x, aux), y, soft, recipe)
        loss.backward()
        return f"aux loss {float(loss.detach()):.3f}"

    second = run_steps(
        net,
        net.parameters(),
        aux_step,
        splits,
        recipe,
        total_steps,
        max(train_s - first.seconds, 1.0),
        seed + 1,
        progress,
        f"learngene (aux depth {net.dims.aux_depth})",
    )
    notes = {
        "teacher": f"ViT width {teacher.embed.proj.out_channels}, depth {net.dims.aux_depth}, "
        f"{sum(p.numel() for p in teacher.parameters())} parameters, trained {first.steps} steps on the labels",
        "teacher_val_accuracy": top1(teacher, splits.val.x, splits.val.y),
        "auxiliary_depth": net.dims.aux_depth,
    }
    return Loop(first.steps, first.stopped_by_time, first.seconds, notes, teacher_steps).then(second)


def finetune(
    net: LearngeneTuned,
    splits: Splits,
    recipe: Recipe,
    total_steps: int,
    train_s: float,
    seed: int,
    progress: Progress | None,
) -> Loop:
    """Start from the shipped learngene's descendant of this depth, then train every layer on the labels."""
    source, info = checkpoint.load(net.source)
    net.init_from(source)  # type: ignore[arg-type]
    before = top1(net.net, splits.val.x, splits.val.y)
    loop = run_steps(
        net,
        net.parameters(),
        _ce_step(net.net),
        splits,
        recipe,
        total_steps,
        train_s,
        seed,
        progress,
        f"fine-tune depth {net.dims.max_depth}",
    )
    notes = {
        "source": f"{net.source} ({info.path.name}, sha256 {info.sha256[:12]})",
        "depth": net.dims.max_depth,
        "val_accuracy_before_finetune": before,
    }
    return Loop(loop.steps, loop.stopped_by_time, loop.seconds, notes, loop.planned_steps)
