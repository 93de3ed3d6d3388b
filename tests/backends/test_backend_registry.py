from __future__ import annotations

import pytest

from deploy.backends import BACKENDS, get_backend
from deploy.errors import UnknownNameError
from deploy.runners import RUNNERS, get_runner
from deploy.runners.specs import RunnerSpecBase


def test_backend_registry_lists_onnxruntime():
    assert "onnxruntime" in BACKENDS.names()


@pytest.mark.parametrize("name", BACKENDS.names())
def test_get_backend_instantiates_every_registered_backend_even_without_its_toolchain(name):
    # Construction, version() and runs_here() never import an optional toolchain that is missing.
    backend = get_backend(name)
    assert backend.name == name and isinstance(backend.version(), str) and backend.version()
    reason = backend.runs_here()
    assert reason is None or (isinstance(reason, str) and reason)
    assert backend.precisions and set(backend.precisions) <= {"fp32", "fp16", "int8", "int8_dynamic"}
    assert isinstance(backend.needs_program, bool)


def test_get_backend_unknown_name_lists_known_backends():
    with pytest.raises(UnknownNameError, match=r"unknown backend 'nope'; known: .*onnxruntime"):
        get_backend("nope")


def test_runner_registry_lists_local():
    assert "local" in RUNNERS.names()


def test_get_runner_unknown_kind_lists_known_runners():
    # Every kind the target schema allows may be registered later; test with one that never will be.
    spec = RunnerSpecBase.model_construct(kind="carrier-pigeon")
    with pytest.raises(UnknownNameError, match=r"unknown runner 'carrier-pigeon'; known: .*local"):
        get_runner(spec)
