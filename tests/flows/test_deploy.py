"""End to end on the shipped model, table and target, into a throwaway root (real ORT, real measurement)."""

from __future__ import annotations

import json

import pytest
import yaml

from deploy.errors import (
    CheckpointError,
    NoFeasibleSubnetError,
    ParityError,
    TableIncompleteError,
    TableUncalibratedError,
)
from deploy.families.base import BlockKey
from deploy.flows.deploy import deploy
from deploy.models import build

pytestmark = pytest.mark.slow


def edit_target(root, **changes) -> None:
    path = root / "targets" / "host-cpu-ort.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


def test_deploy_host_cpu_ort_writes_artifact_manifest_report_and_plot(shipped):
    result = deploy("host-cpu-ort", progress=False)
    out = shipped / "dist" / "host-cpu-ort"
    assert result.out_dir == out
    for name in ("model.onnx", "manifest.json", "report.md", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "manifest.json").read_text())
    assert m["target"] == "host-cpu-ort" and m["backend"] == "onnxruntime"
    assert m["subnet"]["id"] == result.selection.choice.config.id
    assert m["latency"]["predicted_ms"] <= m["latency"]["budget_ms"]
    assert m["latency"]["measured_ms"] > 0 and m["latency"]["method"] == "measured"
    assert m["latency"]["table"]["protocol"]["rounds"] >= 1
    assert m["parity"]["max_abs_diff"] <= m["parity"]["tolerance"] == 1e-4
    assert (
        0.5 < m["accuracy"]["artifact_test"] <= 1 and abs(m["accuracy"]["artifact_test"] - m["accuracy"]["test"]) < 0.01
    )
    assert len(m["checkpoint_sha256"]) == 64 and len(m["artifact"]["sha256"]) == 64
    assert {"torch", "onnxruntime"} <= set(m["versions"])
    # the full model does not fit the shipped budget: selection had to matter
    assert m["subnet"]["config"] != result.selection.front[-1].config.to_json() or len(result.selection.front) == 1

    # hub entries are content-addressed: a deploy choosing the same subnet reuses the entry, another one does
    # not (the first deploy's drift check and measurement may move this one's choice on a noisy machine)
    again = deploy("host-cpu-ort", progress=False, measure=False).manifest
    same_subnet = again.subnet.id == m["subnet"]["id"]
    assert (again.hub_entry == m["hub_entry"]) == same_subnet


def test_deploy_with_incomplete_table_names_missing_blocks(shipped):
    path = shipped / "latency_tables" / "host-cpu-ort.json"
    data = json.loads(path.read_text())
    # drop one block the default model needs (the table also holds blocks of other served models)
    needed = {str(k) for k in build("matformer_vit_mnist").all_blocks()}
    drop = next(i for i, e in enumerate(data["entries"]) if str(BlockKey.of(e["kind"], **e["shape"])) in needed)
    data["entries"].pop(drop)
    path.write_text(json.dumps(data))
    with pytest.raises(TableIncompleteError, match=r"lacks 1 block\(s\).*make latency-tables TARGET=host-cpu-ort"):
        deploy("host-cpu-ort", progress=False)


def test_deploy_with_infeasible_budget_names_fastest_subnet(shipped):
    edit_target(shipped, budget_ms=0.001)
    with pytest.raises(NoFeasibleSubnetError, match="fastest"):
        deploy("host-cpu-ort", progress=False)


def test_parity_failure_raises_and_keeps_previous_dist(shipped):
    out = shipped / "dist" / "host-cpu-ort"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("{}")  # a previous deploy's output, with the marker deploys write
    (out / ".elastic-deploy.json").write_text('{"tool": "elastic-deploy", "files": ["manifest.json"]}')
    edit_target(shipped, parity_atol=1e-30)
    with pytest.raises(ParityError, match="max abs diff"):
        deploy("host-cpu-ort", progress=False, measure=False)
    assert (out / "manifest.json").read_text() == "{}"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".host-cpu-ort")]


def test_checkpoint_of_another_variant_is_rejected(shipped):
    ckpt = shipped / "checkpoints" / "matformer_vit_mnist.safetensors"
    ckpt.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        deploy("host-cpu-ort", progress=False)


def test_deploy_with_an_uncalibrated_table_refuses_naming_the_command_that_calibrates(shipped):
    path = shipped / "latency_tables" / "host-cpu-ort.json"
    data = json.loads(path.read_text())
    data["calibration"] = None  # what an interrupted build of an older version could leave
    path.write_text(json.dumps(data))
    with pytest.raises(TableUncalibratedError, match=r"tables build --target host-cpu-ort --recalibrate"):
        deploy("host-cpu-ort", progress=False, measure=False)
    assert not (shipped / "dist").exists()


def test_deploy_without_a_budget_picks_the_most_accurate_subnet_the_cache_knows(shipped):
    from deploy.accuracy.oracle import accuracy_cache_path

    edit_target(shipped, budget_ms=1e9)
    cache = json.loads(accuracy_cache_path(shipped / "checkpoints" / "matformer_vit_mnist.safetensors").read_text())
    best = max(e["accuracy"] for e in cache["entries"])
    result = deploy("host-cpu-ort", progress=False, measure=False)
    choice = result.selection.choice
    assert choice.accuracy_source == "exact" and choice.accuracy >= best
    assert result.manifest.model_dump(mode="json")["selection"]["rescoring"]["stable"]
