from __future__ import annotations

import copy
import dataclasses
import io
import sys

import numpy as np
import pytest
import torch

from deploy.backends.coreml import FP16_PARITY_ATOL, FP32_PARITY_ATOL, CoreMLBackend, check_spec
from deploy.errors import BackendUnavailableError, UnsupportedOpError, UnsupportedPrecisionError
from deploy.export import hub
from deploy.export.parity import check_parity
from deploy.targets import Target

MACOS_ONLY = "CoreML models run only on macOS: run `make test` on a Mac with the coreml extra"


def requires_macos(test):
    """The requires_macos marker has no automatic skip (pyproject only declares it): skip here."""
    return pytest.mark.requires_macos(pytest.mark.skipif(sys.platform != "darwin", reason=MACOS_ONLY)(test))


@pytest.fixture(scope="module")
def make_target(backend_target):
    """`make_target(precision, compute_units)`: the shipped coreml target serving the tiny model
    (tests/backends/conftest.py), deployable to macOS 13 so that a Mac runs what it compiles."""

    def make(precision: str = "fp16", compute_units: str = "ALL") -> Target:
        options = {"compute_units": compute_units, "minimum_deployment_target": "macOS13"}
        return backend_target("coreml", precision=precision, backend_options=options)

    return make


@pytest.fixture(scope="module")
def fp16(entry, tmp_path_factory, make_target):
    pytest.importorskip("coremltools")
    backend = CoreMLBackend()
    return backend, backend.compile(entry, make_target("fp16"), tmp_path_factory.mktemp("dist16"))


@pytest.fixture(scope="module")
def fp32(entry, tmp_path_factory, make_target):
    pytest.importorskip("coremltools")
    backend = CoreMLBackend()
    target = make_target("fp32", compute_units="CPU_ONLY")
    return backend, backend.compile(entry, target, tmp_path_factory.mktemp("dist32"))


def test_compile_writes_mlpackage_when_fp32_from_tiny(entry, tmp_path, make_target):
    pytest.importorskip("coremltools")
    artifact = CoreMLBackend().compile(entry, make_target("fp32"), tmp_path / "out")
    assert artifact.path == tmp_path / "out" / "model.mlpackage" and artifact.path.is_dir()
    assert (artifact.path / "Manifest.json").is_file()
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.mlpackage"]  # no temp folders left
    assert artifact.options["compute_precision"] == "FLOAT32"


def test_compile_records_options_when_fp16(fp16):
    _, artifact = fp16
    assert artifact.path.name == "model.mlpackage" and artifact.path.is_dir()
    assert artifact.backend == "coreml" and artifact.precision == "fp16"
    assert artifact.input_names == ("input",) and artifact.output_names == ("logits",)
    assert artifact.options["compute_units"] == "ALL"
    assert artifact.options["minimum_deployment_target"] == "macOS13"
    assert artifact.options["compute_precision"] == "FLOAT16"
    assert artifact.options["coremltools"] == CoreMLBackend().version()


def test_compile_replaces_existing_package(entry, fp32, tmp_path, make_target):
    backend, _ = fp32
    target = make_target("fp32", compute_units="CPU_ONLY")
    first = backend.compile(entry, target, tmp_path)
    second = backend.compile(entry, target, tmp_path)
    assert first.path == second.path and sorted(p.name for p in tmp_path.iterdir()) == ["model.mlpackage"]


