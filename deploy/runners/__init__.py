"""Registered runners (name -> class, built from a target's RunnerSpec). One line per runner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deploy.registry import Registry

if TYPE_CHECKING:
    from deploy.runners.base import Runner
    from deploy.targets import RunnerSpec

RUNNERS: Registry[type[Runner]] = Registry(
    "runner",
    {
        "local": "deploy.runners.local:LocalRunner",
        "ssh": "deploy.runners.ssh:SshRunner",
        "adb": "deploy.runners.adb:AdbRunner",
    },
)


def get_runner(spec: RunnerSpec) -> Runner:
    """The runner for spec.kind, given the spec (hosts, serials, ...); UnknownNameError lists known ones."""
    return RUNNERS.load(spec.kind)(spec)


__all__ = ["RUNNERS", "get_runner"]
