"""The wheel holds every package of the code (a new folder under deploy/ must be listed in pyproject.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_package_under_deploy_is_listed_for_the_wheel():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "deploy").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def test_shipped_data_folders_are_mapped_into_the_wheel():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for kind in ("targets", "models", "latency_tables", "checkpoints"):
        assert tool["package-dir"][f"deploy.shipped.{kind}"] == kind and (REPO / kind).is_dir()