@pytest.mark.parametrize(("which", "precision"), [("fp16", "fp16"), ("fp32", "fp32")])
def test_inspect_reports_io_precision_and_ops(which, precision, request):
    backend, artifact = request.getfixturevalue(which)
    summary = backend.inspect(artifact)
    assert summary["format"].startswith("mlprogram (spec v") and summary["model_type"] == "mlProgram"
    assert summary["precision"] == precision
    assert summary["inputs"] == [{"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert summary["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert {"linear", "matmul", "softmax", "layer_norm", "conv"} <= set(summary["ops"])
    assert "const" not in summary["ops"] and summary["n_consts"] > 0
    assert summary["n_ops"] == sum(summary["ops"].values()) > 0
    assert summary["minimum_deployment_target"] == "macOS13"
    assert summary["compute_units"] == artifact.options["compute_units"]
    # fp32 I/O around an fp16 program: exactly one cast in and one out
    assert summary["ops"].get("cast", 0) == (2 if precision == "fp16" else 0)


def test_check_spec_returns_nothing_when_artifact_matches(fp16, fp32, entry):
    for backend, artifact in (fp16, fp32):
        assert check_spec(artifact, entry) == []
        assert check_spec(artifact, entry, backend.inspect(artifact)) == []


def test_check_spec_names_problems_when_mismatched(fp16, entry):
    backend, artifact = fp16
    wrong_precision = dataclasses.replace(artifact, precision="fp32")
    assert check_spec(wrong_precision, entry) == ["the program computes in fp16, the artifact says fp32"]

    renamed = dataclasses.replace(entry, output_names=("probs",))
    (problem,) = check_spec(artifact, renamed)
    assert "outputs are ['logits']" in problem and "probs" in problem

    summary = copy.deepcopy(backend.inspect(artifact))
    summary["inputs"][0]["shape"] = [1, 3, 28, 28]
    summary["outputs"][0]["dtype"] = "float16"
    problems = check_spec(artifact, entry, summary)
    assert any("input has shape [1, 3, 28, 28]" in p and "[1, 1, 28, 28]" in p for p in problems)
    assert any("logits is float16" in p for p in problems)


def test_compile_raises_unsupported_precision_when_int8(tmp_path, make_target):
    with pytest.raises(UnsupportedPrecisionError, match="supports fp32, fp16"):
        CoreMLBackend().compile(None, make_target("int8"), tmp_path)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


def test_compile_raises_unsupported_op_naming_the_op(tmp_path, make_target):
    pytest.importorskip("coremltools")

    class Bessel(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.bessel_j0(x)

    example = torch.randn(1, 4)
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(Bessel(), (example,)), buffer)
    (tmp_path / "program.pt2").write_bytes(buffer.getvalue())
    np.savez(tmp_path / "references.npz", **{"in.input": example.numpy(), "out.output": example.numpy()})
    entry = hub.HubEntry("k", tmp_path, tmp_path / "model.onnx", tmp_path / "program.pt2", ("input",), ("output",))
    with pytest.raises(UnsupportedOpError, match=r"coreml.*'special_bessel_j0'"):
        CoreMLBackend().compile(entry, make_target("fp32"), tmp_path / "out")
    assert not (tmp_path / "out" / "model.mlpackage").exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the behaviour off macOS")
def test_runs_here_explains_macos_when_not_on_macos():
    reason = CoreMLBackend().runs_here()
    assert reason is not None and "only on macOS" in reason and "structurally" in reason


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the behaviour off macOS")
def test_run_and_timed_call_raise_backend_unavailable_when_not_on_macos(fp16, entry):
    backend, artifact = fp16
    with pytest.raises(BackendUnavailableError, match="only on macOS"):
        backend.run(artifact, entry.reference_inputs())
    with pytest.raises(BackendUnavailableError, match="only on macOS"):
        backend.timed_call(artifact, entry.reference_inputs())


def test_missing_coremltools_raises_backend_unavailable_naming_the_extra(monkeypatch, tmp_path, make_target):
    monkeypatch.setitem(sys.modules, "coremltools", None)  # what a venv without it looks like to import
    backend = CoreMLBackend()
    assert backend.version() == "coremltools not installed"
    with pytest.raises(BackendUnavailableError, match=r"pip install 'elastic-deploy\[coreml\]'"):
        backend.compile(None, make_target("fp16"), tmp_path)  # type: ignore[arg-type]
    assert backend.runs_here() is not None
    assert not any(tmp_path.iterdir())


@requires_macos
@pytest.mark.parametrize(("which", "atol"), [("fp16", FP16_PARITY_ATOL), ("fp32", FP32_PARITY_ATOL)])
def test_run_matches_references_within_tolerance_when_on_macos(which, atol, request, entry):
    backend, artifact = request.getfixturevalue(which)
    outputs = backend.run(artifact, entry.reference_inputs())
    report = check_parity(outputs, entry.reference_outputs(), atol=atol)
    assert report.ok, report.summary()
    assert backend.model(artifact) is backend.model(artifact)


@requires_macos
def test_timed_call_runs_one_prediction_when_on_macos(fp32, entry):
    backend, artifact = fp32
    result = backend.timed_call(artifact, entry.reference_inputs())()
    np.testing.assert_allclose(result["logits"], entry.reference_outputs()["logits"], atol=FP32_PARITY_ATOL)
