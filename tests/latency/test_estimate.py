from __future__ import annotations

import json

import pytest
import yaml

from deploy.errors import BackendUnavailableError, ConfigFileError
from deploy.latency.estimate import estimate_table
from deploy.latency.table import LatencyTable, safety_margin_pct
from deploy.targets import load_target


def write_target(root, name: str, estimate: dict | None, backend: str = "tensorrt") -> None:
    data = {
        "name": name,
        "device": {"name": "test device"},
        "backend": backend,
        "budget_ms": 1.0,
        "model": "matformer_vit_mnist",
        "precision": "fp16",
    }
    if estimate is not None:
        data["estimate"] = estimate
    (root / "targets" / f"{name}.yaml").write_text(yaml.safe_dump(data))


FACTOR = {
    "source_target": "host-cpu-ort",
    "factor": 2.0,
    "correction": 1.5,
    "derivation": "test",
    "expected_error_pct": 40,
    "expected_error": "test",
}


def test_estimate_table_scales_every_entry_and_says_it_is_estimated(tmp_root, ship_files):
    ship_files("targets/host-cpu-ort.yaml", "latency_tables/host-cpu-ort.json")
    write_target(tmp_root, "dev-est", FACTOR)
    result = estimate_table(load_target("dev-est"))
    assert result.factor == 3.0 and result.anchor_source_ms is None
    source = LatencyTable.load(tmp_root / "latency_tables" / "host-cpu-ort.json")
    est = LatencyTable.load(result.path)
    assert est.provenance.method == "estimated" and "× 3" in est.provenance.estimation
    assert "Expected error ±40%" in est.provenance.estimation
    for a, b in zip(source.entries, est.entries, strict=True):
        assert a.key == b.key and b.median_ms == pytest.approx(3.0 * a.median_ms)
    assert est.calibration.slope == source.calibration.slope
    assert safety_margin_pct(est) == pytest.approx(source.validation.p90_abs_pct_error)


def test_estimate_table_with_anchor_measures_it_on_the_source_target(tmp_root, ship_files):
    ship_files("targets/host-cpu-ort-1t.yaml", "latency_tables/host-cpu-ort-1t.json")
    spec = {**FACTOR, "source_target": "host-cpu-ort-1t", "factor": None, "correction": 1.0}
    spec["anchor"] = {"model": "MobileNetV2-1.0", "device": "phone", "device_ms": 5.0, "source": "test"}
    write_target(tmp_root, "dev-anchor", spec)
    path = tmp_root / "targets" / "host-cpu-ort-1t.yaml"
    quick = yaml.safe_load(path.read_text())
    quick["measurement"] = {"warmup_runs": 2, "min_runs": 3, "min_time_s": 0.0, "rounds": 2, "max_retries": 0}
    path.write_text(yaml.safe_dump(quick))
    result = estimate_table(load_target("dev-anchor"))
    assert result.anchor_source_ms > 0 and result.factor == pytest.approx(5.0 / result.anchor_source_ms)
    prov = json.loads(result.path.read_text())["provenance"]
    assert prov["estimate"]["anchor_source_ms"] == result.anchor_source_ms and "MobileNetV2-1.0" in prov["estimation"]


def test_estimate_table_raises_when_the_target_has_no_estimate_section(tmp_root):
    write_target(tmp_root, "dev-none", None)
    with pytest.raises(ConfigFileError, match=r"no 'estimate' section.*make latency-tables TARGET=dev-none"):
        estimate_table(load_target("dev-none"))


def test_estimate_table_refuses_an_estimated_source(tmp_root, ship_files):
    ship_files("targets/host-cpu-ort.yaml", "latency_tables/host-cpu-ort.json")
    write_target(tmp_root, "dev-a", FACTOR)
    estimate_table(load_target("dev-a"))
    write_target(tmp_root, "dev-b", {**FACTOR, "source_target": "dev-a"})
    with pytest.raises(ConfigFileError, match="must start from a measured table"):
        estimate_table(load_target("dev-b"))


def test_measuring_a_table_where_the_backend_cannot_run_points_to_the_device_and_to_estimate(tmp_root):
    from deploy.latency.session import MeasureSession

    write_target(tmp_root, "dev-trt", FACTOR)
    with pytest.raises(BackendUnavailableError, match=r"cannot measure dev-trt on this machine.*tables estimate"):
        MeasureSession.open(load_target("dev-trt"))


def test_shipped_estimated_tables_name_their_method_anchor_and_expected_error():
    from deploy import workspace

    for name in ("iphone15", "jetson-orin-nano", "rtx-4090"):
        target = load_target(name)
        table = LatencyTable.load(workspace.tables_dir() / f"{name}.json")
        assert table.provenance.method == "estimated" and table.provenance.estimate["source_target"]
        assert f"±{target.estimate.expected_error_pct:.0f}%" in table.provenance.estimation
