from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from deploy.backends.torch_cuda import PARITY_ATOL, TorchCudaBackend
from deploy.errors import BackendUnavailableError, UnsupportedPrecisionError
from deploy.export.parity import check_parity

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs an NVIDIA GPU and a CUDA build of torch (this torch has no CUDA)"
)


@pytest.fixture(scope="module")
def make_target(backend_target):
    """The shipped torch_cuda target serving the tiny model (tests/backends/conftest.py), with overrides."""
    return functools.partial(backend_target, "torch_cuda")


def test_compile_writes_the_program_and_inspect_counts_its_ops(entry, tmp_path, make_target):
    backend = TorchCudaBackend()
    artifact = backend.compile(entry, make_target(), tmp_path)
    assert artifact.path == tmp_path / "model.pt2" and artifact.precision == "fp16"
    info = backend.inspect(artifact)
    assert info["n_ops"] > 10 and any("linear" in op or "addmm" in op for op in info["ops"])
    assert info["inputs"][0]["shape"] == list(entry.reference_inputs()["input"].shape)


def test_compile_raises_unsupported_precision_for_int8(entry, tmp_path, make_target):
    with pytest.raises(UnsupportedPrecisionError, match="supports fp32, fp16"):
        TorchCudaBackend().compile(entry, make_target(precision="int8"), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_run_raises_backend_unavailable_naming_the_gpu_when_there_is_no_cuda(entry, tmp_path, make_target):
    backend = TorchCudaBackend()
    artifact = backend.compile(entry, make_target(), tmp_path)
    assert "NVIDIA GPU" in (backend.runs_here() or "")
    with pytest.raises(BackendUnavailableError, match="NVIDIA GPU"):
        backend.run(artifact, entry.reference_inputs())


@pytest.mark.requires_gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_run_matches_torch_on_new_inputs_after_other_gpu_work(tiny_subnet, entry, tmp_path, precision, make_target):
    # The captured graph must keep its weights alive: other allocations between runs once overwrote them.
    backend = TorchCudaBackend()
    artifact = backend.compile(entry, make_target(precision=precision), tmp_path)
    report = check_parity(
        backend.run(artifact, entry.reference_inputs()), entry.reference_outputs(), PARITY_ATOL[precision]
    )
    assert report.ok, report.summary()
    rng = np.random.default_rng(0)
    for _ in range(3):
        garbage = [torch.randn(1 << 20, device="cuda") for _ in range(8)]  # reuse freed memory, if any
        x = rng.standard_normal(entry.reference_inputs()["input"].shape).astype(np.float32)
        got = backend.run(artifact, {"input": x})[0]
        with torch.no_grad():
            want = tiny_subnet(torch.from_numpy(x)).numpy()
        assert np.abs(got - want).max() <= PARITY_ATOL[precision]
        del garbage


@pytest.mark.requires_gpu
@needs_cuda
def test_local_runner_times_with_cuda_events(entry, tmp_path, make_target):
    from deploy.latency.stats import MeasureProtocol
    from deploy.runners.local import LocalRunner

    backend = TorchCudaBackend()
    artifact = backend.compile(entry, make_target(), tmp_path)
    protocol = MeasureProtocol(warmup_runs=5, min_runs=20, min_time_s=0.0, rounds=3)
    stats = LocalRunner().benchmark(backend, artifact, entry.reference_inputs(), protocol)
    assert "CUDA events" in stats.where and stats.n_runs >= 60 and 0 < stats.median_ms < 10
