"""Registered elastic families and their variants (name -> factory). One line per variant."""

from __future__ import annotations

from collections.abc import Callable

from deploy.families.base import BlockKey, Supernet
from deploy.registry import Registry

VARIANTS: Registry[Callable[[], Supernet]] = Registry(
    "model",
    {
        "elastic_vit_mnist": "deploy.families.elastic_vit:mnist",
        "elastic_vit_tiny": "deploy.families.elastic_vit:tiny",
        "learngene_mnist": "deploy.families.learngene:mnist",
        "learngene_mnist_tuned": "deploy.families.learngene:mnist_tuned",
        "learngene_tiny": "deploy.families.learngene:tiny",
        "matformer_vit_mnist": "deploy.families.matformer_vit:mnist",
        "matformer_vit_tiny": "deploy.families.matformer_vit:tiny",
        "poa_vit_mnist": "deploy.families.poa_vit:mnist",
        "poa_vit_tiny": "deploy.families.poa_vit:tiny",
        "stitchable_mnist": "deploy.families.stitchable:mnist",
        "stitchable_tiny": "deploy.families.stitchable:tiny",
    },
)


def build(variant: str) -> Supernet:
    """An untrained supernet of a registered variant (weights come from `checkpoint.load`)."""
    return VARIANTS.load(variant)()


__all__ = ["VARIANTS", "BlockKey", "Supernet", "build"]
