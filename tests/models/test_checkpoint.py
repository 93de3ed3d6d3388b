"""Checkpoints: safetensors round trip, and one CheckpointError per way a checkpoint can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from deploy.errors import CheckpointError, UnknownNameError
from deploy.models import checkpoint

TINY = "matformer_vit_tiny"
SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"


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


def _edit_sidecar(path, edit) -> None:
    cfg_path = path.with_suffix(".json")
    config = json.loads(cfg_path.read_text())
    edit(config)
    cfg_path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda c: c["meta"].update(data_seed="abc"), "meta.data_seed"),
        (lambda c: c["meta"].update(data_seed="0"), "meta.data_seed"),  # strict: a string is not a seed
        (lambda c: c["meta"].update(data_seed=-1), "meta.data_seed"),
        (lambda c: c["meta"].update(task=3), "meta.task"),
        (lambda c: c["meta"].update(accuracy_cache={"samples": "30", "seed": 0}), "meta.accuracy_cache.samples"),
        (lambda c: c["meta"].update(tokenizer={"file": "../x.json", "sha256": "0", "vocab": 256}),
         "meta.tokenizer.file"),
        (lambda c: c.update(meta=["not", "an", "object"]), "meta"),
        (lambda c: c.update(hparams=None), "hparams"),
        (lambda c: c.update(format=2), "format"),
        (lambda c: c.update(extra="field"), "extra"),
    ],
    ids=["data_seed_text", "data_seed_string_number", "data_seed_negative", "task_number", "samples_text",
         "tokenizer_path", "meta_list", "hparams_null", "format_2", "unknown_field"],
)  # fmt: skip
def test_load_raises_one_line_naming_file_and_field_when_sidecar_field_malformed(saved, edit, field):
    _, path = saved
    _edit_sidecar(path, edit)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(TINY, path)
    message = str(info.value)
    assert message.startswith(f"{path.with_suffix('.json')}: field '{field}'") and "\n" not in message, message
    assert f"make train MODEL={TINY}" in message


def test_load_keeps_free_form_meta_when_sidecar_typed_fields_valid(saved):
    _, path = saved
    _edit_sidecar(path, lambda c: c["meta"].update(data_seed=0, notes={"anything": [1, "two"]}))
    _, info = checkpoint.load(TINY, path)
    assert info.meta["notes"] == {"anything": [1, "two"]} and info.data_seed == 0


def test_every_shipped_checkpoint_sidecar_validates():
    shipped = sorted(SHIPPED.glob("*.safetensors"))
    assert shipped
    for weights in shipped:
        checkpoint.CheckpointConfig.model_validate(json.loads(weights.with_suffix(".json").read_text()))


def test_cli_exits_2_with_one_line_when_sidecar_data_seed_malformed(tmp_root, capsys):
    from deploy.cli import main

    ckpt = tmp_root / "checkpoints"
    ckpt.mkdir()
    for suffix in (".safetensors", ".json", ".accuracy.json"):
        (ckpt / f"matformer_vit_mnist{suffix}").write_bytes((SHIPPED / f"matformer_vit_mnist{suffix}").read_bytes())
    _edit_sidecar(ckpt / "matformer_vit_mnist.safetensors", lambda c: c["meta"].update(data_seed="abc"))
    with pytest.raises(SystemExit) as exit_info:
        main(["accuracy", "--model", "matformer_vit_mnist", "--samples", "1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "field 'meta.data_seed'" in lines[0], err
