"""Output folders: a user's files are never deleted, the swap is one step, killed runs are cleaned up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.errors import OutputDirError
from deploy.packaging import output
from deploy.packaging.output import MARKER, check_output_dir, check_output_file, recover, staged_dir

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_staged_dir_writes_a_marker_listing_what_it_wrote(tmp_path):
    out = tmp_path / "dist" / "t"
    with staged_dir(out) as staging:
        (staging / "model.onnx").write_text("m")
    assert json.loads((out / MARKER).read_text())["files"] == ["model.onnx"]


def test_staged_dir_replaces_a_previous_output_in_one_step(tmp_path, monkeypatch):
    out = tmp_path / "t"
    with staged_dir(out) as staging:
        (staging / "model.onnx").write_text("old")
    swaps = []
    real = output._exchange
    monkeypatch.setattr(output, "_exchange", lambda a, b: swaps.append((a, b)) or real(a, b))
    with staged_dir(out) as staging:
        (staging / "model.onnx").write_text("new")
    assert (out / "model.onnx").read_text() == "new"
    assert len(swaps) == 1, "the old folder and the new one are exchanged by one rename"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"], "no staging or old folder is left"


def test_staged_dir_keeps_the_previous_output_when_the_block_fails(tmp_path):
    out = tmp_path / "t"
    with staged_dir(out) as staging:
        (staging / "model.onnx").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(out) as staging:
        (staging / "model.onnx").write_text("half")
        raise RuntimeError("compile failed")
    assert (out / "model.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_staged_dir_swaps_in_two_renames_when_the_exchange_is_not_available(tmp_path, monkeypatch):
    out = tmp_path / "t"
    with staged_dir(out) as staging:
        (staging / "model.onnx").write_text("old")
    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    with staged_dir(out) as staging:
        (staging / "model.onnx").write_text("new")
    assert (out / "model.onnx").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


def test_folder_with_a_users_file_is_refused_and_left_untouched(tmp_path):
    out = tmp_path / "u"
    _write(out, **{"notes.txt": "x"})
    with pytest.raises(OutputDirError, match=r"holds files elastic-deploy did not write \(notes.txt\)"):
        check_output_dir(out)
    assert (out / "notes.txt").read_text() == "x"


def test_users_file_added_to_a_previous_output_is_refused(tmp_path):
    out = tmp_path / "t"
    with staged_dir(out) as staging:
        (staging / "model.onnx").write_text("m")
    (out / "my-results.csv").write_text("mine")
    with pytest.raises(OutputDirError, match=r"my-results\.csv"):
        check_output_dir(out)


def test_users_folder_named_like_an_output_without_the_marker_is_refused_and_untouched(tmp_path):
    """`manifest.json` and `report.md` are common names: only the tool's own marker makes a folder its output."""
    out = tmp_path / "userdocs"
    _write(out, **{"manifest.json": "{\"mine\": 1}", "report.md": "my report"})
    with (
        pytest.raises(OutputDirError, match=r"did not write \(manifest.json, report.md\)"),
        staged_dir(out) as staging,
    ):
        (staging / "model.onnx").write_text("new")
    assert (out / "manifest.json").read_text() == '{"mine": 1}' and (out / "report.md").read_text() == "my report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["userdocs"], "nothing was staged beside it"


def test_folder_whose_marker_is_not_this_tools_is_refused(tmp_path):
    out = tmp_path / "t"
    _write(out, **{MARKER: json.dumps({"files": ["notes.txt"]}), "notes.txt": "mine"})
    with pytest.raises(OutputDirError, match=r"notes.txt"):
        check_output_dir(out)


def test_out_on_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("keep")
    with pytest.raises(OutputDirError, match="is a file, not a folder"):
        check_output_dir(tmp_path / "f")


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only /sys (Linux)")
def test_out_in_a_folder_that_cannot_be_written_is_refused():
    with pytest.raises(OutputDirError, match="cannot write in /sys"):
        check_output_dir(Path("/sys/elastic-deploy-out"))


def test_json_out_on_a_folder_is_refused(tmp_path):
    with pytest.raises(OutputDirError, match="is a folder; give a file name"):
        check_output_file(tmp_path, "--json")


def _ours(folder: Path, **files: str) -> None:
    _write(folder, **{MARKER: json.dumps({"tool": "elastic-deploy", "files": sorted(files)}), **files})


