"""What the backend tests share: the tiny model's subnets exported to the hub once per session, and a target
per backend built from the shipped targets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from deploy import workspace
from deploy.backends import BACKENDS
from deploy.export import hub
from deploy.models import build
from deploy.targets import Target, known_targets, load_target

TINY = "matformer_vit_tiny"


@pytest.fixture(scope="session")
def tiny_supernet():
    torch.manual_seed(0)  # the same weights as tests/conftest.py's `tiny`
    return build(TINY).eval()


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="session")
def tiny_subnet(tiny_supernet):
    """The largest subnet, extracted: every op the family has, what the backend-specific tests look at."""
    return tiny_supernet.extract(tiny_supernet.largest()).eval()


def _export(supernet, module, config, cache) -> hub.HubEntry:
    # with the torch.export program: a superset of what any backend reads (ONNX, or the program)
    return hub.get_or_export(module, supernet.example_inputs()[0], {"subnet": config.id}, cache, with_program=True)


@pytest.fixture(scope="session")
def entry(tiny_supernet, tiny_subnet, hub_cache) -> hub.HubEntry:
    """The hub entry of the largest tiny subnet (ONNX and torch.export program, references)."""
    return _export(tiny_supernet, tiny_subnet, tiny_supernet.largest(), hub_cache)


@pytest.fixture(scope="session")
def smallest_entry(tiny_supernet, hub_cache) -> hub.HubEntry:
    """The hub entry of the smallest tiny subnet: the quickest to convert, for sweeps over every backend."""
    config = tiny_supernet.smallest()
    return _export(tiny_supernet, tiny_supernet.extract(config).eval(), config, hub_cache)


def shipped_targets_by_backend() -> dict[str, str]:
    """For each backend, the shipped image-model target it serves with the fewest threads (then by name)."""
    directory = workspace.shipped_dir("targets")
    targets = [load_target(name, directory) for name in known_targets(directory)]
    chosen: dict[str, str] = {}
    for target in sorted((t for t in targets if t.lm is None), key=lambda t: (t.threads, t.name)):
        chosen.setdefault(target.backend, target.name)
    return chosen


@pytest.fixture(scope="session")
def backend_target() -> Callable[..., Target]:
    """`backend_target(backend, **overrides)`: the shipped target of that backend serving the tiny model, one
    precision (no `precisions`, no other models), with `overrides` applied and validated again;
    `backend_options` given are merged into the shipped ones."""
    chosen = shipped_targets_by_backend()
    directory = workspace.shipped_dir("targets")

    def make(backend: str, **overrides: Any) -> Target:
        if backend not in chosen:
            pytest.fail(
                f"no shipped target uses backend {backend}: add one to targets/ (registered: {BACKENDS.names()})"
            )
        data = load_target(chosen[backend], directory).model_dump()
        options = {**data["backend_options"], **overrides.pop("backend_options", {})}
        data.update(model=TINY, models=None, precisions=None, backend_options=options, **overrides)
        return Target.model_validate(data)

    return make
