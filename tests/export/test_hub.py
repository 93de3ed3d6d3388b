from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from deploy.errors import UnsupportedOpError
from deploy.export import hub
from deploy.models import build


@pytest.fixture(scope="module")
def subnet():
    torch.manual_seed(0)
    supernet = build("matformer_vit_tiny").eval()
    rng = np.random.default_rng(0)
    config = supernet.sample(rng)
    identity = {"subnet": config.id, "checkpoint": "random0"}
    return supernet.extract(config), supernet.example_inputs()[0], identity, config


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def entry(subnet, cache):
    module, example, identity, _ = subnet
    return hub.get_or_export(module, example, identity, cache_dir=cache)


def test_get_or_export_writes_entry_files(entry, cache):
    assert entry.dir == cache / "hub" / entry.key
    names = sorted(p.name for p in entry.dir.iterdir())
    assert names == ["entry.json", "model.onnx", "program.pt2", "references.npz"]
    assert not entry.reused
    assert entry.input_names == ("input",) and entry.output_names == ("logits",)
    assert entry.meta["opset"] == 17 and entry.meta["versions"]["torch"] == torch.__version__
    assert entry.meta["op_counts"]["LayerNormalization"] >= 3


def test_hub_onnx_passes_full_check_and_is_single_file(entry):
    onnx.checker.check_model(str(entry.onnx_path), full_check=True)
    model = onnx.load(str(entry.onnx_path), load_external_data=False)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in model.graph.initializer)
    assert model.opset_import[0].version == 17


def test_references_equal_torch_output(entry, subnet):
    module, example, _, _ = subnet
    with torch.inference_mode():
        expected = module(example).numpy()
    np.testing.assert_array_equal(entry.reference_inputs()["input"], example.numpy())
    np.testing.assert_array_equal(entry.reference_outputs()["logits"], expected)


def test_program_reloads_and_matches_references(entry):
    program = entry.load_program()
    out = program.module()(torch.from_numpy(entry.reference_inputs()["input"]))
    np.testing.assert_allclose(out.detach().numpy(), entry.reference_outputs()["logits"], atol=1e-6)


def test_get_or_export_reuses_entry_with_same_key(entry, subnet, cache):
    module, example, identity, _ = subnet
    again = hub.get_or_export(module, example, identity, cache_dir=cache)
    assert again.reused and again.key == entry.key
    assert again.key == hub.hub_key(again.meta["identity"])


def test_hub_key_differs_when_identity_differs():
    assert hub.hub_key({"subnet": "a", "checkpoint": "x"}) != hub.hub_key({"subnet": "b", "checkpoint": "x"})
    assert hub.hub_key({"block": "vit_block(dim=16)"}) == hub.hub_key({"block": "vit_block(dim=16)"})


def test_get_or_export_reexports_when_weights_differ(subnet, cache, entry):
    _, example, identity, config = subnet
    torch.manual_seed(1)
    other = build("matformer_vit_tiny").eval().extract(config)  # same identity, other weights
    fresh = hub.get_or_export(other, example, identity, cache_dir=cache, with_program=False)
    assert fresh.key != entry.key and not fresh.reused and fresh.program_path is None


def test_get_or_export_rebuilds_entry_when_files_are_missing(tmp_path):
    module, example = nn.Linear(4, 3).eval(), torch.randn(1, 4)
    first = hub.get_or_export(module, example, {"block": "linear"}, cache_dir=tmp_path, with_program=False)
    first.onnx_path.unlink()
    second = hub.get_or_export(module, example, {"block": "linear"}, cache_dir=tmp_path, with_program=False)
    assert not second.reused and second.onnx_path.is_file() and second.output_names == ("output",)
    assert [p.name for p in (tmp_path / "hub").iterdir()] == [first.key]  # no temp or trash left


def test_get_or_export_raises_unsupported_op_naming_the_op(tmp_path):
    class Svd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.linalg.svdvals(x)

    with pytest.raises(UnsupportedOpError, match="svd"):
        hub.get_or_export(Svd(), torch.randn(1, 4, 4), {"block": "svd"}, tmp_path, with_program=False)
    assert [p.name for p in (tmp_path / "hub").iterdir()] == []


def test_commit_keeps_existing_complete_entry_when_racing(entry, tmp_path):
    # A second process that finishes the same key later must neither fail nor touch the winner's files.
    loser = tmp_path / "loser"
    loser.mkdir()
    (loser / "model.onnx").write_bytes(b"not a model")
    before = entry.onnx_path.read_bytes()
    hub._commit(loser, entry.dir)
    assert entry.onnx_path.read_bytes() == before
    assert hub.HubEntry.load(entry.dir).is_complete()


@pytest.mark.parametrize("damaged", ["model.onnx", "references.npz"])
def test_damaged_entry_is_detected_by_its_checksum_and_exported_again(tmp_path, damaged):
    torch.manual_seed(0)
    module, example = nn.Linear(8, 4).eval(), torch.randn(1, 8)
    first = hub.get_or_export(module, example, {"model": "linear"}, cache_dir=tmp_path)
    (first.dir / damaged).write_bytes(b"garbage")
    again = hub.get_or_export(module, example, {"model": "linear"}, cache_dir=tmp_path)
    assert again.key == first.key and not again.reused
    onnx.checker.check_model(str(again.onnx_path), full_check=True)
    assert np.allclose(again.reference_outputs()["output"], module(example).detach().numpy())