def test_staging_left_by_a_killed_run_is_removed_and_a_live_one_kept(tmp_path):
    out = tmp_path / "t"
    dead = tmp_path / f".t.staging-{_dead_pid()}-abcdefgh"
    live = tmp_path / f".t.staging-{os.getpid()}-abcdefgh"
    for folder in (dead, live):
        _ours(folder, **{"model.onnx": "half"})
    recover(out)
    assert not dead.exists()
    assert live.exists(), "a running deploy's staging folder is not touched"


@pytest.mark.parametrize(
    "name", [".pixel7.20261207", ".pixel7.abcd1234", ".pixel7.staging-{dead}-abcdefgh", ".pixel7.old-1-x"]
)
def test_users_hidden_folder_beside_the_output_is_never_deleted(tmp_path, name):
    """A folder that only looks like a staging folder (no marker of this tool) is the user's (issue 24)."""
    out = tmp_path / "pixel7"
    mine = tmp_path / name.format(dead=_dead_pid())  # a pid at collection would differ between xdist workers
    _write(mine, **{"notes.txt": "keep"})
    os.utime(mine, (0, 0))  # old: older versions removed any such folder after an hour
    with staged_dir(out) as staging:
        (staging / "model.onnx").write_text("m")
    assert (mine / "notes.txt").read_text() == "keep"


def test_staging_folder_is_marked_from_its_start(tmp_path):
    with staged_dir(tmp_path / "t") as staging:
        assert json.loads((staging / MARKER).read_text())["tool"] == "elastic-deploy"


def test_old_output_set_aside_by_a_run_killed_mid_swap_is_restored(tmp_path):
    out = tmp_path / "t"
    aside = tmp_path / f".t.old-{_dead_pid()}-abcdefgh"
    _ours(aside, **{"model.onnx": "previous"})
    recover(out)
    assert (out / "model.onnx").read_text() == "previous" and not aside.exists()


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "deploy", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def _one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr


def test_deploy_cli_refuses_an_out_folder_holding_a_users_file_before_any_work(tmp_path):
    out = tmp_path / "u"
    _write(out, **{"notes.txt": "x"})
    proc = _cli("deploy", "-t", "host-cpu-ort-1t", "--no-measure", "--out", str(out), cwd=REPO)
    _one_line_error(proc, "notes.txt")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "x"


def test_deploy_cli_refuses_out_dot_and_leaves_the_current_folder_alone(tmp_path):
    _write(tmp_path, **{"a.py": "print()", "b.txt": "b"})
    proc = _cli("deploy", "-t", "host-cpu-ort-1t", "--no-measure", "--out", ".", cwd=tmp_path)
    _one_line_error(proc, "did not write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py", "b.txt"]


def test_convert_cli_refuses_out_on_a_file_before_importing_the_model(tmp_path):
    (tmp_path / "out.txt").write_text("keep")
    proc = _cli("convert", "-m", "nowhere:make", "-t", "host-cpu-ort-1t", "--out", "out.txt", cwd=tmp_path)
    _one_line_error(proc, "is a file, not a folder")
    assert (tmp_path / "out.txt").read_text() == "keep"


MODEL_PY = """
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 4))
    net.input_shape = (1, 64)
    return net
"""


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB file system (tmpfs), so a full disk is the kernel's ENOSPC, not a mock."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"needs to mount a small tmpfs (root): {mounted.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_convert_onto_a_full_disk_is_one_line_and_keeps_the_previous_output(tmp_path, small_disk):
    work = tmp_path / "work"
    _write(work, **{"mymodel.py": MODEL_PY})
    out = small_disk / "out"
    args = ("convert", "-m", "mymodel:make", "-t", "host-cpu-ort-1t", "--no-measure", "--out", str(out))
    first = _cli(*args, cwd=work, env={"ELASTIC_DEPLOY_CACHE": str(tmp_path / "cache")})
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    free = os.statvfs(small_disk)
    with open(small_disk / "filler", "wb") as f:  # leave a few KiB: the marker fits, the model does not
        f.write(b"\0" * (free.f_bavail * free.f_frsize - 8192))
    proc = _cli(*args, cwd=work, env={"ELASTIC_DEPLOY_CACHE": str(tmp_path / "cache")})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "No space left on device" in errors[0] and "unchanged" in errors[0], proc.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "the previous output is unchanged"
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "out"], "no staging folder is left"
