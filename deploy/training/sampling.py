"""Which subnets a training step trains: uniform over the space, or ElasticViT's complexity-aware schedule.

Uniform sampling of a large hybrid space lands mostly on mid-sized subnets, and two adjacent steps may
train a 5 MFLOPs and a 40 MFLOPs subnet whose gradients fight over the shared weights. ElasticViT's
complexity-aware sampling keeps the subnets of adjacent steps within a bounded FLOPs difference while the
schedule sweeps the whole FLOPs range. Here a target walks a ladder of `levels` FLOPs levels (log-spaced
between the smallest and the largest subnet) up and down, one rung per step, and each step picks, among
`candidates` configs drawn with a bias toward small or large options, the one nearest the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deploy.families.base import Supernet
from deploy.search.space import Genes, SearchSpace, SubnetConfig

SAMPLERS = ("uniform", "complexity")


class UniformSampler:
    def __init__(self, net: Supernet, rng: np.random.Generator) -> None:
        self.net, self.rng = net, rng

    def __call__(self) -> SubnetConfig:
        return self.net.sample(self.rng)


@dataclass(frozen=True)
class Pick:
    config: SubnetConfig
    flops: int
    target_flops: float


class ComplexitySampler:
    """Configs whose FLOPs follow a triangle sweep over the space's FLOPs range (bounded step to step)."""

    def __init__(
        self,
        space: SearchSpace,
        flops: Callable[[SubnetConfig], int],
        rng: np.random.Generator,
        *,
        levels: int = 16,
        candidates: int = 24,
        bias: float = 4.0,
    ) -> None:
        if levels < 2 or candidates < 1:
            raise ValueError("need >= 2 levels and >= 1 candidate")
        self.space, self.flops, self.rng = space, flops, rng
        self.candidates, self.bias = candidates, bias
        low = flops(space.decode((0,) * len(space.genes)))
        high = flops(space.decode(tuple(len(g.options) - 1 for g in space.genes)))
        self.targets = np.geomspace(low, high, levels)
        self._step = 0

    @property
    def level_ratio(self) -> float:
        """FLOPs ratio between adjacent rungs: the bound on the target's change from one step to the next."""
        return float(self.targets[1] / self.targets[0])

    def level(self, step: int) -> int:
        """Triangle wave 0, 1, …, levels−1, levels−2, …, 1, 0, 1, …"""
        n = len(self.targets) - 1
        phase = step % (2 * n)
        return phase if phase <= n else 2 * n - phase

    def _draw(self, t: float) -> Genes | None:
        # Each gene leans toward its small (t=0) or large (t=1) options; t=0.5 is uniform.
        genes = []
        for gene in self.space.genes:
            k = len(gene.options)
            logits = self.bias * (2 * t - 1) * np.arange(k) / max(1, k - 1)
            p = np.exp(logits - logits.max())
            genes.append(int(self.rng.choice(k, p=p / p.sum())))
        out = tuple(genes)
        return out if self.space.is_valid(out) else None

    def pick(self) -> Pick:
        lvl = self.level(self._step)
        self._step += 1
        target = float(self.targets[lvl])
        t = lvl / (len(self.targets) - 1)
        best: tuple[float, SubnetConfig, int] | None = None
        for _ in range(self.candidates):  # bounded: the nearest of a fixed number of draws
            genes = self._draw(t)
            if genes is None:
                continue
            config = self.space.decode(genes)
            f = self.flops(config)
            gap = abs(np.log(f / target))
            if best is None or gap < best[0]:
                best = (gap, config, f)
        if best is None:  # every draw invalid (a constrained space): fall back to a uniform valid one
            config = self.space.sample(self.rng)
            return Pick(config, self.flops(config), target)
        return Pick(best[1], best[2], target)

    def __call__(self) -> SubnetConfig:
        return self.pick().config


def make_sampler(name: str, net: Supernet, rng: np.random.Generator) -> Callable[[], SubnetConfig]:
    """The training loop's subnet source; `complexity` needs the family's analytic `flops(config)`."""
    if name == "uniform":
        return UniformSampler(net, rng)
    if name == "complexity":
        if net.flops(net.smallest()) is None:
            raise ValueError(f"{net.variant} has no flops(config); complexity-aware sampling needs one")
        return ComplexitySampler(net.space(), net.flops, rng)  # type: ignore[arg-type]
    raise ValueError(f"unknown sampler '{name}'; known: {', '.join(SAMPLERS)}")
