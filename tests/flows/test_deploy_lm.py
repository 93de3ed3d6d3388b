"""A language model end to end on the tiny LM: train (a few steps), build its LM table (tiny protocol), deploy,
generate; and the bad input of issue 18, each a one-line named error, exit 2, nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deploy.errors import PromptError
from deploy.lm.run import generate_text

REPO = Path(__file__).resolve().parents[2]
FAST = {"warmup_runs": 1, "min_runs": 2, "min_time_s": 0.0, "rounds": 2, "cv_max": 10.0, "max_retries": 0}
# one length per regime: the table builds in seconds (tests/lm/test_latency.py covers several)
LM = {"prompt_buckets": [6], "kv_lengths": [12], "ttft_prompt": 6, "decode_context": 12, "generate_tokens": 4,
      "calibration_prompts": 4}  # fmt: skip

pytestmark = pytest.mark.slow


def write_target(root: Path, name: str, estimate: dict | None = None, **budgets: float) -> None:
    import yaml

    spec = {"name": name, "device": {"name": "host"}, "backend": "onnxruntime", "threads": 1,
            "model": "matformer_lm_tiny", "measurement": FAST, "lm": {**LM, **budgets}}  # fmt: skip
    if estimate is not None:
        spec["estimate"] = estimate
    (root / "targets" / f"{name}.yaml").write_text(yaml.safe_dump(spec))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A workspace with the tiny LM trained a few steps, its tokenizer beside it, and its LM table built."""
    base = tmp_path_factory.mktemp("lm-deploy")
    root = base / "root"
    for sub in ("targets", "latency_tables", "checkpoints"):
        (root / sub).mkdir(parents=True)
    env = {"ELASTIC_DEPLOY_ROOT": str(root), "ELASTIC_DEPLOY_CACHE": str(base / "cache"),
           "ELASTIC_DEPLOY_LOCK_DIR": str(base / "locks")}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        from deploy.latency.estimate import estimate_table
        from deploy.lm.latency import build_lm_table
        from deploy.models.checkpoint import load
        from deploy.targets import load_target
        from deploy.training.train import train

        torch.manual_seed(0)
        train("matformer_lm_tiny", max_steps=10, cache_samples=8, threads=1, progress=False)
        write_target(root, "tiny-ort-lm", ttft_ms=500.0, ms_per_token=200.0)
        write_target(root, "tiny-tight-lm", ttft_ms=1e-4, ms_per_token=1e-4)
        build_lm_table(load_target("tiny-ort-lm"), load("matformer_lm_tiny")[0], progress=False)
        table = json.loads((root / "latency_tables" / "tiny-ort-lm.json").read_text())
        table["provenance"]["target"] = "tiny-tight-lm"  # the same device: its own table, as a build would write it
        (root / "latency_tables" / "tiny-tight-lm.json").write_text(json.dumps(table))
        # an ESTIMATED table that predicts every slice 1000x faster than it runs: what fits its budget runs over it
        write_target(root, "tiny-fast-table-lm", ttft_ms=0.01, ms_per_token=0.01, estimate={
            "source_target": "tiny-ort-lm", "factor": 1e-3, "derivation": "a test: 1000x too fast",
            "expected_error_pct": 10, "expected_error": "a test"})  # fmt: skip
        estimate_table(load_target("tiny-fast-table-lm"))
        yield root


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ELASTIC_DEPLOY_ROOT": str(root), "ELASTIC_DEPLOY_CACHE": str(root.parent / "cache"),
           "ELASTIC_DEPLOY_LOCK_DIR": str(root.parent / "locks"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "deploy", *args], capture_output=True, text=True, cwd=root, env=env,
                          timeout=600)  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def deployed(root):
    proc = cli(root, "deploy", "--target", "tiny-ort-lm", "--model", "matformer_lm_tiny")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "dist" / "tiny-ort-lm", proc.stdout


