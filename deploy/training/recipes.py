"""Training recipes, one per variant: the hyper-parameters `make train MODEL=…` uses (data, not code)."""

from __future__ import annotations

from dataclasses import dataclass


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


# Epochs picked so that `train()` (training + final evaluation + accuracy cache) fits in 10 minutes on
# 2 CPU cores; the wall-clock budget is the safety net.
RECIPES: dict[str, Recipe] = {
    "matformer_vit_mnist": Recipe(epochs=12),  # ~29 s an epoch here: ~6 of the 9 minutes
    "matformer_vit_tiny": Recipe(epochs=3, batch_size=64, lr=3e-3),
    # POA: EMA teacher, intact student + one elastic student (random width and depth) per step, both
    # distilled from the teacher. Kept from the paper: EMA teacher of the intact student, one elastic
    # student per step, width and depth sampled uniformly. Changed: labels are in the loss as well
    # (the paper pre-trains without labels; here there is no pre-training stage), logits instead of
    # DINO/iBOT projection heads, and a 0.99 EMA suited to ~1,300 steps.
    "poa_vit_mnist": Recipe(epochs=20, teacher="ema", sandwich_smallest=False, random_subnets=1),  # ~9 min
    "poa_vit_tiny": Recipe(epochs=3, batch_size=64, lr=3e-3, teacher="ema", sandwich_smallest=False, random_subnets=1),
    # ElasticViT: sandwich (largest on labels; smallest and two complexity-aware random subnets distilled
    # in place from the largest). ~35 s an epoch here: 12.5 of the 15 minutes allowed for the whole run.
    "elastic_vit_mnist": Recipe(epochs=15, sampling="complexity", max_minutes=14.0),
    "elastic_vit_tiny": Recipe(epochs=3, batch_size=64, lr=3e-3, sampling="complexity"),
    # SN-Net: 3 anchors trained on their own (epochs), least-squares stitch init, then 4 random stitches
    # per step trained with the anchors frozen (stage2_epochs), distilled from the widest anchor. With 3
    # stitch epochs in 9 minutes the stitches stayed 10-20 pp below both of their anchors.
    "stitchable_mnist": Recipe(epochs=10, procedure="stitch", stage2_epochs=6, random_subnets=4, max_minutes=14.0),
    "stitchable_tiny": Recipe(epochs=2, batch_size=64, lr=3e-3, procedure="stitch", stage2_epochs=1),
    # TLEG: a wider teacher (stage2_epochs) trains first; the depth-6 auxiliary model made of the
    # learngene is then distilled from it (epochs). Descendants of depth 1..12 are read off, untrained.
    # The teacher needs its epochs: cut to 4 by the clock it reached 53.6% val, and the learngene 87%.
    "learngene_mnist": Recipe(epochs=15, procedure="learngene", stage2_epochs=8, max_minutes=12.0),
    "learngene_tiny": Recipe(epochs=2, batch_size=64, lr=3e-3, procedure="learngene", stage2_epochs=1),
    # One descendant fine-tuned on the labels alone (`make train MODEL=learngene_mnist DEPTH=L`).
    "learngene_mnist_tuned": Recipe(epochs=10, lr=5e-4, warmup_frac=0.0, procedure="finetune", max_minutes=5.0),
}
DEFAULT_RECIPE = Recipe(epochs=5)
