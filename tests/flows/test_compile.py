from __future__ import annotations

import json

import pytest

from deploy.errors import ConfigFileError
from deploy.export import hub
from deploy.export.check import package_onnx, spec_problems
from deploy.flows.compile import compile_onnx


@pytest.fixture
def packaged(tiny, tmp_path):
    config = tiny.largest()
    entry = hub.get_or_export(tiny.extract(config), tiny.example_inputs()[0], {"subnet": config.id}, tmp_path / "c")
    artifact = package_onnx(entry, tmp_path / "dist")
    return entry, artifact


def test_package_onnx_writes_model_and_references_for_the_device(packaged, tmp_path):
    _, artifact = packaged
    assert artifact.path == tmp_path / "dist" / "model.onnx" and (tmp_path / "dist" / "references.npz").exists()


def test_compile_onnx_builds_the_target_artifact_and_checks_parity_against_packaged_references(
    packaged, ship_files, tmp_root
):
    ship_files("targets/host-cpu-ort.yaml")
    _, artifact = packaged
    result = compile_onnx(artifact.path, "host-cpu-ort", out_dir=artifact.path.parent / "built")
    assert result.parity is not None and result.parity.max_abs_diff <= 1e-4
    report = json.loads((artifact.path.parent / "built" / "compile.json").read_text())
    assert report["backend"] == "onnxruntime" and report["inspection"]["n_ops"] > 0


def test_compile_onnx_raises_config_error_for_a_missing_file(ship_files, tmp_root, tmp_path):
    ship_files("targets/host-cpu-ort.yaml")
    with pytest.raises(ConfigFileError, match="does not exist"):
        compile_onnx(tmp_path / "nope.onnx", "host-cpu-ort")


def test_spec_problems_names_a_shape_mismatch_and_accepts_a_match(packaged):
    entry, _ = packaged
    ref_in = entry.reference_inputs()["input"].shape
    ref_out = next(iter(entry.reference_outputs().values())).shape
    good = {"inputs": [{"name": "x", "shape": list(ref_in)}], "outputs": [{"name": "y", "shape": list(ref_out)}]}
    assert spec_problems(good, entry) == []
    bad = {"inputs": [{"name": "x", "shape": [1, 3, 28, 28]}], "outputs": good["outputs"]}
    assert "input 0 (x) has shape [1, 3, 28, 28]" in spec_problems(bad, entry)[0]


def test_compile_into_a_deploys_output_folder_adds_what_it_wrote_to_the_marker(tiny, ship_files, tmp_root, tmp_path):
    """The next deploy into that folder replaces it instead of refusing compile.json as a user's file (issue 24)."""
    from deploy.packaging.output import check_output_dir, staged_dir

    ship_files("targets/host-cpu-ort-1t.yaml")
    config = tiny.smallest()
    entry = hub.get_or_export(tiny.extract(config), tiny.example_inputs()[0], {"subnet": config.id}, tmp_path / "c")
    dist = tmp_path / "dist" / "t"
    with staged_dir(dist) as staging:
        package_onnx(entry, staging)
    compile_onnx(dist / "model.onnx", "host-cpu-ort-1t")
    assert (dist / "compile.json").is_file()
    check_output_dir(dist)  # would raise OutputDirError naming compile.json
    with staged_dir(dist) as staging:
        (staging / "model.onnx").write_text("next deploy")
    assert sorted(p.name for p in dist.iterdir()) == [".elastic-deploy.json", "model.onnx"]