def test_deploy_packages_the_kv_cache_artifact_tokenizer_and_an_lm_manifest(deployed):
    dist, out = deployed
    files = sorted(p.name for p in (dist / "lm").iterdir())
    assert files == ["decode.onnx", "lm.json", "prefill.onnx", "tokenizer.json"]
    m = json.loads((dist / "manifest.json").read_text())
    assert m["kind"] == "lm" and m["artifact"]["prompt_buckets"] == [6] and m["artifact"]["max_context"] == 32
    assert m["parity"]["identical"] == m["parity"]["prompts"] == 8 and m["parity"]["new_tokens"] > 0
    lat = m["latency"]
    assert lat["predicted_ttft_ms"] > 0 and lat["predicted_ms_per_token"] > 0 and lat["measured"]["tokens_per_s"] > 0
    assert m["accuracy"]["name"] == "perplexity" and m["accuracy"]["artifact_test"] > 1
    assert "predicted TTFT" in out and (dist / "report.md").exists()


def test_generate_streams_tokens_and_prints_ttft_and_tokens_per_s(root, deployed):
    dist, _ = deployed
    proc = cli(root, "generate", "--dist", str(dist), "--max-new", "8", "def f(x):")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("def f(x):") and "TTFT" in proc.stdout and "tokens/s" in proc.stdout


def test_generate_from_python_gives_the_deployed_slice_tokens(deployed):
    dist, _ = deployed
    _, out = generate_text(dist, "import os", 5)
    assert len(out.tokens) == 5 and out.ttft_ms > 0


@pytest.mark.parametrize(
    ("prompt", "needles"),
    [("x" * 40, ("40 tokens", "at most 32")), ("", ("prompt is empty",))],
    ids=["longer_than_max_context", "empty"],
)
def test_bad_prompt_is_a_one_line_error_exit_2(root, deployed, prompt, needles):
    dist, _ = deployed
    line = one_line_error(cli(root, "generate", "--dist", str(dist), prompt), *needles)
    assert line.startswith("error:") and all(n in line for n in needles)


def test_token_ids_outside_the_vocabulary_are_refused(deployed):
    from deploy.lm.generate import check_prompt

    with pytest.raises(PromptError, match="token id 300 is outside the vocabulary"):
        check_prompt([1, 300], 256, 32)


def test_budgets_no_slice_meets_name_the_fastest_slice_ttft_and_ms_per_token(root):
    line = one_line_error(cli(root, "deploy", "--target", "tiny-tight-lm", "--model", "matformer_lm_tiny"),
                          "no matformer_lm slice", "the fastest", "TTFT", "ms/token")  # fmt: skip
    assert "tiny-tight-lm.yaml" in line
    assert not (root / "dist" / "tiny-tight-lm").exists()


def test_deploy_on_a_table_far_from_the_device_is_rescaled_by_the_drift_check_and_refused(root):
    """The drift check times the table's own prefill/decode blocks first, as an image deploy's does: a table 1000x
    too fast is caught before anything is built (issue 25)."""
    proc = cli(root, "deploy", "--target", "tiny-fast-table-lm", "--model", "matformer_lm_tiny")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    out = " ".join((proc.stdout + proc.stderr).split())
    assert "drift check on" in out and "predictions are rescaled" in out, out
    line = [x for x in proc.stderr.splitlines() if x.strip()][-1]
    for needle in ("error:", "no matformer_lm slice", "the fastest", "tiny-fast-table-lm.yaml"):
        assert needle in line, line
    assert not (root / "dist" / "tiny-fast-table-lm").exists()


def test_deploy_measured_over_budget_reselects_once_then_stops_writing_nothing(root, monkeypatch):
    """With no drift check to catch it (a device the check cannot reach), the measured generation loop does."""
    from deploy.errors import MeasuredOverBudgetError
    from deploy.flows import lm
    from deploy.flows.deploy import deploy
    from deploy.latency.drift import Correction

    said: list[str] = []
    skipped = {r: Correction(skipped="not reachable in this test") for r in ("prefill", "decode")}
    monkeypatch.setattr(lm, "lm_corrections", lambda *a, **k: dict(skipped))
    with pytest.raises(MeasuredOverBudgetError) as info:
        deploy("tiny-fast-table-lm", "matformer_lm_tiny", say=said.append)
    line = str(info.value)
    for needle in ("tiny-fast-table-lm", "measured TTFT", "> 0.01 ms budget", "re-selected with that correction",
                   "tables build --target tiny-fast-table-lm"):  # fmt: skip
        assert needle in line, line
    assert any("selecting once more with the predictions rescaled" in m for m in said), said
    assert not (root / "dist" / "tiny-fast-table-lm").exists()


