from __future__ import annotations

import pytest

from deploy.backends import BACKENDS, get_backend
from deploy.errors import UnknownNameError
from deploy.runners import RUNNERS, get_runner
from deploy.targets import RunnerSpec


def test_backend_registry_lists_onnxruntime():
    assert "onnxruntime" in BACKENDS.names()


def test_get_backend_instantiates_every_registered_backend():
    for name in BACKENDS:
        backend = get_backend(name)
        assert backend.name == name and backend.version()


def test_get_backend_unknown_name_lists_known_backends():
    with pytest.raises(UnknownNameError, match=r"unknown backend 'nope'; known: .*onnxruntime"):
        get_backend("nope")


def test_runner_registry_lists_local():
    assert "local" in RUNNERS.names()


def test_get_runner_unknown_kind_lists_known_runners():
    # Every kind the target schema allows may be registered later; test with one that never will be.
    spec = RunnerSpec.model_construct(kind="carrier-pigeon")
    with pytest.raises(UnknownNameError, match=r"unknown runner 'carrier-pigeon'; known: .*local"):
        get_runner(spec)
