"""Training: a few steps of the tiny variant end to end, and the schedule and augmentation helpers."""

from __future__ import annotations

import json

import pytest
import torch

from deploy.models import checkpoint
from deploy.training.loop import lr_factor, shift
from deploy.training.train import train


def test_train_tiny_few_steps_writes_checkpoint_that_loads_back_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_DEPLOY_CACHE", str(tmp_path / "user-cache"))
    threads_before = torch.get_num_threads()
    result = train(
        "matformer_vit_tiny", out_stem=tmp_path / "tiny", max_steps=6, cache_samples=20, progress=False, threads=1
    )
    assert result.steps == 6 and not result.stopped_by_time
    assert torch.get_num_threads() == threads_before  # train() restores the caller's setting
    assert result.checkpoint == tmp_path / "tiny.safetensors"
    assert result.config.is_file() and result.accuracy_cache.is_file()

    loaded, info = checkpoint.load("matformer_vit_tiny", result.checkpoint)
    trained = result.supernet
    x = trained.example_inputs(seed=3)[0].repeat(4, 1, 1, 1)
    for config in (None, trained.smallest(), trained.space().decode((0, 4, 1))):
        assert torch.equal(loaded(x, config), trained(x, config))
    assert info.sha256 == result.sha256

    assert set(result.val) == {"full", "smallest", "uniform_8", "uniform_16", "uniform_32", "uniform_64"}
    assert result.val["full"] == result.val["uniform_64"] and all(0 <= v <= 1 for v in result.test.values())
    assert info.meta["accuracy"]["val"] == result.val and info.meta["steps"] == 6
    assert info.meta["checkpoint_choice"] == "last"
    cache = json.loads(result.accuracy_cache.read_text())
    assert cache["checkpoint_sha256"] == info.sha256 and len(cache["entries"]) == 25  # 20 + 5 named


def test_shift_keeps_shape_and_content_within_max_shift():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 14, 14] = 5.0
    out = shift(x, 2, gen)
    assert out.shape == x.shape
    for img in out:
        r, c = (img[0] == 5.0).nonzero()[0].tolist()
        assert abs(r - 14) <= 2 and abs(c - 14) <= 2
    assert shift(x, 0, gen) is x


def test_lr_factor_warms_up_then_anneals_to_zero():
    assert lr_factor(0.0, 0.1) == pytest.approx(1e-3)
    assert lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(0.5, 0.1) > lr_factor(0.8, 0.1)


def test_train_poa_tiny_uses_an_ema_teacher_and_writes_a_loadable_checkpoint(tmp_path, monkeypatch):
    import deploy.training.train as train_module

    monkeypatch.setenv("ELASTIC_DEPLOY_CACHE", str(tmp_path / "user-cache"))
    updates = []
    real = train_module._ema_update
    monkeypatch.setattr(train_module, "_ema_update", lambda ema, net, d: (updates.append(d), real(ema, net, d)))
    result = train("poa_vit_tiny", out_stem=tmp_path / "poa", max_steps=4, cache_samples=5, progress=False, threads=1)
    assert result.steps == 4 and updates == [0.99] * 4  # one EMA update per step
    recipe = checkpoint.load("poa_vit_tiny", result.checkpoint)[1].meta["recipe"]
    assert recipe["teacher"] == "ema" and recipe["sandwich_smallest"] is False and recipe["random_subnets"] == 1
    assert set(result.val) >= {"full", "smallest"} and all(0 <= v <= 1 for v in result.val.values())


def test_ema_update_moves_the_teacher_towards_the_student():
    from deploy.models import build
    from deploy.training.train import _ema_copy, _ema_update

    torch.manual_seed(0)
    student = build("poa_vit_tiny")
    teacher = _ema_copy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [t.clone() for t in teacher.parameters()]
    _ema_update(teacher, student, 0.9)
    for b, t, s in zip(before, teacher.parameters(), student.parameters(), strict=True):
        assert torch.allclose(t, 0.9 * b + 0.1 * s) and not t.requires_grad


def test_stitch_procedure_freezes_the_anchors_while_the_stitches_train(monkeypatch):
    import copy
    import dataclasses

    from deploy.models import build, load_spec
    from deploy.tasks.mnist import load_splits
    from deploy.training import stitch as train_stitch
    from deploy.training.recipes import recipe_for

    torch.manual_seed(0)
    net, splits = build("stitchable_tiny"), load_splits(0)
    seen = {}

    def spy(net, x):  # between the two phases: the anchors as phase 1 left them
        seen["anchors"] = copy.deepcopy(net.anchors.state_dict())
        seen["stitches"] = copy.deepcopy(net.stitches.state_dict())
        return init(net, x)

    init = train_stitch.init_stitches
    monkeypatch.setattr(train_stitch, "init_stitches", spy)
    recipe = dataclasses.replace(recipe_for(load_spec("stitchable_tiny").training), batch_size=256)  # 14 stitch steps
    loop = train_stitch.fit(net, splits, recipe, 3, 120.0, 0, False)
    assert loop.steps > 3 and set(loop.notes) >= {"anchors_val_accuracy", "stitch_lstsq_residual"}
    for name, value in net.anchors.state_dict().items():
        assert torch.equal(value, seen["anchors"][name]), name
    assert any(not torch.equal(v, seen["stitches"][k]) for k, v in net.stitches.state_dict().items())
    assert all(p.requires_grad for p in net.anchors.parameters())  # unfrozen again for whoever trains next


def test_learngene_tiny_trains_teacher_then_learngene_and_records_both(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_DEPLOY_CACHE", str(tmp_path / "user-cache"))
    result = train("learngene_tiny", out_stem=tmp_path / "lg", max_steps=4, cache_samples=5, progress=False)
    notes = checkpoint.load("learngene_tiny", result.checkpoint)[1].meta["procedure"]
    assert 0.0 <= notes["teacher_val_accuracy"] <= 1.0 and notes["auxiliary_depth"] == 3
    assert set(result.val) >= {"full", "smallest"} and len(result.val) >= 5  # every depth of the small space


def test_finetune_starts_from_the_shipped_learngene_and_saves_a_deployable_model(tmp_path, monkeypatch):
    from deploy.models import load_spec

    monkeypatch.setenv("ELASTIC_DEPLOY_CACHE", str(tmp_path / "user-cache"))
    depth = load_spec("learngene_mnist_tuned").dims["max_depth"]
    result = train("learngene_mnist", depth=depth, out_stem=tmp_path / "tuned", max_steps=3, cache_samples=1)
    net, info = checkpoint.load("learngene_mnist_tuned", result.checkpoint)
    assert info.meta["procedure"]["source"].startswith("learngene_mnist (learngene_mnist.safetensors")
    assert net.space().size() == 1 and net.largest()["depth"] == depth and result.steps == 3
