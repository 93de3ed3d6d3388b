"""LM artifacts with a KV cache, per backend: compiled, opened, and greedy generation identical to torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deploy.errors import BackendUnavailableError, PromptError, TokenizerError
from deploy.lm.artifact import LMArtifact, get_lm_backend
from deploy.lm.generate import TorchSession, greedy
from deploy.lm.parity import greedy_parity, parity_prompts
from deploy.lm.tokenizer import ByteTokenizer
from deploy.models import build
from deploy.targets import DeviceInfo, Target


def _target(backend: str, precision: str = "fp32") -> Target:
    return Target(name="lm-test", device=DeviceInfo(name="host"), backend=backend, budget_ms=1.0,
                  model="matformer_lm_tiny", precision=precision)  # fmt: skip


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(0)
    net = build("matformer_lm_tiny").eval()
    return net.extract(net.config([0, 2], [32, 256]))


@pytest.fixture(scope="module")
def prompts():
    return parity_prompts(torch.randint(0, 256, (8, 16), generator=torch.Generator().manual_seed(3)), longest=16)


@pytest.fixture(scope="module")
def ort(decoder, tmp_path_factory):
    backend = get_lm_backend("onnxruntime")
    return backend, backend.compile_lm(decoder, _target("onnxruntime"), tmp_path_factory.mktemp("ort"),
                                       buckets=(8, 16), tokenizer=ByteTokenizer())  # fmt: skip


@pytest.fixture(scope="module")
def litert(decoder, tmp_path_factory):
    pytest.importorskip("litert_torch", reason="litert-torch not installed: pip install 'elastic-deploy[tflite]'")
    backend = get_lm_backend("tflite")
    return backend, backend.compile_lm(decoder, _target("tflite"), tmp_path_factory.mktemp("litert"),
                                       buckets=(8, 16), tokenizer=ByteTokenizer())  # fmt: skip


@pytest.mark.parametrize("which", ["ort", "litert"])
def test_greedy_generation_of_32_tokens_from_8_prompts_is_identical_to_torch(which, decoder, prompts, request):
    backend, artifact = request.getfixturevalue(which)
    report, got = greedy_parity(TorchSession(decoder), backend.open(artifact), artifact, prompts, backend.parity_atol)
    assert report.ok, report.summary()
    assert report.prompts == 8 and report.identical == 8
    assert all(len(g.tokens) == min(32, artifact.spec.max_context - len(g.prompt) + 1) for g in got)


def test_onnxruntime_artifact_is_a_folder_with_prefill_decode_tokenizer_and_spec(ort):
    backend, artifact = ort
    names = sorted(p.name for p in artifact.dir.iterdir())
    assert names == ["decode.onnx", "lm.json", "prefill.onnx", "tokenizer.json"]
    spec = LMArtifact.load(artifact.dir).spec
    assert spec.cache == "dynamic" and spec.kv_shape == (4, 2, 16) and spec.max_context == 32
    facts = backend.inspect(artifact)
    assert [i["name"] for i in facts["decode"]["inputs"]] == ["token", "past"]
    assert facts["decode"]["outputs"][1]["shape"] == [4, 2, "context", 16]
    assert artifact.tokenizer() == ByteTokenizer()


def test_litert_artifact_holds_one_prefill_signature_per_bucket_and_a_decode(litert):
    backend, artifact = litert
    signatures = backend.inspect(artifact)["signatures"]
    assert sorted(signatures) == ["decode", "prefill_16", "prefill_8"]
    kv = next(i for i in signatures["decode"]["inputs"] if i["name"] == "kv")
    assert kv["shape"] == [4, 2, 32, 16]  # the fixed maximum context


def test_prompt_longer_than_the_largest_bucket_is_a_prompt_error(litert):
    backend, artifact = litert
    with pytest.raises(PromptError, match="longest prefill takes 16"):
        backend.open(artifact).prefill(np.arange(17))


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [([], "empty"), (list(range(33)), "33 tokens but the model takes at most 32"), ([3, 256], "token id 256")],
)
def test_bad_prompts_are_named_errors(decoder, prompt, needle):
    with pytest.raises(PromptError, match=needle):
        greedy(TorchSession(decoder), prompt, 4, vocab=256, max_context=32)


def test_generation_stops_at_the_maximum_context(decoder):
    out = greedy(TorchSession(decoder), list(range(30)), 10, vocab=256, max_context=32)
    assert len(out.tokens) == 3 and out.ttft_ms > 0 and len(out.decode_ms) == 2


def test_a_tokenizer_file_that_does_not_match_the_artifact_is_refused(ort, tmp_path):
    import shutil

    _, artifact = ort
    copy = tmp_path / "copy"
    shutil.copytree(artifact.dir, copy)
    (copy / "tokenizer.json").write_text('{"format": 1, "kind": "bytes", "vocab": 512}\n')
    with pytest.raises(TokenizerError, match="vocabulary of 512 but"):
        LMArtifact.load(copy).tokenizer()


def test_coreml_lm_is_a_stateful_multifunction_program_inspected_on_linux(decoder, tmp_path):
    pytest.importorskip("coremltools", reason="coremltools not installed: pip install 'elastic-deploy[coreml]'")
    backend = get_lm_backend("coreml")
    artifact = backend.compile_lm(decoder, _target("coreml", "fp16"), tmp_path, buckets=(8,), tokenizer=ByteTokenizer())
    facts = backend.inspect(artifact)
    assert sorted(facts["functions"]) == ["decode", "prefill_8"]
    decode = facts["functions"]["decode"]
    assert decode["states"] == [{"name": "kv", "shape": [4, 2, 32, 16], "dtype": "float16"}]
    assert {"read_state", "write_state"} <= set(decode["ops"])
    assert set(decode["compute_dtypes"]) <= {"float16", "float32"} and decode["compute_dtypes"]["float16"] > 0
    if backend.runs_here() is not None:
        with pytest.raises(BackendUnavailableError, match="macOS"):
            backend.open(artifact)
