"""Explicit lazy registries: name -> "module:attribute", imported on first use.

Adding a backend, family, runner or variant is one line in the registry that owns it. Registries are
loud: a duplicate name raises, an unknown name lists the known ones.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from deploy.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entries: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._entries: dict[str, str] = {}
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: str) -> None:
        if name in self._entries:
            raise DuplicateNameError(
                f"{self.kind} '{name}' is registered twice ({self._entries[name]} and {target}); rename one of them"
            )
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attribute', got {target!r}")
        self._entries[name] = target

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def target(self, name: str) -> str:
        if name not in self._entries:
            raise UnknownNameError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names()) or '(none)'}")
        return self._entries[name]

    def load(self, name: str) -> T:
        module_name, attr = self.target(name).split(":", 1)
        module = importlib.import_module(module_name)
        return getattr(module, attr)
