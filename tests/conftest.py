from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from deploy.models import build

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_drift_pass_gap(monkeypatch):
    """The drift check's two passes are seconds apart on a real device; in-process tests need no gap."""
    from deploy.latency import drift

    monkeypatch.setattr(drift, "DRIFT_PASS_GAP_S", 0.0)


@pytest.fixture
def tiny():
    import torch

    torch.manual_seed(0)
    return build("matformer_vit_tiny").eval()


@pytest.fixture(scope="session")
def shared_accuracy_cache(tmp_path_factory) -> Path:
    """Real evaluations (deterministic: a checkpoint on its split) shared by the tests of one session, so
    that each deploy into a throwaway root does not evaluate the same finalists again."""
    return tmp_path_factory.mktemp("accuracy")


@pytest.fixture
def tmp_root(tmp_path, monkeypatch, shared_accuracy_cache) -> Path:
    """A throwaway project root (targets, tables, dist, cache) so tests never touch shipped files."""
    root = tmp_path / "root"
    (root / "targets").mkdir(parents=True)
    (root / "latency_tables").mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "accuracy").symlink_to(shared_accuracy_cache, target_is_directory=True)
    monkeypatch.setenv("ELASTIC_DEPLOY_ROOT", str(root))
    monkeypatch.setenv("ELASTIC_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(tmp_path / "locks"))  # no wait behind a developer's run
    return root


def copy_shipped(root: Path, *relpaths: str) -> None:
    for rel in relpaths:
        src = REPO / rel
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


@pytest.fixture
def shipped(tmp_root) -> Path:
    """A throwaway root holding copies of the shipped host target, its table and the checkpoints."""
    copy_shipped(tmp_root, "targets/host-cpu-ort.yaml", "latency_tables/host-cpu-ort.json", "checkpoints")
    return tmp_root


@pytest.fixture
def ship_files(tmp_root):
    """Copy shipped files (targets, tables, checkpoints; paths relative to the repo) into tmp_root."""
    return lambda *relpaths: copy_shipped(tmp_root, *relpaths)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster (2 CPUs) shared by a module's tests; skipped where ray is not installed.

    Module-scoped rather than session-wide so that its daemons are gone while other modules measure
    latencies; starting one takes ~7 s here.
    """
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (make test does)")
    ray.init(
        address="local",  # a new cluster, never one that `ray start` left on this machine
        num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 1024**2,
        logging_level="warning",
    )  # fmt: skip
    try:
        yield ray
    finally:
        ray.shutdown()


def pytest_configure(config) -> None:
    """Under pytest-xdist each worker computes on one torch thread: two workers on two cores, not four
    threads fighting for them (a backend's own threads, e.g. a target's ORT intra-op setting, are unchanged)."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)
