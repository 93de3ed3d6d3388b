"""Training of a model (its spec's family, dims, task and recipe) here on the CPU, then its checkpoint and
accuracy cache. The one entry point is `elastic-deploy train` (`make train MODEL=…`).

The recipe's procedure (PROCEDURES) says how: "supernet" trains nested subnets jointly (MatFormer's
sandwich; POA's EMA teacher; ElasticViT's sampling): the full model on the labels, and the smallest
subnet plus random subnets on the labels and on the full model's detached logits (KL distillation).
SN-Net stitches (deploy/training/stitch.py) and TLEG learngenes (deploy/training/learngene.py) have their
own. Every loop shares deploy/training/loop.py: warmup + cosine over `max(step fraction, time fraction)`,
so a run that hits its wall-clock budget still anneals to zero.

The procedures train image classifiers (the shipped families on MNIST); a task whose data is not a
single image input needs a procedure of its own, registered in PROCEDURES.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from deploy import workspace
from deploy.accuracy.model import MIN_SAMPLES, build_accuracy_model, uniform_configs
from deploy.accuracy.oracle import EvalOracle, accuracy_cache_path, evaluate
from deploy.accuracy.surrogate import PredictorQuality
from deploy.errors import UnknownNameError
from deploy.families import Supernet
from deploy.io import atomic_write_text
from deploy.models import checkpoint
from deploy.models.spec import ModelSpec, build_from_spec, known_models, load_spec
from deploy.progress import Progress
from deploy.registry import Registry
from deploy.search.space import SubnetConfig
from deploy.tasks import get_task
from deploy.tasks.base import TOP1, Metric, Splits, Task, predictor
from deploy.training.loop import Loop, init_sincos_positions, run_steps, subnet_loss, top1, torch_threads
from deploy.training.recipes import Recipe, recipe_for
from deploy.training.sampling import make_sampler

log = logging.getLogger(__name__)

THREADS = 2
# Expected final-phase cost in full-model val evaluations: the named configs on val and test, and the
# cache's random configs, each a fraction of a full model (docs/families.md#training-notes).
FINAL_EVALS = 12
SAMPLE_EVAL_COST = 0.35
LOG_EVERY_EPOCHS = 2  # val accuracy in the log (a full-model eval is a small fraction of an epoch)


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
    metric: Metric = TOP1


    def __str__(self) -> str:
        return self.summary()

    def summary(self) -> str:
        rows = [f"{self.variant}: {self.steps} steps ({self.epochs:.2f} epochs) in {self.wall_s / 60:.1f} min"]
        fmt = self.metric.format
        rows += [f"  {name:<14} val {fmt(self.val[name]):>8}  test {fmt(self.test[name]):>8}" for name in self.val]
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


def tuned_spec(model: str, depth: int | None) -> ModelSpec:
    """`make train MODEL=m DEPTH=L`: the spec that fine-tunes m's depth-L descendant (written into the
    workspace's models/ when L differs from the one in force), else m's own spec."""
    if depth is None:
        return load_spec(model)
    tuned = f"{model}_tuned"
    if tuned not in known_models():
        have = ", ".join(v.removesuffix("_tuned") for v in known_models() if v.endswith("_tuned"))
        raise UnknownNameError(f"DEPTH fine-tunes one descendant of a learngene model; {model} has none (try: {have})")
    spec = load_spec(tuned)
    if spec.dims.get("min_depth") == depth == spec.dims.get("max_depth"):
        return spec
    spec = spec.model_copy(update={"dims": {**spec.dims, "min_depth": depth, "max_depth": depth}})
    build_from_spec(spec)  # an out-of-range depth is refused before anything is written
    path = workspace.models_dir() / f"{tuned}.yaml"
    atomic_write_text(path, yaml.safe_dump(spec.model_dump(mode="json", exclude={"path"}), sort_keys=False))
    log.info("wrote %s: %s at depth %d", path, tuned, depth)
    return load_spec(tuned)


def initial_supernet(spec: ModelSpec, recipe: Recipe, splits: Splits) -> Supernet:
    """The untrained supernet as training starts it (call after seeding torch)."""
    net = build_from_spec(spec)
    init_sincos_positions(net.position_embedding(), recipe.pos_init_scale)
    net.set_calibration_inputs(splits.train.inputs)  # BatchNorm families recalibrate each subnet on these
    return net


def fit(net: Supernet, splits: Splits, recipe: Recipe, *, seed: int = 0, max_minutes: float = 60.0) -> int:
    """Train `net` for the recipe's epochs (no checkpoint, no final evaluation); returns the steps run.

    For benchmarks that compare recipes at one training budget; `train()` is the full job.
    """
    steps = recipe.epochs * math.ceil(len(splits.train) / recipe.batch_size)
    with torch_threads(THREADS):
        procedure = PROCEDURES.load(recipe.procedure)
        return procedure(net, splits, recipe, steps, max_minutes * 60.0, seed, False).steps


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
        full_loss = subnet_loss(logits, y, teacher, r)
    full_loss.backward()
    sub_total = 0.0
    for config in subnets:
        loss = subnet_loss(net(x, config), y, teacher, r)
        loss.backward()
        sub_total += float(loss.detach())
    return float(full_loss.detach()), sub_total / max(1, len(subnets))


def _time_eval(net: Supernet, task: Task) -> float:
    """Seconds for one full-model val evaluation (best of two: the first pays for allocations)."""
    times = []
    for _ in range(2):
        start = time.monotonic()
        evaluate(net, task, "val", net.largest())
        times.append(time.monotonic() - start)
    return min(times)


def _evaluate_named(
    net: Supernet, oracle: EvalOracle, named: dict[str, SubnetConfig]
) -> tuple[dict[str, float], dict[str, float]]:
    val = dict(zip(named, oracle.evaluate_many(named.values()), strict=True))
    by_id = {c.id: c for c in named.values()}  # "full" is also a uniform config: evaluate it once
    test_by_id = {i: evaluate(net, oracle.task, "test", c) for i, c in by_id.items()}
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


def fit_supernet(
    net: Supernet,
    splits: Splits,
    recipe: Recipe,
    total_steps: int,
    train_s: float,
    seed: int,
    progress: Progress | None,
) -> Loop:
    """The sandwich training loop (MatFormer, POA, ElasticViT); the schedule anneals by `max(step, time)`."""
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(splits.train) / recipe.batch_size)
    smallest = net.smallest()
    sample = make_sampler(recipe.sampling, net, rng)
    ema = _ema_copy(net) if recipe.teacher == "ema" else None
    last: list[float] = [0.0, 0.0]

    def step_fn(x: torch.Tensor, y: torch.Tensor) -> str:
        subnets = [smallest] if recipe.sandwich_smallest else []
        subnets += [sample() for _ in range(recipe.random_subnets)]
        last[:] = _step(net, x, y, subnets, recipe, ema)
        return f"loss {last[0]:.3f}/{last[1]:.3f}"

    def after_step(step: int) -> None:
        if ema is not None:
            _ema_update(ema, net, recipe.ema_decay)
        if step % (LOG_EVERY_EPOCHS * steps_per_epoch) == 0 or step == total_steps:
            log.info(
                "step %d (epoch %.2f): loss full %.3f subnets %.3f; val full %.2f%% smallest %.2f%%",
                step,
                step / steps_per_epoch,
                last[0],
                last[1],
                100 * top1(net.extract(net.largest()), splits.val.x, splits.val.y),
                100 * top1(net.extract(smallest), splits.val.x, splits.val.y),
            )
            net.train()

    return run_steps(
        net,
        net.parameters(),
        step_fn,
        splits,
        recipe,
        total_steps,
        train_s,
        seed,
        progress,
        f"train {net.variant}",
        after_step,
    )


# How a variant is trained (Recipe.procedure): name -> "module:function" with _fit's signature.
PROCEDURES: Registry[Callable[..., Loop]] = Registry(
    "training procedure",
    {
        "supernet": "deploy.training.train:fit_supernet",
        "stitch": "deploy.training.stitch:fit",
        "learngene": "deploy.training.learngene:fit",
        "finetune": "deploy.training.learngene:finetune",
        "lm": "deploy.training.lm:fit_lm",
    },
)


def train(
    variant: str,
    out_stem: Path | None = None,
    seed: int = 0,
    epochs: int | None = None,
    max_minutes: float | None = None,
    progress: Progress | None = None,
    max_steps: int | None = None,
    cache_samples: int | None = None,
    data_seed: int | None = None,
    threads: int = THREADS,
    recipe: Recipe | None = None,
    depth: int | None = None,
) -> TrainResult:
    """Train `variant`, save `<out_stem>.safetensors/.json/.accuracy.json` (default checkpoints/<variant>).

    `max_minutes` (default: the recipe's) bounds the whole call, final evaluation and accuracy cache
    included; the checkpoint is the last one (the cosine schedule ends at zero learning rate), not the
    best by val accuracy. `recipe` replaces the variant's registered one (benchmarks compare recipes).
    `depth` fine-tunes the learngene `variant`'s descendant of that depth as `<variant>_tuned`.
    """
    # Where the run writes is checked first: a read-only workspace fails now, not after the whole run.
    stem_dir = Path(out_stem).parent if out_stem is not None else workspace.checkpoints_dir()
    workspace.check_writable(stem_dir, "checkpoints")
    workspace.check_writable(workspace.cache_dir(), "cache")
    spec = tuned_spec(variant, depth)
    recipe = recipe or recipe_for(spec.training)
    if epochs is not None:
        recipe = dataclasses.replace(recipe, epochs=epochs)
    minutes = recipe.max_minutes if max_minutes is None else max_minutes
    data_seed = spec.task.seed if data_seed is None else data_seed
    with torch_threads(threads):
        return _train(spec, out_stem, seed, recipe, minutes, progress, max_steps, cache_samples, data_seed)


# Over ~80 lines: the time budget threads through training, the final evaluation and the accuracy cache.
def _train(
    spec: ModelSpec,
    out_stem: Path | None,
    seed: int,
    recipe: Recipe,
    max_minutes: float,
    progress: Progress | None,
    max_steps: int | None,
    cache_samples: int | None,
    data_seed: int,
) -> TrainResult:
    t0 = time.monotonic()
    torch.manual_seed(seed)
    variant = spec.name
    stem = Path(out_stem) if out_stem is not None else workspace.checkpoints_dir() / variant
    task = get_task(spec.task.name, data_seed, spec.task.options)
    splits = task.splits()
    net = initial_supernet(spec, recipe, splits)
    steps_per_epoch = math.ceil(len(splits.train) / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    if max_steps is not None:
        total_steps = min(total_steps, max_steps)

    # Budget the loop so that the final phase fits in what is left of max_minutes. Capped: on a loaded
    # machine training keeps most of its time and the accuracy cache shrinks instead.
    budget_s = max_minutes * 60.0
    eval_s = _time_eval(net, task)
    # a 12-depth learngene has no 200 configs to sample
    cache_samples = min(cache_samples or spec.accuracy_samples, net.space().size())
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
    procedure = PROCEDURES.load(recipe.procedure)
    loop = procedure(net, splits, recipe, total_steps, max(train_s, 0.0), seed, progress)
    if loop.stopped_by_time:
        log.warning(
            "stopped training %s by wall clock after %d of %d steps (max_minutes=%.1f); the schedule "
            "annealed on time, so the model is complete but trained for fewer steps",
            variant,
            loop.steps,
            loop.planned_steps,
            max_minutes,
        )

    # Final accuracies: val through the oracle (its cache file keeps them), test directly.
    sha = hashlib.sha256(checkpoint.serialize(net)).hexdigest()
    weights = checkpoint.weights_path(stem)
    cache = accuracy_cache_path(weights)
    oracle = EvalOracle(net, task, "val", cache, sha)
    named = named_configs(net)
    start = time.monotonic()
    val, test = _evaluate_named(net, oracle, named)
    left_s = budget_s - (time.monotonic() - t0)
    samples = min(cache_samples, _affordable_samples(net, named, time.monotonic() - start, left_s))
    if samples < cache_samples:
        log.warning("accuracy cache of %s reduced to %d sampled configs to fit max_minutes", variant, samples)

    extra = {
        name: task.extra_metrics(predictor(net, net.input_names(), config=c), "val") for name, c in named.items()
    }
    meta: dict[str, Any] = {
        "recipe": dataclasses.asdict(recipe),
        "seed": seed,
        "task": spec.task.name,
        "data_seed": data_seed,
        "data": task.facts(),
        "steps": loop.steps,
        "epochs": round(loop.steps / steps_per_epoch, 3),
        "stopped_by_time": loop.stopped_by_time,
        "train_seconds": round(loop.seconds, 1),
        **({"procedure": loop.notes} if loop.notes else {}),
        "checkpoint_choice": "last",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "accuracy": {"val": val, "test": test},
        **({"extra_metrics": {"val": extra}} if any(extra.values()) else {}),
        **task.checkpoint_files(stem),
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
        metric=task.metric,
    )
    log.info("%s", result.summary())
    return result
