"""ExecuTorch backends with the real exir lowering (XNNPACK, CoreML) and the real executorch.runtime."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.exir", reason="executorch not installed: pip install 'elastic-deploy[executorch]'")
pytest.importorskip("executorch.runtime", reason="executorch not installed: pip install 'elastic-deploy[executorch]'")

from deploy.backends import get_backend
from deploy.backends.executorch import (
    MODEL_FILE,
    PARITY_ATOL,
    ExecuTorchBackend,
    conversion_error,
    fallback_warning,
    version_problem,
)
from deploy.backends.executorch_coreml import ExecuTorchCoreMLBackend
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

PRECISIONS = ExecuTorchBackend.precisions


@pytest.fixture(scope="module")
def make_target(backend_target):
    """The shipped executorch target serving the tiny model (tests/backends/conftest.py), with overrides."""
    return functools.partial(backend_target, "executorch")


@pytest.fixture(scope="module")
def compiled(entry, tmp_path_factory, make_target):
    """One lowering per precision, shared by every test (each takes seconds)."""
    backend = ExecuTorchBackend()
    dist = tmp_path_factory.mktemp("dist")
    artifacts = {p: backend.compile(entry, make_target(precision=p), dist / p) for p in PRECISIONS}
    return backend, artifacts


@pytest.mark.parametrize("precision", PRECISIONS)
def test_run_matches_references_within_parity_atol(compiled, entry, precision):
    backend, artifacts = compiled
    outputs = backend.run(artifacts[precision], entry.reference_inputs())
    report = check_parity(outputs, entry.reference_outputs(), atol=PARITY_ATOL[precision])
    assert report.ok, report.summary()
    assert outputs[0].dtype == np.float32 and outputs[0].shape == entry.reference_outputs()["logits"].shape


def test_run_fp32_matches_references_within_1e5(compiled, entry):
    backend, artifacts = compiled
    (out,) = backend.run(artifacts["fp32"], entry.reference_inputs())
    assert np.abs(out - entry.reference_outputs()["logits"]).max() <= 1e-5


def test_compile_writes_pte_with_program_identifier_and_records_delegation_threads_and_version(compiled):
    _, artifacts = compiled
    for precision, artifact in artifacts.items():
        assert artifact.path.name == MODEL_FILE and artifact.path.read_bytes()[4:8] == b"ET12"
        assert artifact.backend == "executorch" and artifact.precision == precision
        opts = artifact.options
        assert opts["threads"] == 1 and opts["delegate"] == "XnnpackBackend" and opts["program_format"] == "ET12"
        assert opts["executorch"] == "1.5.1" and json.dumps(opts)  # recorded in the manifest as is
        report = opts["delegation"]
        assert report["delegated_ops"]["aten.linear"] > 0 and report["delegated_subgraphs"] >= 1
        # XNNPACK 1.5.1 has no LayerNorm: it stays on ExecuTorch's own kernels, one per norm of the subnet
        assert report["not_delegated_ops"]["aten.native_layer_norm"] >= 3
        assert report["n_not_delegated"] == sum(report["not_delegated_ops"].values())
    assert artifacts["int8"].options["calibration_samples"] == 1  # the reference input, when None
    assert artifacts["int8"].options["quantization"].startswith("XNNPACKQuantizer")
    assert artifacts["int8"].options["delegation"]["delegated_ops"]["quantized_decomposed.quantize_per_tensor"] > 0


def test_inspect_reads_kernel_and_delegate_calls_back_from_the_pte(compiled):
    backend, artifacts = compiled
    info = backend.inspect(artifacts["fp32"])
    report = artifacts["fp32"].options["delegation"]
    assert info["format"] == "ExecuTorch .pte (ET12)" and info["precision"] == "fp32"
    assert info["inputs"] == [{"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    assert info["delegate_calls"] == {"XnnpackBackend": report["delegated_subgraphs"]}
    assert info["ops"]["aten::native_layer_norm.out"] == report["not_delegated_ops"]["aten.native_layer_norm"]
    assert info["n_ops"] == report["n_not_delegated"] == sum(info["ops"].values())
    assert info["size_bytes"] == artifacts["fp32"].path.stat().st_size
    (warning,) = info["warnings"]
    assert "not delegated to XnnpackBackend" in warning and "aten.native_layer_norm ×" in warning


def test_fallback_warning_is_none_when_every_op_is_delegated():
    assert fallback_warning({"delegate": "CoreMLBackend", "not_delegated_ops": {}, "n_not_delegated": 0}) is None


def test_int8_artifact_is_smaller_than_fp32(compiled):
    _, artifacts = compiled
    assert artifacts["int8"].path.stat().st_size < artifacts["fp32"].path.stat().st_size


def test_timed_call_runs_the_same_inference(compiled, entry):
    backend, artifacts = compiled
    call = backend.timed_call(artifacts["fp32"], entry.reference_inputs())
    for _ in range(3):
        (out,) = call()
    np.testing.assert_allclose(out.numpy(), entry.reference_outputs()["logits"], atol=PARITY_ATOL["fp32"])


def test_method_is_loaded_once_per_artifact(compiled):
    backend, artifacts = compiled
    assert backend._method(artifacts["fp32"]) is backend._method(artifacts["fp32"])
    assert backend._method(artifacts["fp32"]) is not backend._method(artifacts["int8"])


def test_runs_alternately_at_two_thread_counts_when_artifacts_differ_in_threads(entry, tmp_path, make_target):
    # XNNPACK binds a loaded method to the process-wide threadpool: resizing it under a loaded method
    # segfaulted; the backend reloads instead.
    backend = ExecuTorchBackend()
    two = backend.compile(entry, make_target(threads=2), tmp_path / "two")
    one = backend.compile(entry, make_target(threads=1), tmp_path / "one")
    want = entry.reference_outputs()["logits"]
    for artifact in (two, one, two, one):
        (out,) = backend.run(artifact, entry.reference_inputs())
        assert np.abs(out - want).max() <= PARITY_ATOL["fp32"]
    from executorch.extension.pybindings import portable_lib

    assert portable_lib._threadpool_get_thread_count() == 1


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
    with pytest.raises(DataShapeError, match=r"executorch int8 calibration.*\(4, 3, 28, 28\).*\(N, 1, 28, 28\)"):
        ExecuTorchBackend().compile(entry, make_target(precision="int8"), tmp_path, calibration=bad)
    assert not (tmp_path / MODEL_FILE).exists()


@pytest.mark.parametrize(("backend", "precision"), [(ExecuTorchBackend, "int8_dynamic"), (ExecuTorchBackend, "fp16"),
                                                    (ExecuTorchCoreMLBackend, "int8")])  # fmt: skip
def test_compile_refuses_a_precision_by_name_and_writes_nothing(entry, tmp_path, backend, precision, make_target):
    with pytest.raises(UnsupportedPrecisionError, match=rf"asks for precision {precision} but the executorch") as info:
        backend().compile(entry, make_target(precision=precision), tmp_path)
    assert ", ".join(backend.precisions) in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / MODEL_FILE).exists()


class _Det(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.det(x).unsqueeze(-1)  # aten._linalg_det: not in core ATen


class _Sort(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=-1).values  # core ATen, but executorch 1.5.1 has no kernel for sort.values


def test_compile_raises_unsupported_op_naming_the_op_and_backend_when_it_is_not_core_aten(tmp_path, make_target):
    entry = hub.get_or_export(_Det().eval(), torch.randn(1, 4, 4), {"block": "det"}, tmp_path / "cache")
    with pytest.raises(UnsupportedOpError, match=r"executorch \(XnnpackBackend\): op 'aten\._linalg_det'") as info:
        ExecuTorchBackend().compile(entry, make_target(), tmp_path / "out")
    assert "\n" not in str(info.value) and not (tmp_path / "out" / MODEL_FILE).exists()


def test_compile_raises_unsupported_op_naming_the_op_when_no_executorch_kernel_runs_it(tmp_path, make_target):
    entry = hub.get_or_export(_Sort().eval(), torch.randn(1, 4, 4), {"block": "sort"}, tmp_path / "cache")
    with pytest.raises(UnsupportedOpError, match=r"executorch \(XnnpackBackend\): no ExecuTorch kernel for op "
                                                 r"'aten::sort\.values'") as info:  # fmt: skip
        ExecuTorchBackend().compile(entry, make_target(), tmp_path / "out")
    assert "executorch 1.5.1" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "out" / MODEL_FILE).exists()


def test_conversion_error_is_one_line_export_error_when_no_op_is_named():
    error = conversion_error(RuntimeError("Expected all tensors to be on the same device\nmore"), "XnnpackBackend")
    assert isinstance(error, ExportError) and not isinstance(error, UnsupportedOpError)
    assert "same device" in str(error) and "\n" not in str(error)


def test_run_refuses_a_pte_of_another_program_format_in_one_line(compiled, tmp_path):
    backend, artifacts = compiled
    data = bytearray(artifacts["fp32"].path.read_bytes())
    data[4:8] = b"ET13"  # what a newer ExecuTorch's schema would write
    path = tmp_path / MODEL_FILE
    path.write_bytes(bytes(data))
    foreign = artifacts["fp32"].__class__(**{**artifacts["fp32"].__dict__, "path": path})
    with pytest.raises(ExportError, match=r"program format ET13 but this runtime \(executorch 1\.5\.1\) reads ET12"):
        backend.run(foreign, {"input": np.zeros((1, 1, 28, 28), np.float32)})
    with pytest.raises(ExportError, match="another ExecuTorch version") as info:
        backend.inspect(foreign)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("built_with", "loads"), [("1.3.0", False), ("1.6.0", False), ("1.4.2", True), ("1.5.0", True)]
)
def test_run_loads_a_pte_only_from_a_release_this_runtime_promises_to_read(compiled, built_with, loads):
    backend, artifacts = compiled
    a = artifacts["fp32"]
    recorded = a.__class__(**{**a.__dict__, "options": {**a.options, "executorch": built_with}})
    if loads:
        backend.run(recorded, {"input": np.zeros((1, 1, 28, 28), np.float32)})
        return
    with pytest.raises(ExportError, match=rf"written by ExecuTorch {built_with}.*compile it again here") as info:
        backend.run(recorded, {"input": np.zeros((1, 1, 28, 28), np.float32)})
    assert "\n" not in str(info.value)


def test_version_problem_follows_the_runtime_compatibility_policy():
    assert version_problem("1.5.1", "1.5.0") is None and version_problem(None, "1.5.1") is None
    assert version_problem("1.4.0", "1.5.1") is None and version_problem("1.9.3", "2.0.0") is None
    assert "newer" in version_problem("1.6.0", "1.5.1") and "the one before" in version_problem("1.2.0", "1.5.1")
    assert version_problem("1.5.0", "2.0.0") is None and "the one before" in version_problem("1.5.0", "2.1.0")


def test_backend_unavailable_names_the_install_command_when_executorch_is_missing(
    entry, tmp_path, monkeypatch, make_target
):
    for module in ("executorch.exir", "executorch.runtime"):
        monkeypatch.setitem(sys.modules, module, None)  # what a venv without it looks like to import
    backend = ExecuTorchBackend()
    with pytest.raises(BackendUnavailableError, match=r"pip install 'elastic-deploy\[executorch\]'") as info:
        backend.compile(entry, make_target(), tmp_path)
    assert "\n" not in str(info.value) and not (tmp_path / MODEL_FILE).exists()
    assert "elastic-deploy[executorch]" in backend.runs_here()


def test_registry_builds_both_executorch_backends():
    assert isinstance(get_backend("executorch"), ExecuTorchBackend)
    coreml = get_backend("executorch_coreml")
    assert isinstance(coreml, ExecuTorchCoreMLBackend) and coreml.needs_program
    assert coreml.version().startswith("executorch 1.5.1 / coremltools")


# --- the CoreML delegate -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def coreml_artifact(entry, tmp_path_factory, backend_target):
    pytest.importorskip("coremltools", reason="coremltools not installed: pip install 'elastic-deploy[coreml]'")
    target = backend_target("executorch_coreml", precision="fp16")
    backend = ExecuTorchCoreMLBackend()
    return backend, backend.compile(entry, target, tmp_path_factory.mktemp("coreml"))


def test_coreml_delegate_compiles_here_with_every_op_delegated_and_its_spec_read_back(coreml_artifact):
    backend, artifact = coreml_artifact
    assert artifact.path.read_bytes()[4:8] == b"ET12" and artifact.precision == "fp16"
    assert artifact.options["delegate"] == "CoreMLBackend" and artifact.options["compute_units"] == "ALL"
    report = artifact.options["delegation"]
    assert report["not_delegated_ops"] == {} and report["delegated_subgraphs"] == 1
    info = backend.inspect(artifact)  # reads the program's metadata without loading the CoreML method
    assert info["delegate_calls"] == {"CoreMLBackend": 1} and info["ops"] == {} and info["warnings"] == []
    assert [i["shape"] for i in info["inputs"]] == [[1, 1, 28, 28]] and info["outputs"][0]["shape"] == [1, 10]


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the CoreML delegate runs")
def test_coreml_delegate_run_raises_backend_unavailable_naming_macos_on_linux(coreml_artifact):
    backend, artifact = coreml_artifact
    assert "macOS" in backend.runs_here()
    with pytest.raises(BackendUnavailableError, match=r"CoreML delegate runs only on macOS and iOS"):
        backend.run(artifact, {"input": np.zeros((1, 1, 28, 28), np.float32)})


@pytest.mark.requires_macos
@pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS: ExecuTorch's CoreML backend is linked there only")
def test_coreml_delegate_matches_references_within_fp16_atol_on_macos(coreml_artifact, entry):
    backend, artifact = coreml_artifact
    report = check_parity(
        backend.run(artifact, entry.reference_inputs()), entry.reference_outputs(), PARITY_ATOL["fp16"]
    )
    assert report.ok, report.summary()


# --- end to end: a plain transformer converted to a temporary ExecuTorch target ------------------------------


def test_convert_transformer_to_executorch_writes_pte_manifest_with_delegation_and_warns(tmp_root, ship_files):
    import yaml

    from deploy.flows.convert import convert

    ship_files("targets/host-cpu-executorch.yaml")
    data = yaml.safe_load((tmp_root / "targets" / "host-cpu-executorch.yaml").read_text())
    quick = {"warmup_runs": 2, "min_runs": 5, "min_time_s": 0.0, "rounds": 3, "cv_max": 1.0, "max_retries": 0}
    data.update(name="host-et-quick", precisions=None, measurement=quick)
    (tmp_root / "targets" / "host-et-quick.yaml").write_text(yaml.safe_dump(data))
    said: list[str] = []
    result = convert(
        f"{__name__}:make_transformer", "host-et-quick", input_shape="1,16,32", out_dir=tmp_root / "et",
        say=said.append,
    )  # fmt: skip
    m = result.manifest.model_dump(mode="json", by_alias=True)
    assert (tmp_root / "et" / "model.pte").is_file() and m["backend"] == "executorch"
    assert m["validation"]["ran_here"] and m["validation"]["parity"]["max_abs_diff"] <= 1e-4
    delegation = m["artifact"]["options"]["delegation"]
    assert delegation["delegate"] == "XnnpackBackend" and delegation["n_delegated"] > 0
    assert m["validation"]["inspection"]["delegation"] == delegation
    if delegation["not_delegated_ops"]:  # the deploy says what fell back
        assert any(s.startswith("warning: ") and "not delegated" in s for s in said)
    assert m["latency"]["measured_ms"] > 0


def test_cli_convert_exits_2_with_one_line_naming_the_op_and_writes_nothing(tmp_root, ship_files, capsys):
    from deploy.cli import main

    ship_files("targets/host-cpu-executorch.yaml")
    out = tmp_root / "det"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--model", f"{__name__}:make_det", "--target", "host-cpu-executorch", "--input-shape",
              "1,4,4", "--out", str(out), "--no-measure"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "aten._linalg_det" in err and "executorch" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(Path(out).iterdir())


def make_det() -> torch.nn.Module:
    return _Det()


def make_transformer() -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
    return torch.nn.Sequential(torch.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False))


# --- a whole deploy to host-cpu-executorch, then a bench that meets a .pte of another release -----------------


def _tables(tmp_root: Path) -> str:
    """host-cpu-executorch's shipped tables; until they are measured, LiteRT's host tables stand in (same
    block keys, 1 thread): the selection then runs on LiteRT's numbers, everything after it is ExecuTorch's."""
    repo = Path(__file__).resolve().parents[2] / "latency_tables"
    for suffix, source in (("", "host-cpu-litert"), (".int8", "host-cpu-litert.int8")):
        shipped = repo / f"host-cpu-executorch{suffix}.json"
        data = json.loads((shipped if shipped.exists() else repo / f"{source}.json").read_text())
        data["provenance"]["target"] = "host-cpu-executorch"
        (tmp_root / "latency_tables" / f"host-cpu-executorch{suffix}.json").write_text(json.dumps(data))
    return "shipped" if (repo / "host-cpu-executorch.json").exists() else "stand-in"


@pytest.mark.slow
@pytest.mark.extended
def test_deploy_host_cpu_executorch_picks_a_precision_records_delegation_warns_and_bench_refuses_another_release(
    tmp_root, ship_files, capsys
):
    pytest.importorskip("mlxtend")
    from deploy.cli import main
    from deploy.flows.deploy import deploy

    ship_files("targets/host-cpu-executorch.yaml", "checkpoints")
    _tables(tmp_root)
    said: list[str] = []
    result = deploy("host-cpu-executorch", progress=False, measure=False, say=said.append)
    m = result.manifest.model_dump(mode="json", by_alias=True)
    out = tmp_root / "dist" / "host-cpu-executorch"
    assert (out / "model.pte").is_file() and m["backend"] == "executorch" and m["precision"] in ("fp32", "int8")
    options = {o["precision"]: o for o in m["accuracy"]["precisions"]}
    assert set(options) == {"fp32", "int8"}
    for o in options.values():  # each precision's artifact measured for real on val and test
        assert 0.5 < o["artifact_val_accuracy"] <= 1 and 0.5 < o["artifact_test_accuracy"] <= 1
    assert m["validation"]["ran_here"] and m["parity"]["max_abs_diff"] <= m["parity"]["tolerance"]
    delegation = m["artifact"]["options"]["delegation"]
    assert delegation["not_delegated_ops"]["aten.native_layer_norm"] > 0  # XNNPACK has no LayerNorm
    assert m["validation"]["inspection"]["ops"]["aten::native_layer_norm.out"] > 0
    assert any(s.startswith("warning: ") and "aten.native_layer_norm" in s for s in said)
    assert m["versions"]["executorch"] == "executorch 1.5.1"

    # The deployed .pte, as if built by an ExecuTorch release this runtime does not promise to read.
    manifest_path = out / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["artifact"]["options"]["executorch"] = "1.3.0"
    manifest_path.write_text(json.dumps(data))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--target", "host-cpu-executorch"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "written by ExecuTorch 1.3.0" in err and len(err.splitlines()) == 1
    assert not (tmp_root / "bench").exists(), "nothing written"
