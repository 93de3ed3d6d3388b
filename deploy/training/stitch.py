"""SN-Net training of a stitchable model: anchors first, then stitching layers with the anchors frozen.

Kept from the paper: anchors of one family trained beforehand (there, pretrained DeiTs), stitching
layers as linear maps initialised by least squares on activations of training images, then trained.
Changed: the anchors are frozen while the stitches train (the paper fine-tunes anchors and stitches
jointly; the issue asks for frozen anchors, which also leaves each anchor's accuracy as it was), and
the stitches are distilled from the widest anchor's logits as well as the labels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from deploy.families.stitchable import Stitchable, stitch_name
from deploy.progress import Progress
from deploy.tasks.base import Splits
from deploy.training.loop import Loop, init_sincos_positions, run_steps, subnet_loss, top1
from deploy.training.recipes import Recipe

LSTSQ_IMAGES = 256  # x 50 tokens: 12,800 rows for a 32..96 -> 32..96 map


@torch.no_grad()
def init_stitches(net: Stitchable, x: torch.Tensor) -> dict[str, float]:
    """Least-squares fit of every stitch: front anchor's tokens after block p -> back anchor's at block p.

    Returns each stitch's relative residual ||XW - Y|| / ||Y|| (how well a linear map can join them)."""
    net.eval()
    residuals = {}
    for config in net.stitch_configs():
        front, back, position = config["front"], config["back"], config["position"]
        src = net.front_features(x, front, position).flatten(0, 1)  # type: ignore[arg-type]
        dst = net.front_features(x, back, position).flatten(0, 1)  # type: ignore[arg-type]
        design = torch.cat([src, torch.ones(len(src), 1)], dim=1).double()
        solution = torch.linalg.lstsq(design, dst.double()).solution  # (dim_in + 1, dim_out)
        stitch = net.stitches[stitch_name(front, back, position)]  # type: ignore[arg-type]
        stitch.weight.copy_(solution[:-1].T.float())
        stitch.bias.copy_(solution[-1].float())
        residuals[stitch_name(front, back, position)] = float(  # type: ignore[arg-type]
            (design @ solution - dst.double()).norm() / dst.double().norm()
        )
    return residuals


def fit(
    net: Stitchable,
    splits: Splits,
    recipe: Recipe,
    total_steps: int,
    train_s: float,
    seed: int,
    progress: Progress | None,
) -> Loop:
    """Anchors for `total_steps` (recipe.epochs), then the stitches for recipe.stage2_epochs."""
    steps_per_epoch = math.ceil(len(splits.train) / recipe.batch_size)
    stitch_steps = recipe.stage2_epochs * steps_per_epoch
    anchor_s = train_s * total_steps / (total_steps + stitch_steps)
    for anchor in net.anchors:  # each anchor is a ViT of its own: the same position-grid start
        init_sincos_positions(anchor.embed.pos_embed, recipe.pos_init_scale)

    def anchor_step(x: torch.Tensor, y: torch.Tensor) -> str:
        losses = []
        for anchor in net.anchors:
            loss = F.cross_entropy(anchor(x), y)
            loss.backward()
            losses.append(f"{float(loss.detach()):.3f}")
        return "anchors " + "/".join(losses)

    anchors = run_steps(
        net, net.anchors.parameters(), anchor_step, splits, recipe, total_steps, anchor_s, seed, progress, "anchors"
    )
    widths = net.dims.widths
    anchor_acc = {
        f"anchor_{w}": top1(net.extract(net.config(a, a, net.dims.depth)), splits.val.x, splits.val.y)
        for a, w in enumerate(widths)
    }
    gen = torch.Generator().manual_seed(seed)
    images = splits.train.x[torch.randperm(len(splits.train), generator=gen)[:LSTSQ_IMAGES]]
    residuals = init_stitches(net, images)

    for p in net.anchors.parameters():
        p.requires_grad_(False)
    configs, rng = net.stitch_configs(), np.random.default_rng(seed)
    teacher_config = net.largest()

    def stitch_step(x: torch.Tensor, y: torch.Tensor) -> str:
        with torch.no_grad():
            teacher = net(x, teacher_config)
        total = 0.0
        for i in rng.choice(len(configs), size=min(recipe.random_subnets, len(configs)), replace=False):
            loss = subnet_loss(net(x, configs[i]), y, teacher, recipe)
            loss.backward()
            total += float(loss.detach())
        return f"stitches {total / max(recipe.random_subnets, 1):.3f}"

    try:
        stitches = run_steps(
            net,
            net.stitches.parameters(),
            stitch_step,
            splits,
            recipe,
            stitch_steps,
            max(train_s - anchors.seconds, 1.0),
            seed + 1,
            progress,
            "stitches",
        )
    finally:
        for p in net.anchors.parameters():
            p.requires_grad_(True)
    notes = {
        "anchor_steps": anchors.steps,
        "stitch_steps": stitches.steps,
        "anchors_val_accuracy": anchor_acc,
        "stitch_init": "least squares on the tokens of "
        f"{LSTSQ_IMAGES} training images; relative residual median {np.median(list(residuals.values())):.3f}",
        "stitch_lstsq_residual": {k: round(v, 4) for k, v in residuals.items()},
    }
    return Loop(anchors.steps, anchors.stopped_by_time, anchors.seconds, notes, total_steps).then(stitches)
