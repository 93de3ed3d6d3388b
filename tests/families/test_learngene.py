"""Learngene (TLEG): descendants are linear expansions of θ_A and θ_B; a tuned descendant starts from one."""

from __future__ import annotations

import pytest
import torch

from deploy.errors import UnknownNameError
from deploy.families.learngene import LearngeneTuned, expansion
from deploy.models import build, load_spec
from deploy.training.train import tuned_spec


@pytest.fixture(scope="module")
def gene():
    torch.manual_seed(0)
    net = build("learngene_tiny").eval()
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
    spec = load_spec("learngene_mnist_tuned")
    dims = {**spec.dims, "min_depth": 3, "max_depth": 3}
    tuned = LearngeneTuned.from_dims(spec.name, dims, source="learngene_mnist").eval()
    tuned.init_from(source)
    (x,) = source.example_inputs(seed=2)
    with torch.inference_mode():
        torch.testing.assert_close(tuned(x), source(x, source.config(3)))
    assert tuned.space().size() == 1 and tuned.largest() == source.config(3)
    assert tuned.blocks(tuned.largest()) == source.blocks(source.config(3))  # same table entries


def test_depth_flag_writes_the_tuned_spec_into_the_workspace_or_says_which_models_have_one(tmp_root):
    assert tuned_spec("poa_vit_mnist", None).name == "poa_vit_mnist"
    spec = tuned_spec("learngene_mnist", 5)
    assert spec.name == "learngene_mnist_tuned" and spec.dims["max_depth"] == spec.dims["min_depth"] == 5
    assert (tmp_root / "models" / "learngene_mnist_tuned.yaml").exists(), "the workspace's spec overrides the shipped"
    assert build("learngene_mnist_tuned").largest()["depth"] == 5
    with pytest.raises(UnknownNameError, match="learngene_mnist"):
        tuned_spec("poa_vit_mnist", 3)
