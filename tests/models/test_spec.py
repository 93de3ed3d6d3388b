"""Model specs as data: every shipped model is a spec, and every bad spec is one named error that says what to fix."""

from __future__ import annotations

import pytest
import torch
import yaml

from deploy.errors import CheckpointError, ConfigFileError, PluginError, UnknownNameError, WorkspaceError
from deploy.models import build, known_models, load_spec
from deploy.models.checkpoint import load
from deploy.tasks import get_task

GOOD = {
    "name": "m1",
    "family": "matformer_vit",
    "dims": {"patch": 7, "dim": 16, "depth": 3, "heads": 2, "ffn_max": 64},
    "task": {"name": "mnist"},
}


def write(root, **changes) -> None:
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "m1.yaml").write_text(yaml.safe_dump({**GOOD, **changes}))


def test_every_shipped_model_is_a_spec_that_builds():
    names = known_models()
    assert {"matformer_vit_mnist", "poa_vit_mnist", "learngene_mnist_tuned", "deit_tiny_probe"} <= set(names)
    for name in names:
        spec = load_spec(name)
        net = build(name)
        assert spec.name == name == net.variant and net.space().size() >= 1


def test_workspace_spec_overrides_the_shipped_one_of_the_same_name(tmp_root):
    (tmp_root / "models").mkdir()
    (tmp_root / "models" / "matformer_vit_tiny.yaml").write_text(
        yaml.safe_dump({**GOOD, "name": "matformer_vit_tiny", "dims": {**GOOD["dims"], "depth": 2}})
    )
    assert build("matformer_vit_tiny").dims.depth == 2


@pytest.mark.parametrize(
    ("changes", "error", "needle"),
    [
        ({"family": "nowhere.pkg:Fam"}, PluginError, "module 'nowhere.pkg' cannot be imported"),
        ({"family": "deploy.families.matformer_vit:Nope"}, PluginError, "has no attribute 'Nope'"),
        ({"family": "deploy.families.matformer_vit:Block"}, PluginError, "not a subclass"),
        ({"family": "vit9000"}, UnknownNameError, "unknown family 'vit9000'; known: elastic_vit"),
        ({"dims": {"width": 3}}, ConfigFileError, "dims width are not dimensions of family matformer_vit"),
        ({"dims": {"depth": "deep"}}, ConfigFileError, "dims.depth"),
        ({"unknown": 1}, ConfigFileError, "field 'unknown'"),
        ({"name": "m2"}, ConfigFileError, "'name' is 'm2' but the file is m1.yaml"),
    ],
)
def test_bad_spec_is_a_named_one_line_error(tmp_root, changes, error, needle):
    write(tmp_root, **changes)
    with pytest.raises(error, match=None) as info:
        build("m1")
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_family_missing_a_protocol_method_names_the_methods(tmp_root, monkeypatch):
    import types

    from deploy.families.base import ImageSupernet

    module = types.ModuleType("half_family")

    class HalfFamily(ImageSupernet):  # no space, extract, blocks, …
        family = "half"
        dims_type = dict

    module.HalfFamily = HalfFamily  # type: ignore[attr-defined]
    monkeypatch.setitem(__import__("sys").modules, "half_family", module)
    write(tmp_root, family="half_family:HalfFamily")
    with pytest.raises(PluginError, match=r"does not implement .*extract.*space"):
        build("m1")


def test_checkpoint_whose_tensors_do_not_fit_the_spec_names_the_tensor(tmp_root, ship_files):
    ship_files("checkpoints/matformer_vit_mnist.safetensors", "checkpoints/matformer_vit_mnist.json")
    spec = yaml.safe_load(open(load_spec("matformer_vit_mnist").path).read())  # noqa: SIM115
    spec["dims"] = {"dim": 64, "heads": 4, "ffn_max": 1024, "depth": 5}
    (tmp_root / "models").mkdir()
    (tmp_root / "models" / "matformer_vit_mnist.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CheckpointError, match="hparams differ"):
        load("matformer_vit_mnist")


def test_checkpoint_trained_on_another_task_or_seed_is_refused(tmp_root, ship_files):
    ship_files("checkpoints/matformer_vit_mnist.safetensors", "checkpoints/matformer_vit_mnist.json")
    spec = yaml.safe_load(open(load_spec("matformer_vit_mnist").path).read())  # noqa: SIM115
    (tmp_root / "models").mkdir()
    spec["task"] = {"name": "mnist", "seed": 3}
    (tmp_root / "models" / "matformer_vit_mnist.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(CheckpointError, match=r"data seed 0 .* seed 3"):
        load("matformer_vit_mnist")


def test_random_weights_are_the_same_on_every_load_and_key_their_caches():
    first, info = load("deit_tiny_probe")
    again, info_again = load("deit_tiny_probe")
    assert info.sha256 == info_again.sha256 and info.meta["random_weights"]["seed"] == 0
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True))


