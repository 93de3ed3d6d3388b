"""TFLiteBackend with real conversions (litert-torch + ai-edge-quantizer) and the real LiteRT interpreter."""

from __future__ import annotations

import functools
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="litert-torch not installed: pip install 'elastic-deploy[tflite]'")
pytest.importorskip(
    "ai_edge_litert.interpreter", reason="ai-edge-litert not installed: pip install 'elastic-deploy[tflite]'"
)

from deploy.backends.tflite import PARITY_ATOL, PRECISIONS, TFLiteBackend, conversion_error
from deploy.errors import (
    BackendUnavailableError,
    DataShapeError,
    DeployError,
    ExportError,
    UnsupportedOpError,
    UnsupportedPrecisionError,
)
from deploy.export import hub
from deploy.export.parity import check_parity
from deploy.targets import Target


@pytest.fixture(scope="module")
def make_target(backend_target):
    """The shipped tflite target serving the tiny model (tests/backends/conftest.py), with overrides."""
    return functools.partial(backend_target, "tflite")


@pytest.fixture(scope="module")
def compiled(entry, tmp_path_factory, make_target):
    """One conversion per precision, shared by every test (each takes seconds)."""
    backend = TFLiteBackend()
    dist = tmp_path_factory.mktemp("dist")
    artifacts = {p: backend.compile(entry, make_target(precision=p, threads=2), dist / p) for p in PRECISIONS}
    return backend, artifacts


@pytest.mark.parametrize("precision", PRECISIONS)
def test_run_matches_references_within_parity_atol(compiled, entry, precision):
    backend, artifacts = compiled
    outputs = backend.run(artifacts[precision], entry.reference_inputs())
    report = check_parity(outputs, entry.reference_outputs(), atol=PARITY_ATOL[precision])
    assert report.ok, report.summary()
    assert outputs[0].dtype == np.float32 and outputs[0].shape == entry.reference_outputs()["logits"].shape


def test_compile_writes_tflite_and_records_threads_and_io(compiled):
    _, artifacts = compiled
    for precision, artifact in artifacts.items():
        assert artifact.path.name == "model.tflite" and artifact.path.read_bytes()[4:8] == b"TFL3"
        assert artifact.backend == "tflite" and artifact.precision == precision
        assert artifact.options["threads"] == 2
        assert artifact.input_names == ("input",) and artifact.output_names == ("logits",)
    assert artifacts["fp32"].options["io_dtype"] == "float32"
    assert artifacts["int8"].options["io_dtype"] == "int8"  # the quantiser's default: int8 I/O
    assert artifacts["int8"].options["calibration_samples"] == 1  # the reference input, when None


def test_inspect_reports_io_and_op_counts(compiled):
    backend, artifacts = compiled
    info = backend.inspect(artifacts["fp32"])
    assert info["format"] == "tflite" and info["precision"] == "fp32"
    assert [i["shape"] for i in info["inputs"]] == [[1, 1, 28, 28]]
    assert [o["shape"] for o in info["outputs"]] == [[1, 10]] and info["outputs"][0]["dtype"] == "float32"
    assert info["ops"]["FULLY_CONNECTED"] > 0 and "DELEGATE" not in info["ops"]
    assert info["n_ops"] == sum(info["ops"].values())
    assert info["size_bytes"] == artifacts["fp32"].path.stat().st_size
    int8 = backend.inspect(artifacts["int8"])
    assert int8["inputs"][0]["dtype"] == "int8" and int8["inputs"][0]["quantization"]["scale"] > 0
    fp16 = backend.inspect(artifacts["fp16"])
    assert fp16["ops"].get("DEQUANTIZE", 0) > 0  # fp16 weights are dequantised to float32 for compute


def test_quantised_artifacts_are_smaller_than_fp32(compiled):
    _, artifacts = compiled
    sizes = {p: a.path.stat().st_size for p, a in artifacts.items()}
    assert sizes["int8"] < sizes["fp32"]
    assert sizes["int8_dynamic"] < sizes["fp32"] and sizes["fp16"] < sizes["fp32"]


