"""What a task is: where the data comes from and how a model is scored.

A task gives named splits (train, val, test) whose inputs are keyed by the names a family's inputs
declare, a metric with its direction (top-1 higher is better; loss or perplexity lower is better),
representative samples for int8 calibration, and the facts a manifest records about the data. MNIST
is one task (deploy/tasks/mnist.py); a user's task is a subclass in their own package, registered in
the `elastic_deploy.tasks` entry-point group or named as `package.module:Class` in a model spec.

Scoring is one loop for every task: the model is run on batches of a split and `batch_score` turns
each batch's outputs into (sum, weight), which `finalize` turns into the metric (top-1: correct
predictions / examples; perplexity: exp(summed NLL / tokens)).
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from deploy.errors import DeployError, PluginError

SPLITS = ("train", "val", "test")
Predict = Callable[[Mapping[str, torch.Tensor]], torch.Tensor]  # a batch of named inputs -> outputs


@dataclass(frozen=True)
class Metric:
    """A task's score: its name, which way is better, and how it is shown."""

    name: str  # e.g. "top1", "perplexity"
    direction: Literal["higher", "lower"]
    percent: bool = False  # shown ×100 with '%', differences in percentage points (pp)
    bounded: bool = False  # lies in [0, 1] (the surrogate then fits its logit)

    @property
    def sign(self) -> float:
        """+1 where higher is better, −1 where lower is: sign · value is always 'larger is better'."""
        return 1.0 if self.direction == "higher" else -1.0

    def better(self, a: float, b: float) -> bool:
        return self.sign * a > self.sign * b

    def loss(self, reference: float, value: float) -> float:
        """How much worse `value` is than `reference`, in display units (pp for a percentage); <0: better."""
        scale = 100.0 if self.percent else 1.0
        return self.sign * (reference - value) * scale

    def format(self, value: float) -> str:
        return f"{value:.2%}" if self.percent else f"{value:.4g}"

    @property
    def unit(self) -> str:
        return "pp" if self.percent else self.name

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "direction": self.direction, "percent": self.percent}


TOP1 = Metric("top1", "higher", percent=True, bounded=True)


