"""SubnetConfig (what identifies a subnet) and SearchSpace (what can be chosen).

A space is a fixed list of genes, each with a finite tuple of options, plus a validity rule; a family
maps a gene vector to a SubnetConfig and back. Search, mutation and crossover work on gene vectors, so
the selector needs nothing family-specific.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Value = int | str | tuple[int, ...]
Genes = tuple[int, ...]  # one option index per gene

# Above this many raw combinations the space is not enumerated to count or list it.
ENUMERATION_LIMIT = 2_000_000


def _freeze(value: Any) -> Value:
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"subnet choice values are ints, strings or int tuples, got {value!r}")
    return value


@dataclass(frozen=True)
class SubnetConfig:
    """Per-layer choices of one subnet: frozen, JSON round-trip, stable short id."""

    family: str
    choices: tuple[tuple[str, Value], ...]

    @classmethod
    def make(cls, family: str, choices: Mapping[str, Any]) -> SubnetConfig:
        return cls(family, tuple(sorted((str(k), _freeze(v)) for k, v in choices.items())))

    def __getitem__(self, name: str) -> Value:
        for key, value in self.choices:
            if key == name:
                return value
        raise KeyError(f"subnet config of {self.family} has no choice '{name}'")

    def as_dict(self) -> dict[str, Value]:
        return dict(self.choices)

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "choices": {k: list(v) if isinstance(v, tuple) else v for k, v in self.choices},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SubnetConfig:
        return cls.make(str(data["family"]), data["choices"])

    def canonical(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:12]

    def __str__(self) -> str:
        body = " ".join(f"{k}={list(v) if isinstance(v, tuple) else v}" for k, v in self.choices)
        return f"{self.family}[{body}]"


@dataclass(frozen=True)
class Gene:
    name: str
    options: tuple[Any, ...]


@dataclass(frozen=True)
class SearchSpace:
    """Genes and the family's mapping between gene vectors and configs."""

    family: str
    genes: tuple[Gene, ...]
    decode: Callable[[Genes], SubnetConfig] = field(compare=False)
    encode: Callable[[SubnetConfig], Genes] = field(compare=False)
    is_valid: Callable[[Genes], bool] = field(compare=False, default=lambda g: True)
    # Distinct configs, for spaces whose gene vectors repeat configs (genes past a depth are ignored).
    distinct: Callable[[], int] | None = field(compare=False, default=None)

    def raw_size(self) -> int:
        return int(np.prod([len(g.options) for g in self.genes], dtype=object))

    def size(self) -> int:
        """Number of valid configs (exact up to ENUMERATION_LIMIT raw combinations, else an upper bound)."""
        if self.distinct is not None:
            return self.distinct()
        if self.raw_size() > ENUMERATION_LIMIT:
            return self.raw_size()
        return sum(1 for _ in self._valid_genes())

    def _valid_genes(self) -> Iterator[Genes]:
        for genes in itertools.product(*(range(len(g.options)) for g in self.genes)):
            if self.is_valid(genes):
                yield genes

    def enumerate(self) -> Iterator[SubnetConfig]:
        if self.raw_size() > ENUMERATION_LIMIT:
            raise ValueError(f"{self.family} space has {self.raw_size()} raw configs; too many to list")
        for genes in self._valid_genes():
            yield self.decode(genes)

    def sample_genes(self, rng: np.random.Generator, max_tries: int = 1000) -> Genes:
        for _ in range(max_tries):
            genes = tuple(int(rng.integers(len(g.options))) for g in self.genes)
            if self.is_valid(genes):
                return genes
        raise ValueError(f"could not sample a valid {self.family} config in {max_tries} tries")

    def sample(self, rng: np.random.Generator) -> SubnetConfig:
        return self.decode(self.sample_genes(rng))

    def mutate(self, genes: Genes, rng: np.random.Generator, prob: float, max_tries: int = 100) -> Genes:
        for _ in range(max_tries):
            child = tuple(
                int(rng.integers(len(g.options))) if rng.random() < prob else v
                for g, v in zip(self.genes, genes, strict=True)
            )
            if self.is_valid(child):
                return child
        return genes

    def crossover(self, a: Genes, b: Genes, rng: np.random.Generator, max_tries: int = 100) -> Genes:
        for _ in range(max_tries):
            child = tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b, strict=True))
            if self.is_valid(child):
                return child
        return a

    def features(self, config: SubnetConfig) -> np.ndarray:
        """One-hot encoding of the gene vector: what fitted accuracy predictors learn from."""
        genes = self.encode(config)
        parts = []
        for gene, value in zip(self.genes, genes, strict=True):
            onehot = np.zeros(len(gene.options))
            onehot[value] = 1.0
            parts.append(onehot)
        return np.concatenate(parts)
