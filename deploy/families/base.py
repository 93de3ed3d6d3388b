"""What every elastic family provides: a search space, extraction, and the blocks whose latencies add up."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from deploy.search.space import SearchSpace, SubnetConfig


@dataclass(frozen=True, order=True)
class BlockKey:
    """A typed record of one measurable block: its kind and integer shape fields (sorted by name)."""

    kind: str
    shape: tuple[tuple[str, int], ...]

    @classmethod
    def of(cls, kind: str, **shape: int) -> BlockKey:
        return cls(kind, tuple(sorted((k, int(v)) for k, v in shape.items())))

    def __getitem__(self, name: str) -> int:
        return dict(self.shape)[name]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "shape": dict(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BlockKey:
        return cls.of(str(data["kind"]), **{k: int(v) for k, v in data["shape"].items()})

    def __str__(self) -> str:
        return f"{self.kind}(" + ",".join(f"{k}={v}" for k, v in self.shape) + ")"


class Supernet(nn.Module, ABC):
    """An elastic model. `forward(x, config)` runs the supernet at a config; `extract` cuts it out."""

    family: ClassVar[str]

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant

    dims: Any  # the family's frozen dimensions dataclass (with `channels` and `image` for image models)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input batch of size 1 (what deployed artifacts take)."""
        return (1, self.dims.channels, self.dims.image, self.dims.image)

    def hparams(self) -> dict[str, Any]:
        """The variant's dimensions; stored beside a checkpoint and checked when it is loaded."""
        return asdict(self.dims)

    @abstractmethod
    def space(self) -> SearchSpace: ...

    @abstractmethod
    def forward(self, x: torch.Tensor, config: SubnetConfig | None = None) -> torch.Tensor: ...

    @abstractmethod
    def extract(self, config: SubnetConfig) -> nn.Module:
        """A dense module with sliced weights that equals `forward(x, config)`; no supernet code inside."""

    @abstractmethod
    def blocks(self, config: SubnetConfig) -> list[BlockKey]:
        """The blocks whose latencies add up to the subnet's, in execution order."""

    @abstractmethod
    def build_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor]:
        """A standalone module of one block and an example input, for measuring that block alone."""

    @abstractmethod
    def param_count(self, config: SubnetConfig) -> int:
        """Analytic parameter count of the extracted subnet."""

    def set_calibration_images(self, x: torch.Tensor) -> None:
        """Training images for families whose subnets need their own statistics (BatchNorm); others ignore them."""

    def largest(self) -> SubnetConfig:
        space = self.space()
        return space.decode(tuple(len(g.options) - 1 for g in space.genes))

    @abstractmethod
    def smallest(self) -> SubnetConfig: ...

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        return self.space().sample(rng)

    def all_blocks(self) -> list[BlockKey]:
        """Every block shape the space can produce (what a latency table must hold)."""
        found: set[BlockKey] = set()
        for config in self.block_cover():
            found.update(self.blocks(config))
        return sorted(found)

    def block_cover(self) -> list[SubnetConfig]:
        """Configs whose blocks together cover every block the space can produce.

        The default enumerates the space; families with large spaces override this.
        """
        return list(self.space().enumerate())

    def measurable_block(self, key: BlockKey) -> tuple[nn.Module, torch.Tensor]:
        """build_block with seeded weights: the same key always gives the same module (and hub entry)."""
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return self.build_block(key)

    def example_input(self, seed: int = 0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(self.input_shape, generator=gen)
