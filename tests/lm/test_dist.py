"""A packaged LM deploy read back (`generate --dist`): what a dist folder may name and what a prompt may hold
(issue 24). Each bad input is one named error, before any graph runs; the dist folder is never written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deploy.errors import ConfigFileError, PromptError
from deploy.lm.artifact import ARTIFACT_DIR, SPEC_FILE, LMArtifact, get_lm_backend
from deploy.lm.run import generate_text, open_dist
from deploy.lm.tokenizer import ByteTokenizer
from deploy.models import build
from deploy.packaging.manifest import (
    LMArtifactRecord,
    LMLatencyRecord,
    LMManifest,
    LMMetricRecord,
    SubnetRecord,
    TokenizerRecord,
)
from deploy.targets import DeviceInfo, Target

REPO = Path(__file__).resolve().parents[2]


def _manifest(artifact: LMArtifact) -> LMManifest:
    """A manifest as a deploy writes it for `artifact` (figures that `generate` only prints are placeholders)."""
    spec, tokenizer = artifact.spec, ByteTokenizer()
    return LMManifest(
        target="lm-test", device="host", backend=spec.backend, precision=spec.precision, model="matformer_lm_tiny",
        model_spec={}, subnet=SubnetRecord(id="s", config={}, params=None), checkpoint_sha256="0" * 64,
        artifact=LMArtifactRecord(
            dir=ARTIFACT_DIR, sha256=artifact.sha256(), backend=spec.backend, cache=spec.cache,
            prompt_buckets=list(spec.prompt_buckets), max_context=spec.max_context, kv_shape=list(spec.kv_shape),
            files=dict(spec.files), inspection={},
        ),
        tokenizer=TokenizerRecord(file="tokenizer.json", sha256=tokenizer.sha256, vocab=tokenizer.vocab,
                                  kind=tokenizer.kind),
        latency=LMLatencyRecord(
            ttft_prompt=8, predicted_ttft_ms=1.0, predicted_ttft_std_ms=0.1, decode_context=16,
            predicted_ms_per_token=1.0, predicted_ms_per_token_std=0.1, predicted_tokens_per_s=1000.0, budgets={},
            margins_pct={}, method="measured", table={},
        ),
        accuracy=LMMetricRecord(name="perplexity", direction="min", val=1.0, test=1.0, artifact_test=None,
                                artifact_windows=None, next_token_accuracy=None, task={}),
        parity=None, selection={}, versions={}, created="2026-01-01T00:00:00+00:00",
    )  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """dist/ of the tiny LM (two layers) compiled for ONNX Runtime, with its manifest."""
    torch.manual_seed(0)
    net = build("matformer_lm_tiny").eval()
    decoder = net.extract(net.config([0, 2], [32, 256]))
    target = Target(name="lm-test", device=DeviceInfo(name="host"), backend="onnxruntime", budget_ms=1.0,
                    model="matformer_lm_tiny")  # fmt: skip
    dist = tmp_path_factory.mktemp("dist") / "lm-test"
    artifact = get_lm_backend("onnxruntime").compile_lm(
        decoder, target, dist / ARTIFACT_DIR, buckets=(8, 16), tokenizer=ByteTokenizer()
    )
    _manifest(artifact).save(dist)
    return dist


@pytest.fixture
def dist(built, tmp_path) -> Path:
    """A copy of the packaged deploy this test may damage."""
    return Path(shutil.copytree(built, tmp_path / "dist" / "lm-test"))


def _edit(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _reseal(dist: Path) -> None:
    """Record the artifact folder's sha256 again, as if the manifest had been written after the edit."""
    digest = LMArtifact.load(dist / ARTIFACT_DIR).sha256()
    _edit(dist / "manifest.json", lambda m: m["artifact"].update(sha256=digest))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_open_dist_accepts_the_packaged_deploy(dist):
    packaged = open_dist(dist)
    assert packaged.artifact.spec.max_context == packaged.manifest.artifact.max_context == 32


# --- a prompt that is not UTF-8 ---------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "needle"), [("ab\udcff", "byte 0xff at character 2"),
                                                ("\ud800", "lone surrogate U+D800 at character 0")],
                         ids=["surrogate_escaped_byte", "lone_surrogate"])  # fmt: skip
