"""Learngene (TLEG): descendants are linear expansions of θ_A and θ_B; a tuned descendant starts from one."""

from __future__ import annotations

import json

import pytest
import torch

from deploy.errors import UnknownNameError
from deploy.families import build
from deploy.families.learngene import expansion, mnist_tuned, tiny, tuned_depth
from deploy.training.train import tuned_variant


@pytest.fixture(scope="module")
def gene():
    torch.manual_seed(0)
    net = tiny().eval()
    with torch.no_grad():  # θ_B as large as θ_A, so the layers of a descendant differ visibly
        for p in net.gene_b.parameters():
            p.normal_()
    return net


def test_expansion_runs_from_theta_a_to_theta_a_plus_theta_b():
    assert expansion(1) == [0.0]
    assert expansion(2) == [0.0, 1.0]
    assert expansion(5) == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("depth", [1, 3, 5])
def test_extracted_layer_l_holds_theta_a_plus_its_fraction_of_theta_b(gene, depth):
    dense = gene.extract(gene.config(depth))
    a, b = dict(gene.gene_a.named_parameters()), dict(gene.gene_b.named_parameters())
    assert len(dense.blocks) == depth
    for layer, coef in zip(dense.blocks, expansion(depth), strict=True):
        for name, value in layer.state_dict().items():
            torch.testing.assert_close(value, a[name] + coef * b[name])


def test_depth_outside_the_space_is_rejected_with_the_range(gene):
    with pytest.raises(ValueError, match=r"depth must be an int in \[1, 5\]"):
        gene.config(6)


def test_tuned_descendant_starts_equal_to_the_learngenes_descendant():
    torch.manual_seed(0)
    source = build("learngene_mnist").eval()
    tuned = mnist_tuned(depth=3).eval()
    tuned.init_from(source)
    x = source.example_input(seed=2)
    with torch.inference_mode():
        torch.testing.assert_close(tuned(x), source(x, source.config(3)))
    assert tuned.space().size() == 1 and tuned.largest() == source.config(3)
    assert tuned.blocks(tuned.largest()) == source.blocks(source.config(3))  # same table entries


def test_depth_flag_names_the_tuned_variant_or_says_which_models_have_one():
    assert tuned_variant("learngene_mnist", 5) == ("learngene_mnist_tuned", {"depth": 5})
    assert tuned_variant("poa_vit_mnist", None) == ("poa_vit_mnist", {})
    with pytest.raises(UnknownNameError, match="learngene_mnist"):
        tuned_variant("poa_vit_mnist", 3)


def test_tuned_depth_is_read_from_the_checkpoint_config(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_DEPLOY_ROOT", str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "learngene_mnist_tuned.json").write_text(json.dumps({"hparams": {"max_depth": 7}}))
    assert tuned_depth("learngene_mnist_tuned") == 7
    assert mnist_tuned().largest()["depth"] == 7