def test_over_budget_rescales_each_regime_by_measured_over_predicted():
    from deploy.flows.lm import over_budget
    from deploy.packaging.manifest import GenerationTiming
    from deploy.targets import load_target

    target = load_target("host-cpu-ort-lm")  # ttft_ms 1.5 at 64 tokens, 0.3 ms/token
    timing = GenerationTiming(ttft_ms=3.0, ms_per_token=0.2, tokens_per_s=5000, prompt_tokens=64, generated_tokens=32,
                              loops=10, where="test")  # fmt: skip
    predicted = {"prefill": 1.0, "decode": 0.1}
    over = over_budget(target, "abc", timing, predicted, per_token_ms=0.1, corrections={"prefill": 2.0})
    assert over is not None and over[1] == pytest.approx({"prefill": 6.0, "decode": 2.0})
    assert "TTFT 3.000 ms (predicted 1.000) > 1.5 ms budget" in over[0]
    fits = GenerationTiming(ttft_ms=1.0, ms_per_token=0.2, tokens_per_s=5000, prompt_tokens=64, generated_tokens=32,
                            loops=10, where="test")  # fmt: skip
    assert over_budget(target, "abc", fits, predicted, per_token_ms=0.1, corrections={}) is None


def test_a_tokenizer_that_does_not_match_is_refused_at_deploy_and_at_generate(root, deployed, tmp_path):
    dist, _ = deployed
    copy = tmp_path / "dist"
    shutil.copytree(dist, copy)
    (copy / "lm" / "tokenizer.json").write_text('{"format": 1, "kind": "bytes", "vocab": 128}\n')
    one_line_error(cli(root, "generate", "--dist", str(copy), "x"), "tokenizer", "vocabulary of 128")

    tokenizer = root / "checkpoints" / "matformer_lm_tiny.tokenizer.json"
    saved = tokenizer.read_bytes()
    tokenizer.write_text('{"format": 1, "kind": "bytes", "vocab": 256, "note": "another"}\n')
    try:
        before = sorted(p.name for p in root.iterdir())
        one_line_error(cli(root, "deploy", "--target", "tiny-ort-lm", "--model", "matformer_lm_tiny", "--out",
                           str(tmp_path / "new")), "is not the one checkpoint")  # fmt: skip
        assert not (tmp_path / "new").exists() and sorted(p.name for p in root.iterdir()) == before
    finally:
        tokenizer.write_bytes(saved)


def test_an_lm_on_a_target_without_an_lm_section_is_refused_naming_the_lm_targets():
    from deploy.errors import ConfigFileError
    from deploy.flows.deploy import deploy

    with pytest.raises(ConfigFileError, match=r"is a language model .* --target host-cpu-ort-lm"):
        deploy("host-cpu-ort", "matformer_lm_tiny", out_dir=Path("/nonexistent/never-written"))


def test_bench_of_a_language_model_deploy_says_it_is_for_generate(root, deployed):
    dist, _ = deployed
    one_line_error(cli(root, "bench", "--target", "tiny-ort-lm", "--dist", str(dist)), "kind 'lm'", "`generate`")


def test_lm_deploy_records_an_observation_per_regime_and_the_drift_check_in_its_manifest(root, deployed):
    dist, printed = deployed
    manifest = json.loads((dist / "manifest.json").read_text())
    assert manifest["kind"] == "lm" and "drift check on" in " ".join(printed.split())
    drift = manifest["drift"]
    assert set(drift["corrections"]) == {"prefill", "decode"}
    assert len({o["family"] for o in drift["observations"]}) == 2, "one observation per regime"
    lines = (root.parent / "cache" / "observations" / "tiny-ort-lm.jsonl").read_text().splitlines()
    assert len(lines) >= 2
