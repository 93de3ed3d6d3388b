"""`convert`: plain torch modules from a factory, through hub → backend → validate → package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from deploy.cli import main
from deploy.flows.convert import convert

HERE = __name__  # the factories below are imported back by name, as a user's MODULE:FACTORY would be
QUICK_MEASUREMENT = {"warmup_runs": 2, "min_runs": 5, "min_time_s": 0.0, "rounds": 3, "cv_max": 1.0, "max_retries": 0}


class SmallCNN(nn.Module):
    input_shape = (1, 3, 32, 32)  # convert's default when --input-shape is not given

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(3, 8), block(8, 16), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class SmallTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


def make_cnn() -> nn.Module:
    torch.manual_seed(0)
    return SmallCNN()


def make_transformer() -> nn.Module:
    torch.manual_seed(0)
    return SmallTransformer()


def make_broken() -> nn.Module:
    raise RuntimeError("weights file missing")


def make_number() -> int:
    return 42


def write_target(root: Path, name: str, **changes: object) -> str:
    """A copy of the shipped host-cpu-ort target under another name, with fields changed."""
    data = yaml.safe_load((root / "targets" / "host-cpu-ort.yaml").read_text())
    data.update(name=name, **changes)
    (root / "targets" / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return name


@pytest.fixture
def host(ship_files, tmp_root) -> Path:
    ship_files("targets/host-cpu-ort.yaml")
    return tmp_root


def test_convert_cnn_writes_artifact_and_manifest_with_parity_and_latency_when_measured(host):
    target = write_target(host, "host-quick", measurement=QUICK_MEASUREMENT)
    result = convert(f"{HERE}:make_cnn", target)
    assert result.out_dir == host / "dist" / "host-quick-make_cnn"
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    assert Path(manifest["artifact"]["path"]).is_file() and len(manifest["artifact"]["sha256"]) == 64
    assert manifest["input_shape"] == [1, 3, 32, 32] and manifest["backend"] == "onnxruntime"
    assert manifest["validation"]["ran_here"] and manifest["validation"]["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["latency"]["measured_ms"] > 0 and manifest["latency"]["not_measured_reason"] is None
    assert manifest["hub_entry"] and manifest["versions"]["torch"] == torch.__version__


def test_convert_transformer_passes_parity_and_records_why_not_measured_when_no_measure(host, tmp_path):
    result = convert(
        f"{HERE}:make_transformer", "host-cpu-ort", input_shape="1,16,32", out_dir=tmp_path / "tf", measure=False
    )
    manifest = result.manifest.model_dump(mode="json", by_alias=True)
    assert (tmp_path / "tf" / "model.onnx").is_file() and (tmp_path / "tf" / "manifest.json").is_file()
    assert manifest["input_shape"] == [1, 16, 32]
    assert manifest["validation"]["parity"]["max_abs_diff"] <= 1e-4
    assert manifest["latency"] == {"measured_ms": None, "measured": None, "not_measured_reason": "--no-measure"}
    assert "predicted_ms" not in manifest["latency"], "no table predicts a plain model"


def test_convert_cnn_to_tflite_matches_torch_when_litert_imports(host, tmp_path):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    target = write_target(host, "host-cpu-tflite", backend="tflite")
    result = convert(f"{HERE}:make_cnn", target, out_dir=tmp_path / "tfl", measure=False)
    assert (tmp_path / "tfl" / "model.tflite").is_file()
    assert result.manifest.model_dump(mode="json", by_alias=True)["validation"]["parity"]["max_abs_diff"] <= 1e-4


def test_cli_convert_exits_0_and_prints_the_output_folder(host, tmp_path, capsys):
    out = tmp_path / "cli-out"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--model", f"{HERE}:make_cnn", "--target", "host-cpu-ort", "--out", str(out), "--no-measure"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "done" in printed and str(out) in printed.replace("\n", "")
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize(
    ("model", "extra", "needles"),
    [
        ("make_cnn", [], ["not MODULE:FACTORY"]),
        ("no_such_pkg.models:make_cnn", [], ["module 'no_such_pkg.models' is not importable", "PYTHONPATH"]),
        (f"{HERE}:make_nothing", [], ["has no attribute 'make_nothing'", "make_cnn"]),
        (f"{HERE}:make_broken", [], ["raised RuntimeError: weights file missing"]),
        (f"{HERE}:make_number", [], ["returned int, not a torch.nn.Module"]),
        (f"{HERE}:make_cnn", ["--input-shape", "1,3,x"], ["--input-shape '1,3,x'", "comma-separated"]),
        (f"{HERE}:make_transformer", [], ["no input_shape", "--input-shape"]),
        (f"{HERE}:make_transformer", ["--input-shape", "1,16,8"], ["fails on an input of shape 1,16,8"]),
        (f"{HERE}:make_cnn", ["--input-shape", "100000,100000,100"], ["1,000,000,000,000 elements", "batch 1"]),
    ],
    ids=[
        "no-colon",
        "no-module",
        "no-attribute",
        "factory-raises",
        "not-a-module",
        "bad-shape",
        "no-shape",
        "wrong-shape",
        "huge-shape",
    ],
)
def test_cli_convert_exits_2_with_one_line_message_when_input_is_bad(host, capsys, model, extra, needles):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--model", model, "--target", "host-cpu-ort", *extra])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    for needle in needles:
        assert needle in lines[0]


class UsesFFT(nn.Module):
    input_shape = (1, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(x).abs()


class UsesSTFT(nn.Module):
    input_shape = (1, 400)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stft(x, 64, window=torch.ones(64), return_complex=True).abs()


def make_fft() -> nn.Module:
    return UsesFFT()


def make_stft() -> nn.Module:
    return UsesSTFT()


def test_cli_convert_of_an_unconvertible_torch_op_names_the_op_and_backend(host, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--model", f"{HERE}:make_fft", "--target", "host-cpu-ort", "--no-measure"])
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "aten::fft_rfft" in lines[0] and "onnxruntime" in lines[0], lines
    assert "ReduceL2" not in lines[0].split("(")[0], "the op is named first, not the checker's complaint"


def test_cli_convert_prints_no_exporter_dump_when_the_first_exporter_fails(host, tmp_path, capfd):
    out = tmp_path / "stft"
    with pytest.raises(SystemExit):
        main(["convert", "--model", f"{HERE}:make_stft", "--target", "host-cpu-ort", "--no-measure", "--out", str(out)])
    err = capfd.readouterr().err
    assert "Torch IR graph" not in err and len(err.splitlines()) < 10, err


def test_convert_to_a_litert_target_without_litert_is_an_error_naming_the_install(host, tmp_path, monkeypatch):
    from deploy.errors import BackendUnavailableError

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    target = write_target(host, "host-cpu-tfl", backend="tflite")
    with pytest.raises(BackendUnavailableError, match=r"tflite"):
        convert(f"{HERE}:make_cnn", target, out_dir=tmp_path / "tfl", measure=False)
    assert not (tmp_path / "tfl").exists(), "nothing is packaged for a backend that compiles here"


USER_MODEL = """
import torch
from torch import nn

