"""The backend contract, swept over every registered backend: the smallest tiny subnet compiled for the backend's
shipped target, run here where the backend can run, against torch within the tolerance the backend declares.

A backend that cannot run here (CoreML off macOS, TensorRT and torch_cuda without an NVIDIA GPU) skips what
needs its runtime with the reason its `runs_here()` gives; what it can do here (compile, inspect) still runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from deploy.backends import BACKENDS, get_backend
from deploy.errors import BackendUnavailableError
from deploy.export.parity import check_parity

NAMES = BACKENDS.names()


@pytest.fixture(scope="session")
def contract_artifacts():
    """Per backend, its artifact of the smallest tiny subnet (or why it cannot compile here), compiled once."""
    return {}


@pytest.fixture
def compiled(request, contract_artifacts, smallest_entry, backend_target, tmp_path_factory):
    name = request.param
    if name not in contract_artifacts:
        backend, target = get_backend(name), backend_target(name)
        try:
            artifact = backend.compile(smallest_entry, target, tmp_path_factory.mktemp(f"contract-{name}"))
        except BackendUnavailableError as exc:  # a toolchain that compiles only on the device (TensorRT)
            artifact = str(exc)
        contract_artifacts[name] = (backend, target, artifact)
    backend, target, artifact = contract_artifacts[name]
    if isinstance(artifact, str):
        pytest.skip(f"{name} cannot compile here: {artifact}")
    return backend, target, artifact


@pytest.mark.parametrize("name", NAMES)
def test_version_is_a_non_empty_string(name):
    version = get_backend(name).version()
    assert isinstance(version, str) and version.strip()


@pytest.mark.parametrize("name", NAMES)
def test_parity_atol_is_declared_for_every_precision_it_compiles(name):
    backend = get_backend(name)
    assert set(backend.precisions) <= set(backend.parity_atol), name
    assert all(atol > 0 for atol in backend.parity_atol.values()), name


@pytest.mark.parametrize("compiled", NAMES, indirect=True)
def test_compile_records_the_target_precision_and_the_entry_names(compiled, smallest_entry):
    backend, target, artifact = compiled
    assert artifact.backend == backend.name and artifact.precision == target.precision
    assert artifact.input_names == smallest_entry.input_names and artifact.output_names == smallest_entry.output_names
    assert artifact.path.exists()


@pytest.mark.parametrize("compiled", NAMES, indirect=True)
def test_inspect_returns_one_entry_per_input_and_output_with_its_shape(compiled, smallest_entry):
    backend, _, artifact = compiled
    info = backend.inspect(artifact)
    if "inputs" not in info and backend.runs_here():  # e.g. a TensorRT engine is read only by TensorRT
        pytest.skip(f"{backend.name} cannot read its artifact back here: {backend.runs_here()}")
    references = smallest_entry.reference_inputs()
    assert [list(i["shape"]) for i in info["inputs"]] == [list(references[n].shape) for n in artifact.input_names]
    assert len(info["outputs"]) == len(artifact.output_names) >= 1
    assert info["precision"] == artifact.precision


@pytest.mark.parametrize("compiled", NAMES, indirect=True)
def test_run_matches_torch_within_the_declared_parity_atol(compiled, smallest_entry):
    backend, target, artifact = compiled
    reason = backend.runs_here()
    if reason is not None:
        pytest.skip(f"{backend.name} does not run here: {reason}")
    outputs = backend.run(artifact, smallest_entry.reference_inputs())
    wanted = smallest_entry.reference_outputs()
    report = check_parity(outputs, wanted, atol=backend.parity_atol[target.precision])
    assert report.ok, f"{backend.name} {target.precision}: {report.summary()}"
    assert [np.shape(o) for o in outputs] == [np.shape(wanted[n]) for n in artifact.output_names]


# --- the language-model half a backend declares (issue 25: one backend per runtime) --------------------------

LM_HALVES = [name for name in BACKENDS.names() if BACKENDS.load(name).language_model() is not None]


@pytest.fixture(scope="module")
def lm_decoder():
    import torch

    from deploy.models import build

    torch.manual_seed(0)
    net = build("matformer_lm_tiny").eval()
    return net.extract(net.config([0, 2], [32, 256]))


def test_backends_with_a_language_model_half_are_the_runtimes_that_have_one():
    assert {"onnxruntime", "tflite", "coreml"} <= set(LM_HALVES)
    assert "tensorrt" not in LM_HALVES


@pytest.mark.parametrize("name", LM_HALVES)
def test_language_model_half_compiles_opens_and_generates_what_torch_generates(name, lm_decoder, tmp_path):
    import torch

    from deploy.lm.artifact import LMArtifact, get_lm_backend
    from deploy.lm.generate import TorchSession
    from deploy.lm.parity import greedy_parity, parity_prompts
    from deploy.lm.tokenizer import ByteTokenizer
    from deploy.targets import DeviceInfo, Target

    half = get_lm_backend(name)
    assert half.name == name and half.cache in ("dynamic", "static", "state") and half.parity_atol > 0
    target = Target(name="lm-contract", device=DeviceInfo(name="host"), backend=name, budget_ms=1.0,
                    model="matformer_lm_tiny")  # fmt: skip
    try:
        artifact = half.compile_lm(lm_decoder, target, tmp_path / "lm", buckets=(8, 16), tokenizer=ByteTokenizer())
    except BackendUnavailableError as exc:
        pytest.skip(f"{name} cannot compile here: {exc}")
    assert LMArtifact.load(tmp_path / "lm").spec.backend == name
    assert half.inspect(artifact), "inspect reads facts back from the graph files"
    reason = half.runs_here()
    if reason is not None:
        pytest.skip(f"{name} artifacts do not run here: {reason}")
    prompts = parity_prompts(torch.randint(0, 256, (4, 16), generator=torch.Generator().manual_seed(3)), longest=16)
    report, _ = greedy_parity(TorchSession(lm_decoder), half.open(artifact), artifact, prompts, half.parity_atol)
    assert report.ok and report.identical == report.prompts, report.summary()


class _HalfWithoutOpen:
    name = "brokenlm"
    cache = "dynamic"
    parity_atol = 1e-4

    def runs_here(self):
        return None

    def compile_lm(self, decoder, target, out_dir, *, buckets, tokenizer):
        raise NotImplementedError

    def inspect(self, artifact):
        return {}


def test_plugin_backend_whose_language_model_half_lacks_a_method_is_one_line_naming_it(monkeypatch):
    from deploy.api import BackendBase
    from deploy.errors import PluginError
    from deploy.lm.artifact import get_lm_backend

    class Broken(BackendBase):
        name = "brokenlm"

        @classmethod
        def language_model(cls):
            return _HalfWithoutOpen

    real_load = BACKENDS.load  # as if a plugin's entry point registered Broken under its name
    monkeypatch.setattr(BACKENDS, "load", lambda name: Broken if name == "brokenlm" else real_load(name))
    with pytest.raises(PluginError, match=r"lacks open of the LMBackend protocol") as info:
        get_lm_backend("brokenlm")
    assert "\n" not in str(info.value)


def test_backend_without_a_language_model_half_names_those_that_have_one():
    from deploy.errors import DeployError
    from deploy.lm.artifact import get_lm_backend

    with pytest.raises(DeployError, match=r"tensorrt has no language-model support.*onnxruntime"):
        get_lm_backend("tensorrt")
