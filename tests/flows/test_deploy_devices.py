"""Deploys for devices this machine cannot run: CoreML (compiled, checked structurally) and TensorRT
(not compilable here: the validated ONNX is packaged with the command to build it on the device)."""

from __future__ import annotations

import json

import pytest

from deploy.flows.deploy import deploy

pytestmark = pytest.mark.slow


def ship(ship_files, target: str) -> None:
    ship_files(f"targets/{target}.yaml", f"latency_tables/{target}.json", "checkpoints")


def test_deploy_jetson_without_tensorrt_packages_validated_onnx_and_says_to_build_on_device(tmp_root, ship_files):
    pytest.importorskip("mlxtend")
    from deploy.backends import get_backend

    if get_backend("tensorrt").runs_here() is None:
        pytest.skip("TensorRT and a GPU are present: the engine is built here instead")
    ship(ship_files, "jetson-orin-nano")
    said: list[str] = []
    result = deploy("jetson-orin-nano", progress=False, say=said.append)
    out = tmp_root / "dist" / "jetson-orin-nano"
    assert said[0].startswith("ESTIMATED latency table for jetson-orin-nano")
    for name in ("model.onnx", "references.npz", "manifest.json", "report.md", "pareto.png"):
        assert (out / name).stat().st_size > 0, name
    m = result.manifest.model_dump(mode="json")
    v = m["validation"]
    assert m["artifact"]["status"] == "deferred" and v["ran_here"] is False and "TensorRT" in v["not_run_reason"]
    assert v["build_on_device"] == f"elastic-deploy compile --target jetson-orin-nano {out / 'model.onnx'}"
    assert v["onnx_parity_onnxruntime"]["max_abs_diff"] <= 1e-4 and v["spec_problems"] == []
    assert m["latency"]["method"] == "estimated" and m["latency"]["measured_ms"] is None
    assert "cannot run" in m["latency"]["not_measured_reason"] and m["accuracy"]["artifact_test"] is None
    assert "build on the device" in (out / "report.md").read_text()


def test_deploy_iphone_on_linux_compiles_mlpackage_and_checks_its_spec(tmp_root, ship_files):
    pytest.importorskip("mlxtend")
    pytest.importorskip("coremltools")
    from deploy.backends import get_backend

    if get_backend("coreml").runs_here() is None:
        pytest.skip("on macOS the package is run and measured instead")
    ship(ship_files, "iphone15")
    result = deploy("iphone15", progress=False)
    out = tmp_root / "dist" / "iphone15"
    assert (out / "model.mlpackage").is_dir() and (out / "manifest.json").exists()
    m = result.manifest.model_dump(mode="json")
    v = m["validation"]
    assert m["artifact"]["status"] == "compiled" and len(m["artifact"]["sha256"]) == 64
    assert "macOS" in v["not_run_reason"] and v["spec_problems"] == []
    assert v["inspection"]["precision"] == "fp16" and v["inspection"]["n_ops"] > 10
    assert m["latency"]["method"] == "estimated" and m["latency"]["table"]["estimate"]["anchor"]["model"]
    json.dumps(m)  # the manifest is plain JSON
