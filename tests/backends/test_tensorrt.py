from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from deploy.backends import cuda
from deploy.backends.base import Artifact
from deploy.backends.tensorrt import (
    PARITY_ATOL,
    TensorRTBackend,
    calibration_batches,
    layer_counts,
    parse_failure,
    timing_cache_path,
)
from deploy.errors import (
    BackendUnavailableError,
    DataShapeError,
    ExportError,
    UnsupportedOpError,
    UnsupportedPrecisionError,
)
from deploy.export import hub
from deploy.export.parity import check_parity
from deploy.latency.stats import MeasureProtocol

HAS_GPU = cuda.device_count() > 0
RUNS_HERE = TensorRTBackend().runs_here() is None
needs_gpu = pytest.mark.skipif(
    not HAS_GPU, reason="needs an NVIDIA GPU with cuda-python: pip install 'elastic-deploy[tensorrt]'"
)
needs_tensorrt = pytest.mark.skipif(
    not RUNS_HERE,
    reason="needs TensorRT >= 10 and an NVIDIA GPU: pip install 'elastic-deploy[tensorrt]' on a CUDA machine",
)
QUICK = MeasureProtocol(warmup_runs=3, min_runs=5, min_time_s=0.0, rounds=3, max_retries=0)


@pytest.fixture(scope="module")
def make_target(backend_target):
    """The shipped tensorrt target serving the tiny model (tests/backends/conftest.py), with overrides."""
    return functools.partial(backend_target, "tensorrt")


def fake_entry(tmp_path: Path) -> hub.HubEntry:
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not read before the availability check")
    return hub.HubEntry("k", tmp_path, onnx_path, None, ("input",), ("logits",))


# --- here: no TensorRT, no GPU -------------------------------------------------------------------


def test_version_returns_a_string_without_raising():
    version = TensorRTBackend().version()
    assert isinstance(version, str) and version


def test_version_says_not_installed_when_tensorrt_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert TensorRTBackend().version() == "tensorrt not installed"


def test_runs_here_names_tensorrt_and_the_pip_extra_when_tensorrt_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what an environment without it looks like to import
    reason = TensorRTBackend().runs_here()
    assert reason and "TensorRT" in reason and "pip install 'elastic-deploy[tensorrt]'" in reason
    assert "JetPack" in reason


def test_runs_here_names_cuda_python_when_it_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    reason = TensorRTBackend().runs_here()
    assert reason and "cuda-python" in reason


def test_device_count_is_zero_without_raising_when_cuda_python_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "cuda", None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)
    assert cuda.device_count() == 0


@pytest.mark.skipif(HAS_GPU, reason="a CUDA device is present here")
def test_device_count_is_zero_without_raising_when_no_gpu():
    assert cuda.device_count() == 0


