"""Registered runners (name -> class, built from its spec in the target). One line per runner; a user's
runner registers through the `elastic_deploy.runners` entry-point group."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deploy.registry import Registry

if TYPE_CHECKING:
    from deploy.runners.base import Runner
    from deploy.runners.specs import RunnerSpecBase

RUNNERS: Registry[type[Runner]] = Registry(
    "runner",
    {
        "local": "deploy.runners.local:LocalRunner",
        "ssh": "deploy.runners.ssh:SshRunner",
        "adb": "deploy.runners.adb:AdbRunner",
    },
    group="elastic_deploy.runners",
)


def get_runner(spec: RunnerSpecBase) -> Runner:
    """The runner for spec.kind, given the spec (hosts, serials, ...); UnknownNameError lists known ones."""
    return RUNNERS.load(spec.kind)(spec)


__all__ = ["RUNNERS", "get_runner"]
