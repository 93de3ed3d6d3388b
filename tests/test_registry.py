from __future__ import annotations

import pytest

from deploy.errors import DuplicateNameError, UnknownNameError
from deploy.registry import Registry


def test_registry_raises_on_duplicate_name():
    reg = Registry("thing", {"a": "json:dumps"})
    with pytest.raises(DuplicateNameError, match="'a' is registered twice"):
        reg.register("a", "json:loads")


def test_registry_unknown_name_lists_known_ones():
    reg = Registry("thing", {"a": "json:dumps", "b": "json:loads"})
    with pytest.raises(UnknownNameError, match="unknown thing 'c'; known: a, b"):
        reg.load("c")


def test_registry_loads_lazily_by_module_path():
    import json

    assert Registry("thing", {"dumps": "json:dumps"}).load("dumps") is json.dumps