@dataclass(frozen=True)
class Split:
    """One split: each input's examples (N × …, keyed by input name) and the targets (N × …)."""

    name: str
    inputs: Mapping[str, torch.Tensor]
    targets: torch.Tensor
    _digest: list[str] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        sizes = {k: int(v.shape[0]) for k, v in self.inputs.items()} | {"targets": int(self.targets.shape[0])}
        if len(set(sizes.values())) != 1:
            raise PluginError(f"split {self.name} has inputs and targets of different lengths: {sizes}")

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def batch(self, start: int, stop: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {k: v[start:stop] for k, v in self.inputs.items()}, self.targets[start:stop]

    @property
    def x(self) -> torch.Tensor:
        """The only input of a single-input split (image tasks; training code reads it)."""
        if len(self.inputs) != 1:
            raise PluginError(f"split {self.name} has inputs {sorted(self.inputs)}; name the one to use")
        return next(iter(self.inputs.values()))

    @property
    def y(self) -> torch.Tensor:
        return self.targets

    def fingerprint(self) -> str:
        """Short sha256 of the inputs' bytes (by name) then the targets': a cached evaluation is reused only on
        the very same data (for one input, the digest accuracy caches have always recorded)."""
        if not self._digest:
            h = hashlib.sha256()
            for tensor in [*(v for _, v in sorted(self.inputs.items())), self.targets]:
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._digest.append(h.hexdigest()[:16])
        return self._digest[0]


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    seed: int

    def get(self, name: str) -> Split:
        if name not in SPLITS:
            raise DeployError(f"unknown split '{name}'; use one of {', '.join(SPLITS)}")
        return getattr(self, name)


class Task(ABC):
    """Subclass and set `name`, `metric`, `input_names`; implement `load_split` and `batch_score`."""

    name: ClassVar[str]
    metric: ClassVar[Metric]
    input_names: ClassVar[tuple[str, ...]]  # the inputs it feeds, by the names the family declares
    eval_batch: ClassVar[int] = 250

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)
        self._splits: dict[str, Split] = {}

    @abstractmethod
    def load_split(self, name: str) -> Split:
        """The split `name` (train, val or test), deterministic for `self.seed`."""

    @abstractmethod
    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        """(sum, weight) of one batch: correct predictions and examples, or summed NLL and tokens."""

    def finalize(self, total: float, weight: float) -> float:
        return total / max(weight, 1e-12)

    def facts(self) -> dict[str, Any]:
        """What a manifest records about the data beyond name, seed and sizes (source, preprocessing)."""
        return {}

    def extra_metrics(self, predict: Predict, split: str) -> dict[str, float]:
        """Figures reported beside the metric (a language model's next-token accuracy); none by default."""
        return {}

    def checkpoint_files(self, stem: Path) -> dict[str, Any]:
        """Write what a model trained on this task keeps beside its checkpoint `<stem>.safetensors` (a
        tokenizer); returns what the checkpoint's config records about those files. Nothing by default."""
        return {}

    # --- provided -----------------------------------------------------------------------------------

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise DeployError(f"unknown split '{name}' of task {self.name}; use one of {', '.join(SPLITS)}")
        if name not in self._splits:
            self._splits[name] = self.load_split(name)
        return self._splits[name]

    def splits(self) -> Splits:
        return Splits(self.split("train"), self.split("val"), self.split("test"), self.seed)

    def evaluate(self, predict: Predict, split: str | Split, batch_size: int | None = None) -> float:
        """The metric of `predict` on a split: its outputs scored batch by batch, then finalized."""
        data = self.split(split) if isinstance(split, str) else split
        size = batch_size or self.eval_batch
        total = weight = 0.0
        with torch.inference_mode():
            for start in range(0, len(data), size):
                inputs, targets = data.batch(start, start + size)
                s, w = self.batch_score(predict(inputs), targets)
                total, weight = total + float(s), weight + float(w)
        value = self.finalize(total, weight)
        if not isinstance(value, int | float | np.floating) or not math.isfinite(float(value)):
            raise PluginError(
                f"task {self.name} scored {value!r} on {data.name}; its metric must be a finite number: fix "
                f"{type(self).__name__}.batch_score/finalize"
            )
        return float(value)

    def calibration_samples(self, n: int) -> list[dict[str, np.ndarray]]:
        """Up to n batch-1 examples from the training split (int8 calibration, representative datasets)."""
        data = self.split("train")
        return [{k: v[i : i + 1].numpy() for k, v in data.inputs.items()} for i in range(min(n, len(data)))]

    def calibration_array(self, n: int) -> np.ndarray | None:
        """The first n training examples of a single-input task as one N × … array (what backends' int8
        calibration takes); None for several inputs (backends then calibrate on their reference inputs)."""
        data = self.split("train")
        if len(data.inputs) != 1:
            return None
        return data.x[:n].numpy()

    def describe(self) -> dict[str, Any]:
        sizes = {s: len(self.split(s)) for s in SPLITS}
        return {
            "task": self.name,
            "metric": self.metric.to_json(),
            "seed": self.seed,
            "splits": sizes,
            "data_sha256": {s: self.split(s).fingerprint() for s in ("val", "test")},
            **self.facts(),
        }


class ArrayTask(Task):
    """Top-1 classification on splits held in memory (tests, notebooks): not for model specs, which name a
    task class that loads its own data."""

    name = "arrays"
    metric = TOP1
    input_names = ("input",)

    def __init__(self, splits: Mapping[str, Split], seed: int = 0) -> None:
        super().__init__(seed)
        self._given = dict(splits)

    def load_split(self, name: str) -> Split:
        if name not in self._given:
            raise DeployError(f"this in-memory task has splits {sorted(self._given)}, not '{name}'")
        return self._given[name]

    def batch_score(self, outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
        return top1_batch_score(outputs, targets)

    @classmethod
    def of(cls, x: torch.Tensor, y: torch.Tensor, split: str = "val") -> ArrayTask:
        """One split of images `x` and labels `y` (the other splits: the same data)."""
        return cls({name: Split(name, {"input": x}, y) for name in SPLITS})


def predictor(model: Callable[..., torch.Tensor], input_names: Sequence[str], **kwargs: Any) -> Predict:
    """A Predict that calls `model(*inputs in `input_names` order, **kwargs)` (a supernet: config=…)."""
    names = tuple(input_names)

    def predict(inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        missing = [n for n in names if n not in inputs]
        if missing:
            raise PluginError(
                f"the task gives inputs {sorted(inputs)} but the model takes {list(names)}: "
                "name the task's inputs as the family declares them"
            )
        out = model(*(inputs[n] for n in names), **kwargs)
        return out[0] if isinstance(out, tuple | list) else out

    return predict


def top1_batch_score(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """Correct argmax predictions and examples: the score of a classification task."""
    return float((outputs.argmax(dim=-1) == targets).sum()), float(targets.shape[0])
