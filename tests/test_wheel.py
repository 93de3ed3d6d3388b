"""Installed as a wheel (not editable) into a fresh virtual environment, elastic-deploy works from an empty
folder: the shipped targets, tables, models and checkpoints come from the package, and every file it
writes lands in that folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel alone; its dependencies (torch among them: minutes to install again)
    are this environment's, reached through a plain path entry, which never runs this checkout's editable
    install hook, so `import deploy` can only find the wheel."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
         str(REPO)],
        check=True, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("elastic_deploy-*.whl")
    env = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=300)
    python = env / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "_elastic_deploy_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    return env


def _run(venv: Path, cwd: Path, *args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ELASTIC_DEPLOY_")} | {
        "COLUMNS": "200",
        "ELASTIC_DEPLOY_CACHE": str(cache),
        "ELASTIC_DEPLOY_LOCK_DIR": str(cache / "locks"),
    }
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_wheel_lists_targets_and_deploys_the_shipped_default_from_an_empty_folder(
    venv, tmp_path, shared_accuracy_cache
):
    empty, cache = tmp_path / "empty", tmp_path / "cache"
    empty.mkdir()
    cache.mkdir()
    (cache / "accuracy").symlink_to(shared_accuracy_cache, target_is_directory=True)  # real evaluations, reused
    where = _run(venv, empty, str(venv / "bin" / "python"), "-c", "import deploy; print(deploy.__file__)", cache=cache)
    assert where.returncode == 0 and str(venv) in where.stdout, where
    shipped = Path(where.stdout.strip()).parent / "shipped"
    assert (shipped / "targets" / "host-cpu-ort.yaml").is_file() and (shipped / "checkpoints").is_dir()

    targets = _run(venv, empty, str(venv / "bin" / "elastic-deploy"), "targets", cache=cache)
    assert targets.returncode == 0, targets.stderr
    assert "host-cpu-ort" in targets.stdout and "pixel7" in targets.stdout

    before = {p: p.stat().st_mtime_ns for p in shipped.rglob("*") if p.is_file()}
    done = _run(venv, empty, str(venv / "bin" / "elastic-deploy"), "deploy", "--target", "host-cpu-ort", cache=cache)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((empty / "dist" / "host-cpu-ort" / "manifest.json").read_text())
    assert manifest["model"] == "matformer_vit_mnist" and manifest["latency"]["measured_ms"] > 0
    after = {p: p.stat().st_mtime_ns for p in shipped.rglob("*") if p.is_file()}
    assert after == before, "nothing is written into the installed package"
