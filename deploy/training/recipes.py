"""Training recipes: the hyper-parameters `make train MODEL=…` uses, read from the model spec's `training:`."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from deploy.errors import ConfigFileError


@dataclass(frozen=True)
class Recipe:
    epochs: int
    batch_size: int = 32  # more small steps beat fewer large ones in a run this short
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    kd_temperature: float = 1.5
    kd_weight: float = 0.5  # subnet loss = (1 - w) * CE + w * T^2 * KL(full || subnet)
    random_subnets: int = 2
    max_shift: int = 0  # random translation by up to this many pixels (slows short runs down: off)
    grad_clip: float = 1.0
    pos_init_scale: float = 1.0  # 2-D sin-cos position embedding at init (0: keep the model's own)
    # "inplace": the full model's own logits teach the subnets (MatFormer's sandwich). "ema": an EMA
    # copy of the full model teaches the intact student and the elastic ones alike (POA).
    teacher: str = "inplace"
    ema_decay: float = 0.99
    sandwich_smallest: bool = True  # train the smallest subnet every step (MatFormer), or not (POA)
    sampling: str = "uniform"  # the random subnets: "uniform" over the space, or "complexity" (ElasticViT)
    max_minutes: float = 9.0  # the whole call (training, final evaluation, accuracy cache) by wall clock
    # How the variant is trained (deploy.training.train.PROCEDURES): "supernet" (the sandwich loop above), "stitch"
    # (SN-Net: anchors, then stitches), "learngene" (TLEG: teacher, then the auxiliary model), "finetune".
    procedure: str = "supernet"
    stage2_epochs: int = 0  # stitch: epochs of the stitching layers; learngene: epochs of the teacher
    # "bf16": forward and backward under CPU bf16 autocast (weights and optimizer stay fp32): faster than fp32
    # on a CPU with bf16 units (docs/families.md#training-notes), emulated and slower without. "none": fp32.
    amp: str = "none"


DEFAULT_RECIPE = Recipe(epochs=5)


def recipe_for(training: dict[str, Any] | None) -> Recipe:
    """The recipe a model spec's `training:` section gives (DEFAULT_RECIPE where it gives none)."""
    if not training:
        return DEFAULT_RECIPE
    try:
        recipe = Recipe(**training)
    except TypeError as exc:
        known = ", ".join(f.name for f in fields(Recipe))
        raise ConfigFileError(f"training: {exc}; a recipe takes {known}") from None
    if recipe.amp not in ("none", "bf16"):
        raise ConfigFileError(f"training: amp is {recipe.amp!r}; use none or bf16")
    return recipe
