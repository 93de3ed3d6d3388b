"""Workspaces and the environment that names folders: refused in one line before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ELASTIC_DEPLOY_")}


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, cwd=cwd,
        env={**CLEAN_ENV, "COLUMNS": "200", **env}, timeout=300,
    )  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_init_on_a_file_is_one_line_and_leaves_the_file(tmp_path):
    (tmp_path / "afile").write_text("mine")
    _one_line_error(_cli("init", "afile", cwd=tmp_path), "is a file, not a folder")
    assert (tmp_path / "afile").read_text() == "mine" and _tree(tmp_path) == ["afile"]


def test_init_below_a_file_is_one_line_and_writes_nothing(tmp_path):
    (tmp_path / "afile").write_text("mine")
    _one_line_error(_cli("init", "afile/ws", cwd=tmp_path), "afile is a file")
    assert _tree(tmp_path) == ["afile"]


def test_init_in_the_current_folder_says_next_steps_without_a_cd(tmp_path):
    proc = _cli("init", ".", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "cd ." not in proc.stdout and f"workspace ready in {tmp_path}" in " ".join(proc.stdout.split())
    assert (tmp_path / "targets" / "my-cpu.yaml").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging folder is left"


def test_init_in_a_new_folder_says_to_cd_there(tmp_path):
    proc = _cli("init", "ws", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "`cd ws`" in proc.stdout and _tree(tmp_path / "ws") == [
        "checkpoints", "latency_tables", "models", "models/my_model.yaml", "targets", "targets/my-cpu.yaml"
    ]  # fmt: skip


def test_typo_in_the_workspace_variable_is_refused_and_nothing_is_created(tmp_path):
    _one_line_error(
        _cli("targets", cwd=tmp_path, ELASTIC_DEPLOY_ROOT=str(tmp_path / "wrokspace")),
        "ELASTIC_DEPLOY_ROOT=", "does not exist",
    )  # fmt: skip
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("variable", ["ELASTIC_DEPLOY_CACHE", "ELASTIC_DEPLOY_LOCK_DIR"])
@pytest.mark.parametrize("below", [False, True])
def test_folder_variable_pointing_at_a_file_is_one_line(tmp_path, variable, below):
    (tmp_path / "afile").write_text("mine")
    value = tmp_path / "afile" / "x" if below else tmp_path / "afile"
    repo = Path(__file__).resolve().parents[1]
    _one_line_error(_cli("targets", cwd=repo, **{variable: str(value)}), f"{variable}=", "not a folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_lock_timeout_that_is_not_a_number_is_one_line_before_any_work(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    _one_line_error(
        _cli("targets", cwd=repo, ELASTIC_DEPLOY_LOCK_TIMEOUT_S="abc"), "ELASTIC_DEPLOY_LOCK_TIMEOUT_S='abc'"
    )


@pytest.fixture
def read_only_workspace(tmp_path):
    """A workspace on a read-only bind mount: writes fail with EROFS even for root."""
    made = _cli("init", "ws", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    bound = subprocess.run(["mount", "--bind", str(tmp_path / "ws"), str(ro)], capture_output=True, text=True)
    if bound.returncode != 0:
        pytest.skip(f"needs a read-only bind mount (root): {bound.stderr.strip()}")
    try:
        remount = subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only: {remount.stderr.strip()}")
        yield ro
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)


@pytest.mark.parametrize(
    "args",
    [
        ("tables", "build", "--target", "my-cpu"),
        ("train", "--model", "my_model"),
        ("tables", "validate", "--target", "my-cpu", "--samples", "2"),
    ],
    ids=["tables-build", "train", "tables-validate"],
)
def test_command_in_a_read_only_workspace_fails_at_once_in_one_line(read_only_workspace, args):
    import time

    start = time.monotonic()
    proc = _cli(*args, cwd=read_only_workspace)
    _one_line_error(proc, "cannot be written", "Read-only file system")
    assert time.monotonic() - start < 60, "refused before any measuring or training"


def test_transfer_out_below_a_file_is_refused_before_measuring(tmp_path):
    (tmp_path / "afile").write_text("mine")
    repo = Path(__file__).resolve().parents[1]
    proc = _cli(
        "tables", "transfer", "--target", "host-cpu-ort", "--from", "host-cpu-ort-1t", "--samples", "4",
        "--out", str(tmp_path / "afile" / "x.json"), cwd=repo, ELASTIC_DEPLOY_CACHE=str(tmp_path / "cache"),
    )  # fmt: skip
    _one_line_error(proc, "--out", "afile is a file")
    assert (tmp_path / "afile").read_text() == "mine" and not (tmp_path / "cache").exists(), "nothing was measured"


def test_validate_json_below_a_file_is_refused_before_measuring(tmp_path):
    (tmp_path / "afile").write_text("mine")
    repo = Path(__file__).resolve().parents[1]
    proc = _cli(
        "tables", "validate", "--target", "host-cpu-ort", "--samples", "2", "--no-write-back",
        "--json", str(tmp_path / "afile" / "x.json"), cwd=repo, ELASTIC_DEPLOY_CACHE=str(tmp_path / "cache"),
    )  # fmt: skip
    _one_line_error(proc, "--json", "afile is a file")
    assert not (tmp_path / "cache").exists(), "nothing was measured"
