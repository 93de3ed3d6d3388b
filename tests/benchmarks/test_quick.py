"""Every comparison under benchmarks/ runs its --quick mode here (seconds each), so none can rot unseen.

Each writes its JSON and markdown into a temporary folder; the test checks the files, the environment
record and the fields the documentation's results pages read, and that the markdown renders again from
the JSON as written.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

from benchmarks import COMPARISONS

# comparison -> fields its result must carry (besides benchmark, quick, environment)
FIELDS = {
    "ort_paths": ("summary", "paths", "protocol"),
    "tflite_paths": ("summary", "paths", "onnx2tf"),
    "executorch_paths": ("summary", "paths", "protocol"),
    "lm_paths": ("summary", "paths", "peer_exporters"),
    "selector_vs_oracle": ("summary", "rows", "budgets_ms"),
    "selector_real_oracle": ("meta", "rows"),
    "lm_heuristics": ("summary", "rows", "perplexity_spread"),
    "families": ("target", "rows"),
    "stitch_and_learngene": ("target", "rows"),
    "sampling": ("runs", "schedule"),
    "scale_probe": ("meta", "rows"),
    "ray_throughput": ("per_second", "ratios"),
    "estimate_transfer": ("pairs",),
    "transfer_external": ("datasets",),
}
NEEDS_DATASETS = {"estimate_transfer", "transfer_external"}
SLOW = {"ray_throughput": pytest.mark.ray}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Accuracy evaluations and hub exports go to a throwaway cache, never the developer's."""
    monkeypatch.setenv("ELASTIC_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(tmp_path / "locks"))


def test_every_comparison_has_a_quick_test():
    assert set(FIELDS) | {"gpu_paths"} == set(COMPARISONS)


@pytest.mark.parametrize("name", [pytest.param(n, marks=SLOW.get(n, ())) for n in FIELDS])
def test_quick_run_writes_its_results(name, tmp_path):
    module = importlib.import_module(f"benchmarks.{name}")
    if name in NEEDS_DATASETS:
        data = getattr(module, "DATA", None) or module.NB201
        if not Path(data).exists():
            pytest.skip(f"{data} is absent (the shared datasets folder beside the repository)")
    if name == "ray_throughput":
        pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (make test does)")
    assert module.COMPARISON.name == name
    from benchmarks import harness

    assert harness.main(module.COMPARISON, ["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / f"{name}.json").read_text())
    text = (tmp_path / f"{name}.md").read_text()
    assert result["benchmark"] == name and result["quick"] is True
    env = result["environment"]
    assert {"date", "host", "cpu", "cores", "versions", "wall_s", "loadavg_1m"} <= set(env)
    for key in FIELDS[name]:
        assert result[key], key
    assert "QUICK run" in text.splitlines()[2]
    assert module.markdown(result).splitlines()[0] == text.splitlines()[0]  # renders again from its JSON


def test_gpu_paths_says_skipped_without_a_gpu(tmp_path, capsys):
    import torch

    from benchmarks import gpu_paths, harness

    if torch.cuda.is_available():
        assert harness.main(gpu_paths.COMPARISON, ["--quick", "--out", str(tmp_path)]) == 0
        assert json.loads((tmp_path / "gpu_paths.json").read_text())["summary"]["rows"]
        return
    assert harness.main(gpu_paths.COMPARISON, ["--quick", "--out", str(tmp_path)]) == 0
    assert "skipped: needs an NVIDIA GPU" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parents[2].glob("benchmarks/results/*.json")))
def test_committed_results_render_from_their_json(path):
    """The documentation renders every committed result with its comparison's own markdown()."""
    name = path.stem.split(".")[0]
    module = importlib.import_module(f"benchmarks.{name}")
    text = module.markdown(json.loads(path.read_text()))
    assert text.startswith("# ") and len(text.splitlines()) > 3
