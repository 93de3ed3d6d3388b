"""One measurement per device at a time, across processes."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from deploy.errors import DeviceBusyError
from deploy.latency.lock import device_lock, lock_path

HOLD = """
import sys, time
from deploy.latency.lock import device_lock
with device_lock(sys.argv[1], "a deploy in another terminal"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def locks(tmp_path, monkeypatch):
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(tmp_path / "locks"))
    return tmp_path / "locks"


def _holder(device: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, device, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_measurement_on_a_busy_device_waits_saying_who_holds_it(locks):
    holder = _holder("local:box", 1.5)
    said: list[str] = []
    start = time.monotonic()
    with device_lock("local:box", say=said.append):
        waited = time.monotonic() - start
    holder.wait(timeout=30)
    assert waited >= 0.5, "it waited for the other process"
    assert len(said) == 1 and "local:box" in said[0] and "a deploy in another terminal" in said[0]


def test_busy_device_past_the_timeout_is_a_clear_error(locks, monkeypatch):
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_TIMEOUT_S", "0.5")
    holder = _holder("adb:pixel", 10)
    try:
        with pytest.raises(DeviceBusyError, match=r"adb:pixel stayed busy .*pid \d+"), device_lock("adb:pixel"):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_reentrant_within_a_process_and_other_devices_are_independent(locks, monkeypatch):
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_TIMEOUT_S", "0.5")
    holder = _holder("ssh:other:22", 10)
    try:
        with device_lock("local:box"), device_lock("local:box"), device_lock("adb:x"):
            assert lock_path("local:box").exists()
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_released(locks):
    holder = _holder("local:box", 60)
    holder.kill()
    holder.wait()
    start = time.monotonic()
    with device_lock("local:box"):
        assert time.monotonic() - start < 1


def test_table_measurement_waits_for_another_process_measuring_on_this_host(locks, tmp_root):
    import socket

    from deploy.latency.build import null_measurable
    from deploy.latency.session import MeasureSession
    from deploy.targets import DeviceInfo, MeasurementSpec, Target

    quick = MeasurementSpec(warmup_runs=1, min_runs=3, min_time_s=0.0, rounds=1, cv_max=10.0, max_retries=0)
    target = Target(
        name="t1", device=DeviceInfo(name="box"), backend="onnxruntime", budget_ms=1.0, model="matformer_vit_tiny",
        measurement=quick,
    )  # fmt: skip
    session = MeasureSession.open(target)
    item = null_measurable(session)
    holder = _holder(f"local:{socket.gethostname()}", 1.5)
    start = time.monotonic()
    stats = session.measure([item])[0]
    holder.wait(timeout=30)
    assert time.monotonic() - start >= 0.5 and stats.median_ms > 0


# --- issue 24: a planted link or file never loses a user's data ------------------------------------------


def test_lock_file_planted_as_a_symlink_is_refused_and_its_target_left_intact(tmp_path, monkeypatch):
    from deploy.errors import LockFileError

    shared = tmp_path / "L"
    shared.mkdir(mode=0o1777)
    victim = tmp_path / "v.txt"
    victim.write_text("precious\n")
    (shared / "local_vm.lock").symlink_to(victim)
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(shared))
    with pytest.raises(LockFileError, match=r"local_vm.lock is a symbolic link"), device_lock("local:vm"):
        pass
    assert victim.read_text() == "precious\n"


def test_lock_file_planted_as_a_hard_link_is_refused_and_its_target_left_intact(tmp_path, monkeypatch):
    from deploy.errors import LockFileError

    shared = tmp_path / "L"
    shared.mkdir()
    victim = tmp_path / "v.txt"
    victim.write_text("precious\n")
    (shared / "local_vm.lock").hardlink_to(victim)
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(shared))
    with pytest.raises(LockFileError, match=r"not a lock file of yours"), device_lock("local:vm"):
        pass
    assert victim.read_text() == "precious\n"


def test_lock_file_planted_as_a_fifo_is_refused_without_blocking(tmp_path, monkeypatch):
    import os

    from deploy.errors import LockFileError

    shared = tmp_path / "L"
    shared.mkdir()
    os.mkfifo(shared / "local_vm.lock")
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(shared))
    with pytest.raises(LockFileError, match=r"not a lock file of yours"), device_lock("local:vm"):
        pass


@pytest.fixture
def default_lock_dir(tmp_path, monkeypatch):
    """The default lock folder's place, with the temporary folder moved into tmp_path."""
    from deploy.latency import lock

    monkeypatch.delenv("ELASTIC_DEPLOY_LOCK_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(lock.tempfile, "gettempdir", lambda: str(tmp_path))
    return lock


def test_default_lock_folder_is_private_to_the_user(tmp_path, default_lock_dir):
    import os
    import stat

    folder = default_lock_dir.lock_dir()
    assert folder == tmp_path / f"elastic-deploy-locks-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_default_lock_folder_planted_as_a_link_is_refused(tmp_path, default_lock_dir):
    import os

    from deploy.errors import LockFileError

    elsewhere = tmp_path / "someone-elses"
    elsewhere.mkdir()
    (tmp_path / f"elastic-deploy-locks-{os.getuid()}").symlink_to(elsewhere)
    with pytest.raises(LockFileError, match=r"is a symbolic link"):
        default_lock_dir.lock_dir()


def test_lock_folder_that_is_a_file_is_a_one_line_error(tmp_path, monkeypatch):
    from deploy.errors import LockFileError

    afile = tmp_path / "afile"
    afile.write_text("mine")
    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_DIR", str(afile))
    with pytest.raises(LockFileError, match=r"is a file, not a folder; set ELASTIC_DEPLOY_LOCK_DIR"), device_lock("x"):
        pass
    assert afile.read_text() == "mine"


@pytest.mark.parametrize("value", ["abc", "-1", "inf", "nan"])
def test_lock_timeout_that_is_not_a_number_of_seconds_is_refused(locks, monkeypatch, value):
    from deploy.errors import InvalidArgumentError

    monkeypatch.setenv("ELASTIC_DEPLOY_LOCK_TIMEOUT_S", value)
    with pytest.raises(InvalidArgumentError, match=r"ELASTIC_DEPLOY_LOCK_TIMEOUT_S="), device_lock("x"):
        pass
