"""Where the project's data lives. ELASTIC_DEPLOY_ROOT overrides the checkout root (tests use it)."""

from __future__ import annotations

import os
from pathlib import Path


def root() -> Path:
    env = os.environ.get("ELASTIC_DEPLOY_ROOT")
    return Path(env).resolve() if env else Path(__file__).resolve().parent.parent


def targets_dir() -> Path:
    return root() / "targets"


def tables_dir() -> Path:
    return root() / "latency_tables"


def checkpoints_dir() -> Path:
    return root() / "checkpoints"


def dist_dir() -> Path:
    return root() / "dist"


def cache_dir() -> Path:
    env = os.environ.get("ELASTIC_DEPLOY_CACHE")
    return Path(env).resolve() if env else root() / ".cache" / "elastic-deploy"
