"""CI workflows: they parse, name only existing (or guarded device) targets, and call real make targets."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BENCH = WORKFLOWS / "device-bench.yml"
TABLES = WORKFLOWS / "latency-tables.yml"
MAKE_CALL = re.compile(r"\bmake\s+([A-Za-z][\w.-]*)")


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _triggers(workflow: dict[str, Any]) -> dict[str, Any]:
    return workflow[True]  # YAML 1.1 reads the key `on` as the boolean True


def _steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def _runs(workflow: dict[str, Any]) -> str:
    return "\n".join(step["run"] for step in _steps(workflow) if "run" in step)


def _existing_targets() -> set[str]:
    return {p.stem for p in (ROOT / "targets").glob("*.yaml")}


def _makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", text, flags=re.MULTILINE))


def _bench_matrix() -> list[dict[str, Any]]:
    return _load(BENCH)["jobs"]["bench"]["strategy"]["matrix"]["include"]


def _guard(workflow: dict[str, Any], job: str) -> dict[str, Any]:
    steps = workflow["jobs"][job]["steps"]
    guards = [s for s in steps if s.get("id") == "guard"]
    assert len(guards) == 1, f"job {job} has no step with id 'guard'"
    return guards[0]


@pytest.mark.parametrize("path", [BENCH, TABLES], ids=lambda p: p.name)
def test_workflow_loads_with_triggers_and_jobs(path: Path):
    workflow = _load(path)
    assert _triggers(workflow) and workflow["jobs"]
    for job in workflow["jobs"].values():
        assert job["runs-on"] and job["steps"]


@pytest.mark.parametrize("path", [BENCH, TABLES], ids=lambda p: p.name)
def test_workflow_make_calls_exist_in_makefile(path: Path):
    called = set(MAKE_CALL.findall(_runs(_load(path))))
    assert called, f"{path.name} calls no make target"
    assert called <= _makefile_targets(), f"not in the Makefile: {called - _makefile_targets()}"


def test_makefile_targets_parse_includes_the_ones_the_readme_gives():
    assert {"deploy", "bench", "latency-tables", "validate-tables", "test"} <= _makefile_targets()
    assert not {"PYTHON", "VENV", "BACKEND"} & _makefile_targets()  # variables are not targets


def test_device_bench_runs_nightly_and_on_pull_requests():
    triggers = _triggers(_load(BENCH))
    assert "pull_request" in triggers
    assert triggers["schedule"] and all(len(entry["cron"].split()) == 5 for entry in triggers["schedule"])


def test_device_bench_matrix_targets_exist_or_are_guarded_device_targets():
    entries = _bench_matrix()
    existing = _existing_targets()
    assert {"host-cpu-ort", "host-cpu-ort-1t"} <= {e["target"] for e in entries}
    for entry in entries:
        if entry["device"]:
            assert "self-hosted" in entry["runner"] and len(entry["runner"]) > 1, entry
        else:
            assert entry["target"] in existing and entry["runner"] == ["ubuntu-latest"], entry
    assert any(e["device"] for e in entries)  # the pixel7 / jetson slots are listed ahead of their targets


def test_device_bench_guard_checks_the_target_file_and_gates_every_later_step():
    workflow = _load(BENCH)
    guard = _guard(workflow, "bench")
    assert "targets/${{ matrix.target }}.yaml" in guard["run"] and "present=false" in guard["run"]
    steps = workflow["jobs"]["bench"]["steps"]
    after = steps[steps.index(guard) + 1 :]
    assert after
    for step in after:
        assert "steps.guard.outputs.present == 'true'" in step.get("if", ""), step.get("name", step.get("uses"))
    # A missing device target must not wait for its self-hosted runner: runs-on falls back to ubuntu-latest.
    runs_on = workflow["jobs"]["bench"]["runs-on"]
    assert "matrix.device" in runs_on and "'ubuntu-latest'" in runs_on and "needs.plan.outputs.targets" in runs_on


def test_device_bench_deploys_benches_uploads_and_summarises_even_on_failure():
    workflow = _load(BENCH)
    steps = workflow["jobs"]["bench"]["steps"]
    runs = [s.get("run", "") for s in steps]
    deploy = next(i for i, r in enumerate(runs) if 'make deploy TARGET="$TARGET"' in r)
    bench = next(i for i, r in enumerate(runs) if 'make bench TARGET="$TARGET"' in r)
    assert deploy < bench
    setup = next(s for s in steps if s.get("uses", "").startswith("actions/setup-python"))
    assert str(setup["with"]["python-version"]) == "3.11"
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact"))
    assert {"bench/", "dist/"} <= set(upload["with"]["path"].split()) and upload["if"].startswith("always()")
    summary = next(s for s in steps if "GITHUB_STEP_SUMMARY" in s.get("run", "") and s.get("id") != "guard")
    assert "bench/$TARGET.md" in summary["run"] and summary["if"].startswith("always()")
    assert workflow["jobs"]["bench"]["env"]["TARGET"] == "${{ matrix.target }}"


def test_latency_tables_is_dispatched_with_a_target_input():
    inputs = _triggers(_load(TABLES))["workflow_dispatch"]["inputs"]
    assert inputs["target"]["required"] is True
    assert "runner_labels" in inputs and inputs["runner_labels"]["required"] is False


def test_latency_tables_runner_lookup_names_existing_or_device_targets_and_checks_the_file():
    workflow = _load(TABLES)
    job = workflow["jobs"]["runner"]
    lookup: dict[str, list[str]] = json.loads(job["env"]["RUNNER_LABELS"])
    device_targets = {e["target"] for e in _bench_matrix() if e["device"]}
    for target, labels in lookup.items():
        assert target in _existing_targets() or target in device_targets, target
        assert labels[0] == "self-hosted", (target, labels)  # a table is measured on the machine it describes
    pick = next(s for s in job["steps"] if s.get("id") == "pick")
    assert "targets/$TARGET.yaml" in pick["run"] and "exit 1" in pick["run"]
    assert workflow["jobs"]["tables"]["runs-on"] == "${{ fromJSON(needs.runner.outputs.labels) }}"


def test_latency_tables_builds_validates_and_opens_a_pull_request_with_both_files():
    job = _load(TABLES)["jobs"]["tables"]
    runs = [s.get("run", "") for s in job["steps"]]
    build = next(i for i, r in enumerate(runs) if 'make latency-tables TARGET="$TARGET"' in r)
    validate = next(i for i, r in enumerate(runs) if 'make validate-tables TARGET="$TARGET" SAMPLES=20' in r)
    pr_index, pr = next((i, s) for i, s in enumerate(job["steps"]) if "create-pull-request" in s.get("uses", ""))
    assert build < validate < pr_index
    assert pr["uses"].startswith("peter-evans/create-pull-request@")
    assert set(pr["with"]["add-paths"].splitlines()) == {
        "latency_tables/${{ inputs.target }}.json",
        "latency_tables/${{ inputs.target }}.validation.json",
    }
    body = next(s["run"] for s in job["steps"] if "pr-body.md" in s.get("run", "") and "validation.json" in s["run"])
    assert "median_abs_pct_error" in body and "within_10pct" in body and pr["with"]["body-path"] == "pr-body.md"
    assert job["permissions"] == {"contents": "write", "pull-requests": "write"}


def test_validate_tables_make_target_calls_tables_validate_with_json():
    text = (ROOT / "Makefile").read_text()
    recipe = text.split("\nvalidate-tables:", 1)[1].split("\n\n", 1)[0]
    # one validation file per (target, model, precision); the default's is <target>.validation.json
    json_path = "--json latency_tables/$(TARGET)$(if $(MODEL),.$(MODEL))$(if $(PRECISION),.$(PRECISION))"
    assert "tables validate" in recipe and json_path in recipe and "$(MODEL_FLAG)" in recipe
    assert ".validation.json" in recipe and "--precision $(PRECISION)" in recipe


def test_ci_run_calls_make_test():
    script = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", script, flags=re.MULTILINE)