def test_timed_call_runs_the_same_inference(compiled, entry):
    backend, artifacts = compiled
    call = backend.timed_call(artifacts["fp32"], entry.reference_inputs())
    for _ in range(3):
        call()
    interp = backend.interpreter(artifacts["fp32"])
    out = interp.get_tensor(interp.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, entry.reference_outputs()["logits"], atol=PARITY_ATOL["fp32"])


def test_interpreter_is_created_once_per_artifact(compiled):
    backend, artifacts = compiled
    assert backend.interpreter(artifacts["fp32"]) is backend.interpreter(artifacts["fp32"])
    assert backend.interpreter(artifacts["fp32"]) is not backend.interpreter(artifacts["int8"])


def test_run_raises_data_shape_error_when_input_shape_differs(compiled):
    backend, artifacts = compiled
    with pytest.raises(DataShapeError, match=r"\(1, 1, 32, 32\).*\(1, 1, 28, 28\)"):
        backend.run(artifacts["fp32"], {"input": np.zeros((1, 1, 32, 32), np.float32)})


def test_run_raises_naming_missing_inputs(compiled):
    backend, artifacts = compiled
    with pytest.raises(DeployError, match=r"lack \['input'\]"):
        backend.run(artifacts["fp32"], {"x": np.zeros((1, 1, 28, 28), np.float32)})


def test_compile_raises_data_shape_error_when_calibration_shape_is_wrong(entry, tmp_path, make_target):
    bad = np.zeros((4, 3, 28, 28), np.float32)
    with pytest.raises(DataShapeError, match=r"calibration argument.*\(4, 3, 28, 28\).*\(N, 1, 28, 28\)"):
        TFLiteBackend().compile(entry, make_target(precision="int8"), tmp_path, calibration=bad)
    assert not (tmp_path / "model.tflite").exists()


def test_compile_raises_unsupported_precision_when_backend_lacks_it(entry, tmp_path, make_target):
    backend = TFLiteBackend()
    backend.precisions = ("fp32",)  # every Target precision is one tflite has: narrow the backend instead
    with pytest.raises(UnsupportedPrecisionError, match="supports fp32"):
        backend.compile(entry, make_target(precision="int8"), tmp_path)
    bogus = Target.model_construct(**{**make_target().model_dump(), "precision": "bf16"})  # bypasses the schema
    with pytest.raises(UnsupportedPrecisionError, match="bf16"):
        TFLiteBackend().compile(entry, bogus, tmp_path)
    assert not (tmp_path / "model.tflite").exists()


def test_run_raises_backend_unavailable_naming_pip_extra_when_ai_edge_litert_missing(compiled, monkeypatch):
    _, artifacts = compiled
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # what a venv without it looks like to import
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    backend = TFLiteBackend()  # fresh: no cached interpreter
    with pytest.raises(BackendUnavailableError, match=r"pip install 'elastic-deploy\[tflite\]'"):
        backend.run(artifacts["fp32"], {"input": np.zeros((1, 1, 28, 28), np.float32)})
    assert "elastic-deploy[tflite]" in backend.runs_here()
    assert "litert-torch" in backend.version()


class _Det(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x).unsqueeze(-1)  # litert-torch 0.10 has no lowering for aten._linalg_det


def test_compile_raises_unsupported_op_naming_the_op(tmp_path, make_target):
    module = _Det().eval()
    entry = hub.get_or_export(module, torch.randn(1, 4, 4), {"block": "det"}, tmp_path / "cache")
    with pytest.raises(UnsupportedOpError, match=r"'aten\._linalg_det'.*") as info:
        TFLiteBackend().compile(entry, make_target(), tmp_path / "out")
    assert "tflite" in str(info.value) and "\n" not in str(info.value)


def test_conversion_error_is_one_line_export_error_when_no_op_is_named():
    # Captured from litert-torch 0.10 converting torch.linalg.inv (a lowering that fails internally).
    error = conversion_error(AssertionError("Number of input tokens (1) does not match output tokens (0)"))
    assert isinstance(error, ExportError) and not isinstance(error, UnsupportedOpError)
    assert "Number of input tokens" in str(error) and "\n" not in str(error)
