"""Registered elastic families (name -> class). One line per family; a user's family registers through the
`elastic_deploy.families` entry-point group, or a model spec names it as `package.module:Class`.

Models (a family at given dimensions, with weights and a task) are data: models/<name>.yaml (deploy/models).
"""

from __future__ import annotations

from deploy.families.base import BlockKey, ImageSupernet, InputSpec, Supernet
from deploy.registry import Registry

FAMILIES: Registry[type[Supernet]] = Registry(
    "family",
    {
        "elastic_vit": "deploy.families.elastic_vit:ElasticViT",
        "learngene": "deploy.families.learngene:Learngene",
        "learngene_tuned": "deploy.families.learngene:LearngeneTuned",
        "matformer_lm": "deploy.families.matformer_lm:MatFormerLM",
        "matformer_vit": "deploy.families.matformer_vit:MatFormerViT",
        "poa_vit": "deploy.families.poa_vit:PoaViT",
        "stitchable": "deploy.families.stitchable:Stitchable",
    },
    group="elastic_deploy.families",
)

__all__ = ["FAMILIES", "BlockKey", "ImageSupernet", "InputSpec", "Supernet"]
