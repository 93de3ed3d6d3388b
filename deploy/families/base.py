"""What every elastic family provides: a search space, extraction, and the blocks whose latencies add up."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal

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


DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32}


@dataclass(frozen=True)
class InputSpec:
    """One input of a family's models: its name, the shape of one deployed batch (batch 1), its dtype, and
    for integer inputs the range of valid values [0, high) (token ids: the vocabulary size)."""

    name: str
    shape: tuple[int, ...]
    dtype: Literal["float32", "int64", "int32"] = "float32"
    high: int | None = None

    def __post_init__(self) -> None:
        if self.dtype != "float32" and (self.high is None or self.high < 1):
            raise ValueError(f"integer input '{self.name}' needs high (its values lie in [0, high))")

    def example(self, generator: torch.Generator, batch: int | None = None) -> torch.Tensor:
        """A seeded example value (of `batch` rows instead of the deployed 1): N(0, 1) floats, or integers
        drawn from [0, high)."""
        shape = self.shape if batch is None else (batch, *self.shape[1:])
        if self.dtype == "float32":
            return torch.randn(shape, generator=generator)
        assert self.high is not None
        return torch.randint(0, self.high, shape, generator=generator, dtype=DTYPES[self.dtype])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "high": self.high}


class Supernet(nn.Module, ABC):
    """An elastic model. `forward(*inputs, config=…)` runs the supernet at a config; `extract` cuts it out.

    Required: `family`, `dims_type` (the frozen dataclass a model spec's `dims` fill), `inputs`, `space`,
    `forward`, `extract`, `blocks`, `build_block`, `param_count`, `smallest`. Optional, with defaults that
    say "not available": `flops` (complexity-aware sampling needs it), `position_embedding` (training
    starts it at a sin-cos grid), `set_calibration_inputs` (BatchNorm families keep per-subnet statistics).
    """

    family: ClassVar[str]
    dims_type: ClassVar[type]

    def __init__(self, variant: str) -> None:
        super().__init__()
        self.variant = variant

    dims: Any  # an instance of dims_type

    @classmethod
    def from_dims(cls, variant: str, dims: Mapping[str, Any] | None = None, **options: Any) -> Supernet:
        """The family at the dimensions a model spec gives (defaults for those it leaves out)."""
        from pydantic import TypeAdapter, ValidationError

        from deploy.errors import ConfigFileError

        known = [f.name for f in fields(cls.dims_type)]
        unknown = sorted(set(dims or {}) - set(known))
        if unknown:
            raise ConfigFileError(
                f"model {variant}: dims {', '.join(unknown)} are not dimensions of family {cls.family}; "
                f"it takes {', '.join(known)}"
            )
        try:
            value = TypeAdapter(cls.dims_type).validate_python(dict(dims or {}))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or "(dims)"
            raise ConfigFileError(f"model {variant}: dims.{field}: {first.get('msg')}") from None
        return cls(variant, value, **options)

    @abstractmethod
    def inputs(self) -> tuple[InputSpec, ...]:
        """The inputs of the supernet and of every extracted subnet, in `forward`'s order."""

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        gen = torch.Generator().manual_seed(seed)
        return tuple(spec.example(gen) for spec in self.inputs())

    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs())

    def flops(self, config: SubnetConfig) -> float | None:
        """Analytic FLOPs of the extracted subnet, where the family knows them (else None)."""
        return None

    def position_embedding(self) -> nn.Parameter | None:
        """The learned (1, 1 + patches, dim) position embedding, where the family has one (else None)."""
        return None

    def set_calibration_inputs(self, inputs: Mapping[str, torch.Tensor]) -> None:
        """Training inputs for families whose subnets need their own statistics (BatchNorm); others ignore them."""

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



class ImageSupernet(Supernet):
    """A family whose models take one float image batch named "input": dims give `channels` and `image`."""

    def inputs(self) -> tuple[InputSpec, ...]:
        return (InputSpec("input", self.input_shape),)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one image batch of size 1 (what deployed artifacts take)."""
        d = self.dims
        return (1, d.channels, d.image, d.image)
