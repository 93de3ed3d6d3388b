"""The executor registry, the local executor and artifact shipping (no Ray cluster needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy.backends.base import Artifact
from deploy.errors import ExecutorError, UnknownNameError
from deploy.executors import EXECUTORS, get_executor
from deploy.executors.local import LocalExecutor
from deploy.executors.shipping import pack, unpack

REPO = Path(__file__).resolve().parents[2]


def test_registry_lists_local_and_ray_and_unknown_names_list_them():
    assert EXECUTORS.names() == ["local", "ray"]
    with pytest.raises(UnknownNameError, match=r"unknown executor 'dask'; known: local, ray"):
        get_executor("dask")


def test_local_executor_is_the_default_and_refuses_a_ray_address():
    assert isinstance(get_executor(), LocalExecutor)
    with pytest.raises(ExecutorError, match=r"--ray-address 10\.0\.0\.5:6379 needs --executor ray"):
        get_executor("local", "10.0.0.5:6379")


def test_importing_the_package_and_the_local_path_never_imports_ray():
    code = (
        "import sys, deploy.executors, deploy.latency.build, deploy.accuracy, deploy.flows.bench, deploy.cli;"
        "print('ray' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "False"


def test_executor_ray_without_ray_installed_is_one_line_naming_the_extra(tmp_path):
    shadow = tmp_path / "no_ray"
    shadow.mkdir()  # a `ray` that fails to import, as on a machine without the extra
    (shadow / "ray.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "tables", "validate", "--target", "host-cpu-ort", "--executor", "ray"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(shadow), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "install the ray extra" in lines[0] and "pip install -e '.[ray]'" in lines[0]


def _artifact(path: Path) -> Artifact:
    return Artifact(path=path, backend="onnxruntime", precision="fp32", input_names=("x",), output_names=("y",))


def test_shipping_a_file_artifact_writes_it_once_under_its_digest(tmp_path):
    src = tmp_path / "built" / "model.onnx"
    src.parent.mkdir()
    src.write_bytes(b"onnx bytes")
    shipped = pack(_artifact(src))
    first = unpack(shipped, tmp_path / "inbox")
    assert first.path.read_bytes() == b"onnx bytes" and first.path.parent.name == shipped.digest[:16]
    assert first.path.name == "model.onnx" and first.input_names == ("x",)
    assert unpack(shipped, tmp_path / "inbox").path == first.path
    assert pack(_artifact(first.path)).digest == shipped.digest


def test_shipping_a_folder_artifact_keeps_its_tree(tmp_path):
    src = tmp_path / "model.mlpackage"
    (src / "Data" / "weights").mkdir(parents=True)
    (src / "Manifest.json").write_text("{}")
    (src / "Data" / "weights" / "w.bin").write_bytes(b"\x00\x01")
    got = unpack(pack(_artifact(src)), tmp_path / "inbox").path
    assert got.name == "model.mlpackage" and got.is_dir()
    assert (got / "Manifest.json").read_text() == "{}"
    assert (got / "Data" / "weights" / "w.bin").read_bytes() == b"\x00\x01"
