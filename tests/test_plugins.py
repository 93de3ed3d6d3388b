"""A user's own package (tests/data/byom: a family with int64 token inputs, a task whose metric is a loss),
installed beside elastic-deploy, deployed from a workspace of its own: no edit of elastic-deploy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PACKAGE = Path(__file__).parent / "data" / "byom"
QUICK = {"warmup_runs": 2, "min_runs": 5, "min_time_s": 0.0, "rounds": 2, "cv_max": 10.0, "max_retries": 0}
MODEL = """name: tok_model
description: a user's token model (library test)
family: token_mlp
dims: {vocab: 64, seq: 16, dim: 32, depth: 3, hidden_max: 64, classes: 4}
random_weights: {seed: 0, why: "a library test: its loss means nothing"}
task: {name: token_parity, seed: 0}
accuracy_samples: 12
"""


def _target(name: str, backend: str) -> str:
    return json.dumps(
        {
            "name": name,
            "device": {"name": "this machine"},
            "backend": backend,
            "threads": 1,
            "budget_ms": 5.0,
            "model": "tok_model",
            "measurement": {**QUICK, "calibration_subnets": 4},
        }
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The plugin installed as a user would (pip, not editable) into its own site folder."""
    site = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "byom"
    shutil.copytree(PACKAGE, source)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site),
         str(source)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return site


@pytest.fixture
def workspace(tmp_path) -> Path:
    ws = tmp_path / "ws"
    for kind in ("targets", "models", "latency_tables", "checkpoints"):
        (ws / kind).mkdir(parents=True)
    (ws / "models" / "tok_model.yaml").write_text(MODEL)
    (ws / "targets" / "tok-cpu.yaml").write_text(_target("tok-cpu", "onnxruntime"))  # JSON is YAML
    (ws / "targets" / "tok-litert.yaml").write_text(_target("tok-litert", "tflite"))
    return ws


def _cli(ws: Path, site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("ELASTIC_DEPLOY_ROOT", "ELASTIC_DEPLOY_CACHE")
    } | {"PYTHONPATH": str(site), "COLUMNS": "200", "ELASTIC_DEPLOY_LOCK_DIR": str(ws.parent / "locks")}
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], cwd=ws, env=env, capture_output=True, text=True, timeout=900
    )


def test_users_family_and_task_deploy_from_their_own_workspace_on_ort_and_litert(installed, workspace):
    pytest.importorskip("ai_edge_litert")
    families = _cli(workspace, installed, "families")
    assert families.returncode == 0 and "token_mlp" in families.stdout and "tokfam" in families.stdout, families
    checked = _cli(workspace, installed, "check", "--model", "tok_model")
    assert checked.returncode == 0, checked.stderr

    for target, artifact in (("tok-cpu", "model.onnx"), ("tok-litert", "model.tflite")):
        built = _cli(workspace, installed, "tables", "build", "--target", target)
        assert built.returncode == 0, built.stderr
        assert (workspace / "latency_tables" / f"{target}.json").exists(), "tables land in the workspace"
        done = _cli(workspace, installed, "deploy", "--target", target, "--no-measure")
        assert done.returncode == 0, done.stderr
        out = workspace / "dist" / target
        assert (out / artifact).exists()
        m = json.loads((out / "manifest.json").read_text())
        acc = m["accuracy"]
        assert acc["name"] == "nll" and acc["direction"] == "lower" and acc["task"]["task"] == "token_parity"
        assert acc["val"] > 0 and acc["artifact_test"] is not None, "the user's metric, on the compiled artifact too"
        assert abs(acc["artifact_test"] - acc["test"]) < 1e-3
        assert m["artifact"]["inputs"] == [{"name": "tokens", "shape": [1, 16], "dtype": "int64"}]
        assert m["parity"]["max_abs_diff"] <= m["parity"]["tolerance"]
        assert m["model_spec"]["family"] == "token_mlp" and m["selection"]["direction"] == "lower"
        # lower is better: no evaluated subnet the selection saw beats the choice on the metric
        exact = [c["accuracy"] for c in m["selection"]["pareto_front"] if c["source"] == "exact"]
        assert all(acc["val"] <= a + 1e-12 for a in exact)


def test_plugin_family_passes_the_protocol_sweep(installed, workspace, monkeypatch):
    from deploy.families.checks import check_family

    monkeypatch.syspath_prepend(str(installed))
    monkeypatch.setenv("ELASTIC_DEPLOY_ROOT", str(workspace))
    from deploy.families import FAMILIES
    from deploy.models import build

    monkeypatch.setattr(FAMILIES, "_plugins_read", False)  # read the entry points the fixture installed
    monkeypatch.setattr(FAMILIES, "_entries", dict(FAMILIES._entries))
    monkeypatch.setattr(FAMILIES, "_origin", dict(FAMILIES._origin))
    assert "token_mlp" in FAMILIES.names() and "tokfam" in FAMILIES.origin("token_mlp")
    assert check_family(build("tok_model")) == []


@pytest.mark.parametrize(
    ("spec_change", "needle"),
    [
        ({"family": "tokfam.nowhere:TokenMLP"}, "cannot be imported"),
        ({"family": "tokfam.family:NoSuchClass"}, "has no attribute 'NoSuchClass'"),
        ({"family": "tokfam.family:Block"}, "not a subclass of deploy.api.Supernet"),
        ({"family": "no_such_family"}, "unknown family 'no_such_family'; known:"),
        ({"dims": {"vocab": 64, "width": 3}}, "dims width are not dimensions of family token_mlp"),
        ({"task": {"name": "no_such_task"}}, "unknown task 'no_such_task'"),
    ],
)
def test_bad_model_specs_are_one_line_errors_and_write_nothing(installed, workspace, spec_change, needle):
    import yaml

    spec = {**yaml.safe_load(MODEL), **spec_change}
    (workspace / "models" / "tok_model.yaml").write_text(yaml.safe_dump(spec))
    proc = _cli(workspace, installed, "deploy", "--target", "tok-cpu", "--no-measure")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (workspace / "dist").exists()
