"""Models as data: model specs (models/<name>.yaml) and their checkpoints."""

from __future__ import annotations

from deploy.models.spec import ModelSpec, build, known_models, load_spec

__all__ = ["ModelSpec", "build", "known_models", "load_spec"]