class Net(nn.Module):
    input_shape = (1, 8)

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x).relu()

def make():
    torch.manual_seed(0)
    return Net()
"""
PLANTED = """
import pathlib
pathlib.Path(__file__).with_name("planted-ran").write_text("ran")
raise ImportError("planted module")
"""


def test_convert_imports_only_the_users_module_from_the_current_folder(host, tmp_path):
    """A file in the current folder named like a converter's dependency never runs (issue 24)."""
    import os
    import subprocess

    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "mymodel.py").write_text(USER_MODEL)
    (folder / "onnxslim.py").write_text(PLANTED)
    (folder / "onnxscript.py").write_text(PLANTED)
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "convert", "--model", "mymodel:make", "--target", "host-cpu-ort",
         "--no-measure", "--out", str(tmp_path / "out")],
        cwd=folder, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not (folder / "planted-ran").exists(), "a planted module in the current folder ran"
    assert (tmp_path / "out" / "manifest.json").is_file()


def test_convert_leaves_sys_path_as_it_found_it(host, tmp_path, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "mymodel_path_check.py").write_text(USER_MODEL)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(folder))])
    before = list(sys.path)
    convert("mymodel_path_check:make", "host-cpu-ort", out_dir=tmp_path / "out", measure=False)
    assert sys.path == before