def test_generate_raises_prompt_error_naming_the_byte_when_prompt_not_utf8(dist, prompt, needle):
    with pytest.raises(PromptError, match=re.escape(f"the prompt is not UTF-8 text ({needle})")):
        generate_text(dist, prompt, 4)


def test_cli_generate_exits_2_with_one_line_when_argv_prompt_not_utf8(dist):
    """The bytes reach Python as surrogate escapes (PEP 383), as a non-UTF-8 terminal passes them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "generate", "--dist", str(dist), b"def \xff("],
        capture_output=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    err = proc.stderr.decode(errors="replace")
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: the prompt is not UTF-8 text (byte 0xff at character 4)"), lines[0]
    assert proc.stdout == b""  # nothing echoed before the refusal


# --- lm.json and the manifest disagree ---------------------------------------------------------------


@pytest.mark.parametrize("reseal", [False, True], ids=["sha_as_deployed", "sha_recorded_again"])
def test_open_dist_raises_naming_both_files_and_values_when_lm_json_max_context_differs(dist, reseal):
    _edit(dist / ARTIFACT_DIR / SPEC_FILE, lambda s: s.update(max_context=1000))
    if reseal:  # without it the sha256 check would notice the edit; the agreement check must not depend on it
        _reseal(dist)
    with pytest.raises(ConfigFileError) as info:
        open_dist(dist)
    line = str(info.value)
    assert f"{dist / ARTIFACT_DIR / SPEC_FILE} gives max_context 1000" in line and "\n" not in line
    assert f"{dist / 'manifest.json'} records 32" in line and line.endswith("deploy again")


def test_open_dist_raises_naming_both_files_when_manifest_max_context_differs(dist):
    _edit(dist / "manifest.json", lambda m: m["artifact"].update(max_context=16))
    with pytest.raises(ConfigFileError, match=r"lm\.json gives max_context 32 but .*manifest\.json records 16"):
        open_dist(dist)


def test_cli_generate_exits_2_with_one_line_when_lm_json_max_context_differs(dist, capsys):
    from deploy.cli import main

    _edit(dist / ARTIFACT_DIR / SPEC_FILE, lambda s: s.update(max_context=1000))
    _reseal(dist)
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--dist", str(dist), "--max-new", "100", "abc"])
    out = capsys.readouterr()
    lines = [line for line in out.err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and "max_context 1000" in lines[0], out.err
    assert out.out == ""


# --- paths that lead out of the dist folder ------------------------------------------------------------


@pytest.mark.parametrize("where", ["../../etc", "/etc", "..", ".", "", "lm/../..", "lm\x00"])
def test_open_dist_refuses_artifact_dir_outside_the_dist_folder(dist, where):
    _edit(dist / "manifest.json", lambda m: m["artifact"].update(dir=where))
    before = _files(dist.parent)
    with pytest.raises(ConfigFileError, match=r"manifest\.json: field 'artifact\.dir' is .* not inside"):
        open_dist(dist)
    assert _files(dist.parent) == before


def test_open_dist_refuses_artifact_dir_that_is_a_symlink_out_of_the_dist_folder(dist, tmp_path):
    outside = Path(shutil.copytree(dist / ARTIFACT_DIR, tmp_path / "elsewhere"))
    shutil.rmtree(dist / ARTIFACT_DIR)
    (dist / ARTIFACT_DIR).symlink_to(outside, target_is_directory=True)
    with pytest.raises(ConfigFileError, match=r"field 'artifact\.dir' is 'lm', which is not inside"):
        open_dist(dist)


@pytest.mark.parametrize("where", ["../prefill.onnx", "../../../decode.onnx", "/tmp/decode.onnx", "."])
def test_open_dist_refuses_lm_json_file_outside_the_artifact_folder(dist, where):
    """The artifact's sha256 covers its own folder only: a graph named outside it could change unnoticed."""
    (dist / "prefill.onnx").write_bytes((dist / ARTIFACT_DIR / "prefill.onnx").read_bytes())
    _edit(dist / ARTIFACT_DIR / SPEC_FILE, lambda s: s["files"].update(prefill=where))
    _edit(dist / "manifest.json", lambda m: m["artifact"]["files"].update(prefill=where))
    with pytest.raises(ConfigFileError, match=r"lm\.json: field 'files\.prefill' is .* not inside"):
        open_dist(dist)
