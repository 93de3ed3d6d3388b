"""bench(target) on a real deployed artifact (shipped model, table and target; real ORT, real measurement)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from deploy.backends.onnxruntime import OnnxRuntimeBackend
from deploy.errors import BenchGateError, DeployError
from deploy.flows.bench import bench, evaluate
from deploy.targets import load_target

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TARGET = "host-cpu-ort"
SHORT = {"warmup_runs": 5, "rounds": 3, "min_runs": 5, "min_time_s": 0, "max_retries": 0}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """One deploy (≈15 s) shared by the module: a root with the shipped target, table, checkpoints and dist."""
    from deploy.flows.deploy import deploy

    root = tmp_path_factory.mktemp("deployed")
    for rel in (f"targets/{TARGET}.yaml", f"latency_tables/{TARGET}.json", "checkpoints"):
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ELASTIC_DEPLOY_ROOT", str(root))
        mp.setenv("ELASTIC_DEPLOY_CACHE", str(root / ".cache"))
        deploy(TARGET, progress=False, measure=False)
    return root


def edit_target(root: Path, **changes) -> None:
    path = root / "targets" / f"{TARGET}.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
def root(tmp_root, deployed) -> Path:
    """A fresh root per test holding the deployed dist and the target with a short measurement protocol."""
    shutil.copytree(deployed / "dist", tmp_root / "dist")
    shutil.copy2(deployed / "targets" / f"{TARGET}.yaml", tmp_root / "targets" / f"{TARGET}.yaml")
    data = yaml.safe_load((tmp_root / "targets" / f"{TARGET}.yaml").read_text())
    edit_target(tmp_root, measurement={**data["measurement"], **SHORT}, budget_ms=100.0)
    return tmp_root


def slow_down(monkeypatch, extra_s: float) -> None:
    """Real extra work per inference: a busy loop after every timed call."""
    original = OnnxRuntimeBackend.timed_call

    def timed_call(self, artifact, inputs):
        call = original(self, artifact, inputs)

        def slowed() -> object:
            out = call()
            end = time.perf_counter() + extra_s
            while time.perf_counter() < end:
                pass
            return out

        return slowed

    monkeypatch.setattr(OnnxRuntimeBackend, "timed_call", timed_call)


def test_bench_writes_json_and_markdown_with_measurement_prediction_budget_and_environment(root):
    result = bench(TARGET, tolerance_pct=1e6)
    data = json.loads((root / "bench" / f"{TARGET}.json").read_text())
    manifest = json.loads((root / "dist" / TARGET / "manifest.json").read_text())
    m = data["measured"]
    assert result.json_path == root / "bench" / f"{TARGET}.json" and result.passed
    assert 0 < m["median_ms"] <= m["p90_ms"] and m["n_runs"] >= 15 and len(m["round_medians_ms"]) == 3
    assert m["cv"] >= 0 and m["where"].startswith("local:")
    assert data["predicted_ms"] == manifest["latency"]["predicted_ms"] and data["budget_ms"] == 100.0
    assert data["artifact_sha256"] == manifest["artifact"]["sha256"] and data["subnet"] == manifest["subnet"]["id"]
    env = data["environment"]
    assert env["runtime"]["onnxruntime"] and env["threads"] == 2 and env["cpu_model"]
    assert {"scaling_governor", "thermal"} <= set(env) and data["sustained"] is None
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["budget"]["passed"] is True and checks["prediction"]["passed"] is True
    assert checks["baseline"]["passed"] is None and "--update-baseline" in checks["baseline"]["detail"]
    md = (root / "bench" / f"{TARGET}.md").read_text()
    assert f"median {m['median_ms']:.3f} ms" in md and "predicted" in md and "not evaluated" in md


def test_bench_sustained_reports_drift_between_first_and_last_quarter(root):
    bench(TARGET, tolerance_pct=1e6, sustained_s=0.5)
    sus = json.loads((root / "bench" / f"{TARGET}.json").read_text())["sustained"]
    assert sus["seconds"] >= 0.5 and sus["rounds"] >= 8
    q = sus["rounds"] // 4
    assert sus["first_quarter_median_ms"] == pytest.approx(float(np.median(sus["round_medians_ms"][:q])))
    assert sus["last_quarter_median_ms"] == pytest.approx(float(np.median(sus["round_medians_ms"][-q:])))
    expected = (sus["last_quarter_median_ms"] - sus["first_quarter_median_ms"]) / sus["first_quarter_median_ms"] * 100
    assert sus["drift_pct"] == pytest.approx(expected, abs=1e-3)
    assert "sustained" in (root / "bench" / f"{TARGET}.md").read_text()


def test_bench_without_dist_says_to_deploy_first(tmp_root):
    shutil.copy2(REPO / "targets" / f"{TARGET}.yaml", tmp_root / "targets" / f"{TARGET}.yaml")
    with pytest.raises(DeployError, match=rf"manifest.json does not exist; run `make deploy TARGET={TARGET}` first"):
        bench(TARGET)
    assert not (tmp_root / "bench").exists()


def test_bench_rejects_artifact_changed_after_deploy(root):
    onnx = root / "dist" / TARGET / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    with pytest.raises(DeployError, match=r"sha256 .* but the manifest says"):
        bench(TARGET)


@pytest.mark.parametrize("where", ["..", "/", "../../etc/..", "symlink"])
def test_bench_refuses_artifact_path_outside_the_dist_folder_writing_nothing(root, tmp_path, where):
    """The artifact is read beside the manifest by name: a name or symlink leading out of the folder would
    escape the sha256 check (a copy outside with the recorded sha256 is accepted otherwise)."""
    from deploy.errors import ConfigFileError

    dist = root / "dist" / TARGET
    manifest = json.loads((dist / "manifest.json").read_text())
    if where == "symlink":
        outside = tmp_path / "model.onnx"
        shutil.move(dist / "model.onnx", outside)
        (dist / "model.onnx").symlink_to(outside)
    else:
        manifest["artifact"]["path"] = where
        (dist / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigFileError, match=r"manifest\.json: field 'artifact\.path' is .* not inside"):
        bench(TARGET, dist_dir=dist)
    assert not (root / "bench").exists()


def test_bench_baseline_round_trip_compares_second_run_with_stored_baseline(root):
    first = bench(TARGET, tolerance_pct=1e6, update_baseline=True)
    base_path = root / "bench" / "baselines" / f"{TARGET}.json"
    base = json.loads(base_path.read_text())
    assert base["measured"]["median_ms"] == first.measured.median_ms
    # the comparison itself, made deterministic on a noisy VM: the stored baseline is 10x slower
    base["measured"]["median_ms"] = 10 * first.measured.median_ms
    base_path.write_text(json.dumps(base))
    second = bench(TARGET, tolerance_pct=1e6)
    check = {c.name: c for c in second.checks}["baseline"]
    assert check.passed is True and check.reference_ms == 10 * first.measured.median_ms
    assert json.loads((root / "bench" / f"{TARGET}.json").read_text())["baseline"] == str(base_path)


def test_bench_slowed_artifact_fails_baseline_gate_after_writing_json(root, monkeypatch):
    base = bench(TARGET, tolerance_pct=1e6, update_baseline=True).measured.median_ms
    slow_down(monkeypatch, 0.003)  # ≈ 10x this subnet's latency
    with pytest.raises(BenchGateError) as info:
        bench(TARGET, tolerance_pct=1e6)
    data = json.loads((root / "bench" / f"{TARGET}.json").read_text())
    measured = data["measured"]["median_ms"]
    assert measured > base + 2.5 and data["passed"] is False
    message = str(info.value)
    assert "\n" not in message and "baseline check failed" in message and "--update-baseline" in message
    assert f"{measured:.3f} ms" in message and f"{base:.3f} ms" in message
    assert "budget check" not in message and "prediction check" not in message


def test_bench_over_budget_fails_with_both_numbers(root):
    edit_target(root, budget_ms=0.001)
    with pytest.raises(BenchGateError, match=r"budget check failed: measured median [\d.]+ ms vs budget 0\.001 ms"):
        bench(TARGET, tolerance_pct=1e6)
    assert json.loads((root / "bench" / f"{TARGET}.json").read_text())["checks"][0]["passed"] is False


def test_bench_update_baseline_is_refused_when_gate_fails(root):
    edit_target(root, budget_ms=0.001)
    with pytest.raises(BenchGateError):
        bench(TARGET, tolerance_pct=1e6, update_baseline=True)
    assert not (root / "bench" / "baselines" / f"{TARGET}.json").exists()


def test_bench_prediction_outside_tolerance_fails_with_both_numbers(root):
    edit_target(root, bench_tolerance_pct=1e-6)
    with pytest.raises(BenchGateError) as info:
        bench(TARGET)
    data = json.loads((root / "bench" / f"{TARGET}.json").read_text())
    measured, predicted = data["measured"]["median_ms"], data["predicted_ms"]
    assert data["tolerance_pct"] == 1e-6
    assert re.search(
        rf"prediction check failed: measured {measured:.3f} ms vs predicted {predicted:.3f} ms", str(info.value)
    )


@pytest.mark.ray
def test_bench_with_the_ray_executor_measures_in_the_device_actor(root, ray_cluster):
    from deploy.executors.ray_cluster import RayExecutor

    executor = RayExecutor()
    try:
        result = bench(TARGET, tolerance_pct=1e6, executor=executor)
    finally:
        executor.close()
    assert result.measured.median_ms > 0 and result.measured.where.startswith("local:")
    assert json.loads(result.json_path.read_text())["measured"]["median_ms"] == result.measured.median_ms


def test_bench_prediction_gate_uses_the_drift_corrected_prediction_and_says_both(shipped, tmp_path):
    target = load_target(TARGET)
    kwargs = dict(target=target, tolerance_pct=10.0, baseline=None, baseline_file=tmp_path / "b.json")
    plain = {c.name: c for c in evaluate(0.30, predicted_ms=0.20, **kwargs)}["prediction"]
    fixed = {c.name: c for c in evaluate(0.30, predicted_ms=0.20, corrected_ms=0.29, **kwargs)}["prediction"]
    assert plain.passed is False and fixed.passed is True and fixed.reference_ms == 0.29
    assert "measured 0.300 ms vs predicted 0.200 ms, 0.290 ms drift-corrected now (+3.4%" in fixed.detail
