"""Registered executors (name -> class). Ray is imported only by its own module, when it is asked for."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from deploy.registry import Registry

if TYPE_CHECKING:
    from deploy.executors.base import Executor

EXECUTORS: Registry[type[Executor]] = Registry(
    "executor",
    {
        "local": "deploy.executors.local:LocalExecutor",
        "ray": "deploy.executors.ray_cluster:RayExecutor",
    },
)


def get_executor(name: str = "local", address: str | None = None) -> Executor:
    """The executor `name` (UnknownNameError lists the known ones); `address` is a Ray cluster's."""
    return EXECUTORS.load(name)(address)


@contextlib.contextmanager
def open_executor(name: str = "local", address: str | None = None) -> Iterator[Executor]:
    """get_executor, closed (actors and a cluster it started itself released) when the block ends."""
    executor = get_executor(name, address)
    try:
        yield executor
    finally:
        executor.close()


__all__ = ["EXECUTORS", "get_executor", "open_executor"]