@pytest.mark.skipif(RUNS_HERE, reason="TensorRT and a GPU are present here")
def test_compile_raises_backend_unavailable_naming_the_device_command_when_it_cannot_build(tmp_path, make_target):
    entry = fake_entry(tmp_path)
    target = make_target(precision="fp16")
    with pytest.raises(BackendUnavailableError, match=rf"elastic-deploy compile --target {target.name} .*model\.onnx"):
        TensorRTBackend().compile(entry, target, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_compile_raises_unsupported_precision_before_the_availability_check(tmp_path, make_target):
    with pytest.raises(UnsupportedPrecisionError, match="supports fp32, fp16, int8"):
        TensorRTBackend().compile(fake_entry(tmp_path), make_target(precision="int8_dynamic"), tmp_path / "out")


@pytest.mark.skipif(RUNS_HERE, reason="TensorRT and a GPU are present here")
def test_inspect_returns_the_not_inspected_reason_for_an_engine_file_when_tensorrt_missing(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"\0" * 1234)
    options = {"precision": "fp16", "tensorrt": "10.7.0", "gpu": "NVIDIA Jetson Orin"}
    artifact = Artifact(path, "tensorrt", "fp16", ("input",), ("logits",), options)
    info = TensorRTBackend().inspect(artifact)
    assert info["note"].startswith("not inspected: ") and "tensorrt" in info["note"]
    assert info["file_bytes"] == 1234 and info["options"] == options and info["precision"] == "fp16"


@pytest.mark.skipif(RUNS_HERE, reason="TensorRT and a GPU are present here")
def test_run_raises_backend_unavailable_when_it_cannot_run_here(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"engine")
    artifact = Artifact(path, "tensorrt", "fp32", ("input",), ("logits",))
    with pytest.raises(BackendUnavailableError, match="cannot run TensorRT engine"):
        TensorRTBackend().run(artifact, {"input": np.zeros((1, 3, 8, 8), np.float32)})


def test_calibration_batches_raises_data_shape_error_naming_both_shapes_when_shape_is_wrong():
    with pytest.raises(DataShapeError, match=r"shape \(4, 3, 16, 16\).*\(1, 3, 32, 32\)"):
        calibration_batches(np.zeros((4, 3, 16, 16)), (1, 3, 32, 32), n=8)


def test_calibration_batches_raises_data_shape_error_when_empty():
    with pytest.raises(DataShapeError, match="no images"):
        calibration_batches(np.zeros((0, 3, 32, 32)), (1, 3, 32, 32), n=8)


@pytest.mark.parametrize("data_shape", [(10, 3, 32, 32), (10, 1, 3, 32, 32)])
def test_calibration_batches_returns_at_most_n_float32_batches_of_the_input_shape(data_shape):
    data = np.arange(np.prod(data_shape), dtype=np.float64).reshape(data_shape)
    batches = calibration_batches(data, (1, 3, 32, 32), n=4)
    assert len(batches) == 4
    assert all(b.shape == (1, 3, 32, 32) and b.dtype == np.float32 and b.flags.c_contiguous for b in batches)
    np.testing.assert_array_equal(batches[1].ravel(), data.reshape(10, -1)[1])


def test_parse_failure_is_unsupported_op_naming_the_op_when_no_importer():
    messages = [
        "ErrorCode.UNSUPPORTED_NODE: In node 0 with name: n and operator: NoSuchOpHere "
        "(importFallbackPluginImporter): UNSUPPORTED_NODE: Assertion failed: Plugin not found"
    ]
    error = parse_failure(messages, Path("m.onnx"), "10.7.0")
    assert isinstance(error, UnsupportedOpError)
    assert "'NoSuchOpHere'" in str(error) and "tensorrt" in str(error)


def test_parse_failure_is_one_line_export_error_otherwise():
    error = parse_failure(["ErrorCode.INVALID_GRAPH: bad graph\nmore detail"], Path("m.onnx"), "10.7.0")
    assert isinstance(error, ExportError) and "\n" not in str(error) and "bad graph" in str(error)


def test_layer_counts_counts_layer_types_and_names_only_layers():
    detailed = json.dumps({"Layers": [{"LayerType": "Myelin"}, {"LayerType": "Reformat"}, {"LayerType": "Myelin"}]})
    assert layer_counts(detailed) == {"Myelin": 2, "Reformat": 1}
    assert layer_counts(json.dumps({"Layers": ["a", "b"]})) == {"unknown (names only)": 2}


def test_parity_tolerances_cover_every_precision_and_loosen_with_it():
    assert set(PARITY_ATOL) == set(TensorRTBackend.precisions)
    assert PARITY_ATOL["fp32"] < PARITY_ATOL["fp16"] < PARITY_ATOL["int8"]


def test_timing_cache_path_lies_next_to_the_latency_table(tmp_root, make_target):
    target = make_target()
    assert timing_cache_path(target) == target.table_write_path.parent / f"{target.name}.trt-timing-cache"


# --- an NVIDIA GPU with cuda-python (no TensorRT needed) ------------------------------------------


@pytest.mark.requires_gpu
@needs_gpu
def test_device_buffer_round_trips_a_numpy_array():
    stream = cuda.CudaStream()
    a, b = cuda.DeviceBuffer((256, 257), np.float32), cuda.DeviceBuffer((256, 257), np.float32)
    x = np.random.default_rng(0).random((256, 257), dtype=np.float32)
    keep = a.h2d(x, stream)
    cuda.copy_d2d(b, a, stream)
    y = b.d2h(stream)
    stream.synchronize()
    del keep
    np.testing.assert_array_equal(x, y)


@pytest.mark.requires_gpu
@needs_gpu
def test_time_enqueue_returns_positive_times_for_a_device_to_device_copy():
    stream = cuda.CudaStream()
    src, dst = cuda.DeviceBuffer((4 << 20,), np.uint8), cuda.DeviceBuffer((4 << 20,), np.uint8)
    times = cuda.time_enqueue(lambda _s: cuda.copy_d2d(dst, src, stream), stream, 600)  # > one event chunk
    assert len(times) == 600 and all(t > 0 for t in times)
    assert "no CUDA device" not in cuda.gpu_name()


@pytest.mark.requires_gpu
@needs_gpu
def test_time_once_feeds_the_shared_interleaved_loop_with_gpu_times_in_item_order():
    from deploy.latency.measure import measure_interleaved

    stream = cuda.CudaStream()
    small = cuda.DeviceBuffer((1 << 16,), np.uint8), cuda.DeviceBuffer((1 << 16,), np.uint8)
    large = cuda.DeviceBuffer((64 << 20,), np.uint8), cuda.DeviceBuffer((64 << 20,), np.uint8)
    calls = {
        "small": lambda: cuda.time_once(lambda _s: cuda.copy_d2d(small[1], small[0], stream), stream),
        "large": lambda: cuda.time_once(lambda _s: cuda.copy_d2d(large[1], large[0], stream), stream),
    }
    stats = measure_interleaved(calls, QUICK, where="test, CUDA events", self_timed=True)
    assert list(stats) == ["small", "large"]
    assert all(s.n_runs >= QUICK.min_runs * QUICK.rounds and s.where == "test, CUDA events" for s in stats.values())
    assert stats["large"].median_ms > stats["small"].median_ms


# --- TensorRT and an NVIDIA GPU -------------------------------------------------------------------


@pytest.mark.requires_gpu
@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_compile_builds_an_engine_that_matches_references_within_parity_atol(
    entry, tmp_root, tmp_path, precision, make_target
):
    backend, target = TensorRTBackend(), make_target(precision=precision)
    artifact = backend.compile(entry, target, tmp_path / "dist")
    assert artifact.path == tmp_path / "dist" / "model.engine" and artifact.path.stat().st_size > 0
    assert artifact.options["tensorrt"] == backend.version() and artifact.options["gpu"] == cuda.gpu_name()
    assert timing_cache_path(target).stat().st_size > 0
    if precision == "int8":
        assert (tmp_path / "dist" / "calibration.cache").exists()
    outputs = backend.run(artifact, entry.reference_inputs())
    report = check_parity(outputs, entry.reference_outputs(), atol=PARITY_ATOL[precision])
    assert report.ok, report


@pytest.mark.requires_gpu
@needs_tensorrt
def test_local_runner_times_engines_with_cuda_events_and_inspect_reads_the_engine(
    entry, tmp_root, tmp_path, make_target
):
    from deploy.runners.local import LocalRunner

    backend = TensorRTBackend()
    artifact = backend.compile(entry, make_target(precision="fp16"), tmp_path / "dist")
    inputs = entry.reference_inputs()
    stats = LocalRunner().benchmark_many(backend, [(artifact, inputs), (artifact, inputs)], QUICK)
    assert len(stats) == 2
    assert all(s.n_runs >= QUICK.min_runs * QUICK.rounds and "CUDA events" in s.where for s in stats)
    backend.timed_call(artifact, inputs)()
    info = backend.inspect(artifact)
    assert [t["name"] for t in info["inputs"]] == list(entry.input_names) and info["n_layers"] > 0
    assert "note" not in info and info.get("ops")


@pytest.mark.requires_gpu
@needs_tensorrt
def test_compile_raises_unsupported_op_naming_the_op_when_tensorrt_has_no_importer(tmp_root, tmp_path, make_target):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOpHere", ["input"], ["output"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    bad = hub.HubEntry("k", tmp_path, path, None, ("input",), ("output",))
    with pytest.raises(UnsupportedOpError, match=r"tensorrt \S+ cannot import op 'NoSuchOpHere'"):
        TensorRTBackend().compile(bad, make_target(), tmp_path / "out")
