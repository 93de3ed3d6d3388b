"""Bad input: a named error, one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_unknown_target_exits_2_listing_known_targets():
    assert_one_line_error(run_cli("deploy", "--target", "pixel99"), "unknown target 'pixel99'", "host-cpu-ort")


def test_invalid_target_name_exits_2():
    assert_one_line_error(run_cli("deploy", "--target", "Host_CPU"), "invalid")


def test_unknown_model_exits_2_listing_known_models():
    assert_one_line_error(
        run_cli("tables", "build", "--target", "host-cpu-ort", "--model", "gpt5"),
        "unknown model 'gpt5'",
        "matformer_vit_mnist",
    )


def test_debug_flag_shows_the_traceback():
    proc = run_cli("--debug", "deploy", "--target", "pixel99")
    assert proc.returncode != 0 and "UnknownTargetError" in proc.stderr


@pytest.mark.parametrize("budget", ["0.0001"])
def test_select_infeasible_budget_names_fastest_row(tmp_path, budget):
    csv = tmp_path / "c.csv"
    csv.write_text("id,latency_ms,accuracy\na,2.0,0.9\nb,1.0,0.8\n")
    assert_one_line_error(run_cli("select", "--candidates", str(csv), "--budget-ms", budget), "b", "1 ms")


def test_select_prints_best_row_within_budget(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("id,latency_ms,accuracy,note\na,2.0,0.9,big\nb,1.0,0.8,small\nc,1.2,0.85,mid\n")
    out = tmp_path / "choice.json"
    proc = run_cli("select", "--candidates", str(csv), "--budget-ms", "1.5", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert '"id": "c"' in out.read_text() and '"note": "mid"' in out.read_text()


def test_families_lists_every_family_with_where_it_comes_from_and_its_models():
    proc = run_cli("families", env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    for family, model in (("matformer_vit", "matformer_vit_mnist"), ("learngene_tuned", "learngene_mnist_tuned")):
        assert family in out and model in out
    assert "elastic-deploy" in out  # built in (a plugin's family names its distribution)


def test_models_lists_every_model_with_space_size_and_shipped_accuracy():
    proc = run_cli("models", env={**os.environ, "COLUMNS": "200"})  # rich wraps cells at 80 otherwise
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    for variant in ("matformer_vit_mnist", "poa_vit_mnist", "elastic_vit_mnist", "elastic_vit_tiny"):
        assert variant in out
    assert "1.44e+13" in out and "15,624" in out  # elastic_vit counts distinct configs, not gene vectors
    assert "95.07% – 98.13%" in out  # elastic_vit_mnist: every subnet its shipped accuracy cache evaluated
    assert "make train MODEL=elastic_vit_tiny" in out  # tiny variants ship no checkpoint


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf"])
def test_select_budget_that_is_not_a_positive_finite_number_exits_2(tmp_path, budget):
    csv = tmp_path / "c.csv"
    csv.write_text("id,latency_ms,accuracy\na,2.0,0.9\n")
    assert_one_line_error(run_cli("select", "--candidates", str(csv), "--budget-ms", budget), "--budget-ms")


def test_select_json_on_a_folder_exits_2_before_reading(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("id,latency_ms,accuracy\na,2.0,0.9\n")
    proc = run_cli("select", "--candidates", str(csv), "--budget-ms", "3", "--json", str(tmp_path))
    assert_one_line_error(proc, "is a folder")


@pytest.mark.parametrize("latency", ["0", "-0.5"])
def test_select_row_with_a_non_positive_latency_exits_2_naming_the_line(tmp_path, latency):
    csv = tmp_path / "c.csv"
    csv.write_text(f"id,latency_ms,accuracy\na,2.0,0.9\nb,{latency},0.99\n")
    assert_one_line_error(run_cli("select", "--candidates", str(csv), "--budget-ms", "3"), "line 3", "above 0")


def test_select_duplicate_ids_with_conflicting_rows_exit_2_naming_both_lines(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("id,latency_ms,accuracy\na,2.0,0.9\nb,1.0,0.8\na,1.0,0.95\n")
    assert_one_line_error(run_cli("select", "--candidates", str(csv), "--budget-ms", "3"), "'a'", "lines 2 and 4")


TARGET = "name: {name}\ndevice: {{name: box}}\nbackend: onnxruntime\nthreads: 1\nbudget_ms: 1.5\nmodel: m\n"


def test_targets_lists_every_good_target_and_each_bad_one_then_exits_2_naming_them(tmp_root):
    (tmp_root / "targets" / "good-one.yaml").write_text(TARGET.format(name="good-one"))
    (tmp_root / "targets" / "bad-dup.yaml").write_text(TARGET.format(name="bad-dup") + "threads: 2\n")
    (tmp_root / "targets" / "bad-type.yaml").write_text(
        TARGET.format(name="bad-type").replace("budget_ms: 1.5", "budget_ms: true")
    )
    proc = run_cli("targets", env={**os.environ, "COLUMNS": "300"})
    out = " ".join(proc.stdout.split())
    assert "good-one" in out and "host-cpu-ort" in out  # one bad file hides nothing
    bad_lines = [line for line in proc.stdout.splitlines() if line.startswith("bad target")]
    assert len(bad_lines) == 2, proc.stdout
    assert "bad-dup.yaml: malformed YAML at line 7 column 1: key 'threads' appears twice" in bad_lines[0]
    assert "bad-type.yaml: field 'budget_ms': expected a number, got true" in bad_lines[1]
    assert_one_line_error(proc, "target files that do not load: bad-dup.yaml, bad-type.yaml")


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        ("--sustained=inf", "--sustained inf is not a positive, finite number of seconds"),
        ("--sustained=nan", "--sustained nan is not a positive, finite number of seconds"),
        ("--sustained=0", "--sustained 0 is not a positive"),
        ("--sustained=-1", "--sustained -1 is not a positive"),
        ("--sustained=1e9", "--sustained 1e+09 is more than 86400 seconds"),
        ("--tolerance=inf", "--tolerance inf is not a positive, finite number of percent"),
        ("--tolerance=nan", "--tolerance nan is not a positive"),
    ],
)
def test_bench_float_option_that_is_not_a_positive_finite_number_exits_2_before_measuring(tmp_root, option, needle):
    proc = run_cli("bench", "--target", "host-cpu-ort", option)
    assert_one_line_error(proc, needle)
    assert not (tmp_root / "bench").exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("tables", "validate", "--target", "host-cpu-ort-lm", "--executor", "ray"),
         ("--executor ray", "host-cpu-ort-lm")),
        (("tables", "transfer", "--target", "host-cpu-ort-lm", "--from", "host-cpu-ort"), ("language-model target",)),
    ],
    ids=["validate-executor", "transfer"],
)
def test_flag_a_language_model_target_cannot_honour_is_one_line_naming_it(args, needles):
    """Refused, never ignored (issue 25): nothing is measured or written."""
    assert_one_line_error(run_cli(*args), *needles)
