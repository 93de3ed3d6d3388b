"""Explicit lazy registries: name -> "module:attribute", imported on first use, open to other packages.

The built-in entries are one line each in the registry that owns them. A user's package adds its own
through a Python entry point in the registry's group (e.g. `elastic_deploy.families`), and anywhere a
name is accepted a `package.module:Attribute` reference works too. Registries are loud: a duplicate
name raises, an unknown name lists the known ones, and an entry point that fails to import names the
distribution that declared it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any, Generic, TypeVar

from deploy.errors import DuplicateNameError, PluginError, UnknownNameError

log = logging.getLogger(__name__)

T = TypeVar("T")


def load_reference(reference: str, what: str) -> Any:
    """The attribute a `package.module:Attribute` reference names; PluginError saying what is wrong."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{what} '{reference}' is neither a registered name nor 'package.module:Attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise PluginError(
            f"{what} '{reference}': module '{module_name}' cannot be imported ({exc}); install the package "
            "that provides it or fix the reference"
        ) from None
    except Exception as exc:  # user code failing at import time
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise PluginError(
            f"{what} '{reference}': importing '{module_name}' raised {type(exc).__name__}: {first}; fix that module"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"{what} '{reference}': module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    """Built-in entries plus those of the entry-point `group` (read once, on first use)."""

    def __init__(self, kind: str, entries: Mapping[str, str] | None = None, group: str | None = None) -> None:
        self.kind = kind
        self.group = group
        self._entries: dict[str, str] = {}
        self._origin: dict[str, str] = {}
        self._plugins_read = group is None
        for name, target in (entries or {}).items():
            self.register(name, target)

    def register(self, name: str, target: str, origin: str = "elastic-deploy") -> None:
        if name in self._entries:
            raise DuplicateNameError(
                f"{self.kind} '{name}' is registered twice ({self._entries[name]} by {self._origin[name]}, and "
                f"{target} by {origin}); rename one of them"
            )
        if ":" not in target:
            raise ValueError(f"registry target must be 'module:attribute', got {target!r}")
        self._entries[name] = target
        self._origin[name] = origin

    def _read_plugins(self) -> None:
        if self._plugins_read:
            return
        self._plugins_read = True
        for ep in sorted(metadata.entry_points(group=self.group), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "an installed package"
            self.register(ep.name, ep.value, origin=f"{dist} (entry point {self.group})")

    def names(self) -> list[str]:
        self._read_plugins()
        return sorted(self._entries)

    def origin(self, name: str) -> str:
        self._read_plugins()
        return self._origin.get(name, "a module:attribute reference")

    def __contains__(self, name: object) -> bool:
        self._read_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def target(self, name: str) -> str:
        self._read_plugins()
        if name not in self._entries:
            if ":" in name:  # a reference, not a name
                return name
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'; known: {', '.join(self.names()) or '(none)'}"
                + (f" (or a 'package.module:Class' reference; plugins register in {self.group})" if self.group else "")
            )
        return self._entries[name]

    def load(self, name: str) -> T:
        target = self.target(name)
        try:
            return load_reference(target, self.kind)
        except PluginError as exc:
            if name in self._entries and self._origin[name] != "elastic-deploy":
                raise PluginError(f"{exc} (registered by {self._origin[name]})") from None
            raise