def test_task_whose_metric_is_not_a_number_is_a_plugin_error():
    from deploy.tasks.base import ArrayTask

    class Broken(ArrayTask):
        def finalize(self, total, weight):
            return "good"

    task = Broken.of(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(PluginError, match="must be a finite number"):
        task.evaluate(lambda inputs: torch.zeros(4, 10), "val")


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown task 'imagenet'; known: mnist"):
        get_task("imagenet")


def test_workspace_option_on_a_folder_that_is_not_one_says_how_to_make_one(tmp_path):
    from deploy import workspace

    with pytest.raises(WorkspaceError, match="elastic-deploy init"):
        workspace.use(tmp_path)


# --- bounds on what a spec may ask for (issue 24) ---------------------------------------------------


@pytest.mark.parametrize(
    ("dims_yaml", "needle"),
    [
        ("{dim: 1.0e+9}", "dims.dim is 1000000000.0"),  # a float, however whole
        ("{dim: 1e9}", "dims.dim is '1e9'"),  # PyYAML reads this as a string
        ("{dim: -32}", "dims.dim is -32"),
        ("{depth: 0}", "dims.depth is 0"),
        ("{dim: true}", "dims.dim is true"),
        ("{dim: 16.0}", "dims.dim is 16.0"),
    ],
)
def test_dim_that_is_not_a_positive_whole_number_is_refused_naming_it(tmp_root, dims_yaml, needle):
    (tmp_root / "models").mkdir()
    text = yaml.safe_dump({k: v for k, v in GOOD.items() if k != "dims"}) + f"dims: {dims_yaml}\n"
    (tmp_root / "models" / "m1.yaml").write_text(text)
    with pytest.raises(ConfigFileError) as info:
        build("m1")
    message = str(info.value)
    assert "m1.yaml" in message and needle in message and "whole number from 1" in message and "\n" not in message


def test_dim_inside_an_option_tuple_is_checked_too(tmp_root):
    write(tmp_root, family="poa_vit", dims={"heads": [2, 0, 4]})
    with pytest.raises(ConfigFileError, match=r"dims\.heads\[1\] is 0"):
        build("m1")


def test_dim_past_the_sanity_bound_is_refused_before_building(tmp_root):
    from deploy.models.spec import DIM_MAX

    write(tmp_root, dims={**GOOD["dims"], "ffn_max": DIM_MAX + 1})
    with pytest.raises(ConfigFileError, match=r"dims\.ffn_max is 1,048,577, more than 1,048,576"):
        build("m1")


def test_depth_that_would_build_too_many_modules_is_refused(tmp_root):
    write(tmp_root, dims={**GOOD["dims"], "depth": 100_000})  # grew to gigabytes before it was bounded
    with pytest.raises(ConfigFileError, match=r"m1\.yaml: these dims build more than 10,000 modules"):
        build("m1")


def test_model_whose_weights_exceed_a_share_of_memory_is_refused_before_allocating(tmp_root, monkeypatch):
    from deploy.models import spec as spec_module

    monkeypatch.setattr(spec_module, "machine_memory_bytes", lambda: 8 * 2**30)
    allocated = []
    monkeypatch.setattr(spec_module, "_construct", _recording(spec_module._construct, allocated))
    write(tmp_root, dims={"dim": 4096, "depth": 24, "heads": 32, "ffn_max": 16384})  # ~18 GiB of float32
    with pytest.raises(ConfigFileError) as info:
        build("m1")
    message = str(info.value)
    assert "m1.yaml: these dims make a model of 18.0 GiB of weights" in message, message
    assert "this machine's 8.0 GiB of memory" in message and "give smaller dims" in message
    assert allocated == ["meta"]  # never built for real


def test_model_within_the_memory_share_builds_as_before(tmp_root, monkeypatch):
    from deploy.models import spec as spec_module

    monkeypatch.setattr(spec_module, "machine_memory_bytes", lambda: 8 * 2**30)
    write(tmp_root)
    torch.manual_seed(0)
    net = build("m1")
    torch.manual_seed(0)
    plain = spec_module._construct(load_spec("m1"), spec_module.family_class("matformer_vit"))
    assert next(net.parameters()).device.type == "cpu"  # the meta estimate leaves the real build as it was
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), plain.state_dict().values(), strict=True))


def _recording(construct, devices):
    def wrapped(spec, cls):
        devices.append(torch.empty(0).device.type)
        return construct(spec, cls)

    return wrapped


def _item_family():
    from deploy.families.matformer_vit import MatFormerViT

    class ItemViT(MatFormerViT):
        """Reads a tensor's value in __init__, which the meta device cannot give."""

        def __init__(self, variant, dims):
            super().__init__(variant, dims)
            self.scale = float(torch.ones(1).item())

    return ItemViT


ItemViT = _item_family()


def test_family_that_cannot_build_on_meta_is_bounded_while_it_builds(tmp_root, monkeypatch):
    from deploy.models import spec as spec_module

    family = f"{__name__}:ItemViT"
    write(tmp_root, family=family)
    assert build("m1").scale == 1.0  # the meta estimate fails, the real build is counted and goes on
    monkeypatch.setattr(spec_module, "machine_memory_bytes", lambda: 2**20)  # 256 Ki weights at most
    write(tmp_root, family=family, dims={**GOOD["dims"], "dim": 256, "ffn_max": 1024})
    with pytest.raises(ConfigFileError, match=r"m1\.yaml: these dims make a model of at least 0\.00\d+ GiB"):
        build("m1")
