"""What is committed holds nothing of the machine it was made on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A folder of a user's machine: home folders, the checkouts and temporary folders of a build host.
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:home|Users|root|work|tmp/pytest-of-\w+|private/var/folders)/[^\s\"'`),]+")
# Paths that are test input on purpose (an injection payload, a target's field), not where a file was made.
ALLOWED = {("tests/test_targets.py", "/tmp/p")}


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an unpacked sdist or wheel): nothing tracked to check")
    files = []
    for name in filter(None, names.decode().split("\0")):
        path = REPO / name
        if path.is_file() and path.suffix not in {".png", ".safetensors", ".npz", ".onnx", ".tflite", ".pte"}:
            files.append(path)
    return files


def test_tracked_files_hold_no_absolute_path_of_a_machine():
    found = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        rel = str(path.relative_to(REPO))
        for match in MACHINE_PATH.finditer(text):
            if (rel, match.group()) not in ALLOWED:
                found.append(f"{rel}: {match.group()}")
        if str(REPO) in text:
            found.append(f"{rel}: {REPO}")
    assert not found, "machine paths in tracked files (record them relative to the repository): " + "; ".join(
        found[:10]
    )


def test_results_writer_records_paths_relative_to_the_repository():
    from benchmarks.harness.core import machine_free

    record = {"python": str(REPO / ".cache" / "venv" / "bin" / "python"), "home": str(Path.home() / "x"), "n": 3}
    assert machine_free(record) == {"python": ".cache/venv/bin/python", "home": "~/x", "n": 3}
