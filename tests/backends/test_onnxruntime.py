from __future__ import annotations

import functools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from deploy.backends.onnxruntime import OnnxRuntimeBackend
from deploy.errors import DeployError, UnsupportedOpError
from deploy.export import hub
from deploy.export.parity import check_parity


@pytest.fixture(scope="module")
def make_target(backend_target):
    """The shipped onnxruntime target serving the tiny model (tests/backends/conftest.py), with overrides."""
    return functools.partial(backend_target, "onnxruntime")


@pytest.fixture(scope="module")
def compiled(entry, tmp_path_factory, make_target):
    backend = OnnxRuntimeBackend()
    artifact = backend.compile(entry, make_target(threads=2), tmp_path_factory.mktemp("dist"))
    return backend, artifact


def test_compile_writes_model_and_records_session_options(compiled, entry):
    _, artifact = compiled
    assert artifact.path.name == "model.onnx" and artifact.path.read_bytes() == entry.onnx_path.read_bytes()
    assert artifact.backend == "onnxruntime" and artifact.precision == "fp32"
    assert artifact.options["intra_op_num_threads"] == 2
    assert artifact.options["inter_op_num_threads"] == 1
    assert artifact.options["execution_mode"] == "ORT_SEQUENTIAL"
    assert artifact.options["graph_optimization_level"] == "ORT_ENABLE_ALL"


def test_run_matches_references_within_1e_4(compiled, entry):
    backend, artifact = compiled
    outputs = backend.run(artifact, entry.reference_inputs())
    report = check_parity(outputs, entry.reference_outputs(), atol=1e-4)
    assert report.ok and report.max_abs_diff <= 1e-4
    assert outputs[0].shape == entry.reference_outputs()["logits"].shape


def test_session_is_created_once_per_artifact(compiled):
    backend, artifact = compiled
    assert backend.session(artifact) is backend.session(artifact)


def test_timed_call_runs_the_same_inference(compiled, entry):
    backend, artifact = compiled
    call = backend.timed_call(artifact, entry.reference_inputs())
    binding = call()
    (out,) = binding.copy_outputs_to_cpu()
    np.testing.assert_allclose(out, entry.reference_outputs()["logits"], atol=1e-4)


def test_compile_raises_for_precision_other_than_fp32(entry, tmp_path, make_target):
    with pytest.raises(DeployError, match="supports fp32"):
        OnnxRuntimeBackend().compile(entry, make_target(precision="int8"), tmp_path)
    assert not (tmp_path / "model.onnx").exists()


def test_run_raises_naming_missing_inputs(compiled):
    backend, artifact = compiled
    with pytest.raises(DeployError, match=r"lack \['input'\]"):
        backend.run(artifact, {"x": np.zeros((1, 1, 28, 28), np.float32)})


def test_compile_raises_unsupported_op_naming_the_op(tmp_path, make_target):
    node = helper.make_node("NoSuchOpHere", ["input"], ["output"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    entry = hub.HubEntry("k", tmp_path, path, None, ("input",), ("output",))
    with pytest.raises(UnsupportedOpError, match="NoSuchOpHere"):
        OnnxRuntimeBackend().compile(entry, make_target(), tmp_path / "out")


def test_missing_onnxruntime_raises_backend_unavailable_naming_pip(monkeypatch):
    import sys

    from deploy.errors import BackendUnavailableError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what a venv without it looks like to import
    with pytest.raises(BackendUnavailableError, match="pip install"):
        OnnxRuntimeBackend().version()
