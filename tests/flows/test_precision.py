"""Elastic precision: the selector picks (subnet, precision), each precision's artifact measured for real."""

from __future__ import annotations

import pytest
import yaml

from deploy.errors import NoFeasibleSubnetError, UnsupportedPrecisionError
from deploy.flows.deploy import deploy
from deploy.targets import load_target

pytestmark = pytest.mark.slow
LITERT = ["targets/host-cpu-litert.yaml", "checkpoints"] + [
    f"latency_tables/host-cpu-litert{s}.json" for s in ("", ".fp16", ".int8_dynamic", ".int8")
]


def edit(root, name: str, **changes) -> None:
    path = root / "targets" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))


def test_target_table_path_is_per_precision_and_unknown_precision_is_refused(tmp_root, ship_files):
    ship_files("targets/host-cpu-litert.yaml")
    target = load_target("host-cpu-litert")
    assert target.table_path.name == "host-cpu-litert.json"
    assert target.at_precision("int8").table_path.name == "host-cpu-litert.int8.json"
    with pytest.raises(UnsupportedPrecisionError, match="does not list precision fp16"):
        load_target("host-cpu-litert").model_copy(update={"precisions": ("fp32",)}).at_precision("fp16")


def test_deploy_litert_measures_every_precision_and_picks_the_most_accurate_usable_pair(tmp_root, ship_files):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("mlxtend")
    ship_files(*LITERT)
    edit(tmp_root, "host-cpu-litert", max_accuracy_drop_pp=0.0)  # any measurable loss rejects a precision
    result = deploy("host-cpu-litert", progress=False, measure=False)
    options = result.manifest.model_dump(mode="json")["accuracy"]["precisions"]
    assert [o["precision"] for o in options] == ["fp32", "fp16", "int8_dynamic", "int8"]
    for o in options:
        assert 0.5 < o["artifact_val_accuracy"] <= 1 and 0.5 < o["artifact_test_accuracy"] <= 1
        assert (o["rejected"] is not None) == (o["accuracy_drop_pp"] > 0)
    chosen = result.manifest.model_dump(mode="json")["precision"]
    # most accurate artifact, the faster one on a tie
    best = max(
        (o for o in options if not o["rejected"]), key=lambda o: (o["artifact_val_accuracy"], -o["predicted_ms"])
    )
    assert chosen == best["precision"] and (tmp_root / "dist" / "host-cpu-litert" / "model.tflite").exists()
    assert "## Precisions" in (tmp_root / "dist" / "host-cpu-litert" / "report.md").read_text()


def test_deploy_raises_when_no_precision_fits_the_budget(tmp_root, ship_files):
    pytest.importorskip("mlxtend")
    ship_files(*LITERT)
    edit(tmp_root, "host-cpu-litert", budget_ms=0.0001)
    with pytest.raises(NoFeasibleSubnetError, match=r"no precision of host-cpu-litert is usable.*fp32: no subnet fits"):
        deploy("host-cpu-litert", progress=False, measure=False)


@pytest.mark.extended
def test_deploy_pixel7_without_a_phone_validates_on_the_host_and_says_it_is_estimated(tmp_root, ship_files):
    pytest.importorskip("ai_edge_litert")
    pytest.importorskip("mlxtend")
    ship_files(
        "targets/pixel7.yaml",
        "checkpoints",
        *[f"latency_tables/pixel7{s}.json" for s in ("", ".fp16", ".int8_dynamic", ".int8")],
    )
    said: list[str] = []
    result = deploy("pixel7", progress=False, say=said.append)
    assert said[0].startswith("ESTIMATED latency table for pixel7")
    m = result.manifest.model_dump(mode="json")
    assert m["latency"]["method"] == "estimated" and m["latency"]["measured_ms"] is None
    assert "not measured on the device" in m["latency"]["not_measured_reason"]
    assert m["validation"]["ran_here"] and m["parity"]["max_abs_diff"] <= m["parity"]["tolerance"]
    assert (tmp_root / "dist" / "pixel7" / "model.tflite").exists()


def test_deploy_without_a_drift_check_on_a_table_off_by_more_than_the_budget_says_why(shipped):
    """A margin of 100% or more leaves no budget: one named line, not a ValueError from the selector."""
    import json

    from deploy.errors import NoFeasibleSubnetError

    path = shipped / "latency_tables" / "host-cpu-ort.json"
    data = json.loads(path.read_text())
    data["validations"]["matformer_vit"]["uncorrected_p90_abs_pct_error"] = 124.4
    path.write_text(json.dumps(data))
    with pytest.raises(NoFeasibleSubnetError, match=r"124% without a drift check.*deploy with measuring on"):
        deploy("host-cpu-ort", measure=False)
    assert not (shipped / "dist").exists()
