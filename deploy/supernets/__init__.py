"""Registered elastic families and their variants (name -> factory). One line per variant."""

from __future__ import annotations

from collections.abc import Callable

from deploy.registry import Registry
from deploy.supernets.base import BlockKey, Supernet

VARIANTS: Registry[Callable[[], Supernet]] = Registry(
    "model",
    {
        "elastic_vit_mnist": "deploy.supernets.elastic_vit:mnist",
        "elastic_vit_tiny": "deploy.supernets.elastic_vit:tiny",
        "learngene_mnist": "deploy.supernets.learngene:mnist",
        "learngene_mnist_tuned": "deploy.supernets.learngene:mnist_tuned",
        "learngene_tiny": "deploy.supernets.learngene:tiny",
        "matformer_vit_mnist": "deploy.supernets.matformer_vit:mnist",
        "matformer_vit_tiny": "deploy.supernets.matformer_vit:tiny",
        "poa_vit_mnist": "deploy.supernets.poa_vit:mnist",
        "poa_vit_tiny": "deploy.supernets.poa_vit:tiny",
        "stitchable_mnist": "deploy.supernets.stitchable:mnist",
        "stitchable_tiny": "deploy.supernets.stitchable:tiny",
    },
)


def build(variant: str) -> Supernet:
    """An untrained supernet of a registered variant (weights come from `checkpoint.load`)."""
    return VARIANTS.load(variant)()


__all__ = ["VARIANTS", "BlockKey", "Supernet", "build"]
