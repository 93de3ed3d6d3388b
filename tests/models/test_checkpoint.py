"""Checkpoints: safetensors round trip, and one CheckpointError per way a checkpoint can be wrong."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from deploy.errors import CheckpointError, UnknownNameError
from deploy.models import checkpoint

TINY = "matformer_vit_tiny"


@pytest.fixture
def saved(tiny, tmp_path):
    """The tiny supernet (random init) saved at tmp_path/tiny.{safetensors,json}."""
    path = checkpoint.save(tiny, tmp_path / "tiny", {"seed": 7, "note": "random init"})
    return tiny, path


def _state(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def test_save_then_load_round_trips_weights_outputs_and_meta(saved):
    net, path = saved
    assert path.name == "tiny.safetensors" and path.with_suffix(".json").is_file()
    loaded, info = checkpoint.load(TINY, path)
    x = net.example_inputs()[0]
    for config in (None, net.smallest(), net.space().decode((1, 0, 3))):
        assert torch.equal(net(x, config), loaded(x, config))
    assert info.path == path and info.sha256 == checkpoint.sha256_file(path)
    assert info.meta == {"seed": 7, "note": "random init"}
    config = json.loads(path.with_suffix(".json").read_text())
    assert config["family"] == "matformer_vit" and config["variant"] == TINY
    assert config["hparams"] == json.loads(json.dumps(net.hparams())) and config["sha256"] == info.sha256


def test_serialize_is_deterministic_for_same_weights(tiny):
    assert checkpoint.serialize(tiny) == checkpoint.serialize(tiny)


def test_load_raises_naming_make_train_when_file_missing(tmp_root):
    with pytest.raises(CheckpointError, match=f"not found; run `make train MODEL={TINY}`"):
        checkpoint.load(TINY)  # default path under the (empty) project root


def test_load_raises_unknown_name_listing_variants_when_variant_unknown(tmp_root):
    with pytest.raises(UnknownNameError, match=r"unknown model 'gpt5'; known: .*matformer_vit_tiny"):
        checkpoint.load("gpt5")


def test_load_refuses_pickle_when_suffix_is_pt(tiny, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"\.safetensors files only \(never pickles\)"):
        checkpoint.load(TINY, path)


def test_load_refuses_pickle_when_renamed_to_safetensors(saved):
    net, path = saved
    torch.save(net.state_dict(), path)  # a pickle under the right name, JSON config still valid
    with pytest.raises(CheckpointError, match=r"not a readable safetensors file.*safetensors only"):
        checkpoint.load(TINY, path)


def test_load_raises_when_json_config_missing(saved):
    _, path = saved
    path.with_suffix(".json").unlink()
    with pytest.raises(CheckpointError, match="checkpoint config missing"):
        checkpoint.load(TINY, path)


def test_load_raises_when_json_config_malformed(saved):
    _, path = saved
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="malformed checkpoint config"):
        checkpoint.load(TINY, path)


def test_load_raises_naming_field_when_json_hparams_differ(saved):
    _, path = saved
    cfg_path = path.with_suffix(".json")
    config = json.loads(cfg_path.read_text())
    config["hparams"]["dim"] = 32
    cfg_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"hparams differ from matformer_vit_tiny: dim=32 \(variant has 16\)"):
        checkpoint.load(TINY, path)


def test_load_raises_when_checkpoint_is_of_another_variant(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="variant is 'matformer_vit_tiny', expected 'matformer_vit_mnist'"):
        checkpoint.load("matformer_vit_mnist", path)


def test_load_raises_naming_tensor_and_shapes_when_shape_mismatch(saved):
    net, path = saved
    state = _state(net)
    state["head.fc.weight"] = torch.zeros(10, 8)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"'head.fc.weight' has shape \(10, 8\), .* expects \(10, 16\)"):
        checkpoint.load(TINY, path)


def test_load_raises_naming_key_when_tensor_missing(saved):
    net, path = saved
    state = _state(net)
    del state["layers.2.fc1.bias"]
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"missing tensors layers\.2\.fc1\.bias"):
        checkpoint.load(TINY, path)


def test_load_raises_naming_key_when_tensor_unexpected(saved):
    net, path = saved
    state = {**_state(net), "extra.weight": torch.zeros(2)}
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected tensors extra\.weight"):
        checkpoint.load(TINY, path)


def test_load_warns_and_reports_actual_sha_when_weights_replaced(saved, caplog):
    net, path = saved
    state = {k: v + 1 for k, v in _state(net).items()}
    save_file(state, str(path))
    loaded, info = checkpoint.load(TINY, path)
    assert info.sha256 == checkpoint.sha256_file(path)
    assert "sha256 differs" in caplog.text
    assert torch.equal(loaded.head.fc.bias, state["head.fc.bias"])
