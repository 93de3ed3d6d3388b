"""One measurement per device at a time, across every elastic-deploy process on this machine.

Two deploys measuring at once on a 2-core VM each saw the other's load (~0.70 ms against 0.6 ms
budgets) and both shipped saying nothing. Every measurement therefore holds an advisory lock
(`flock`) named after the physical device it runs on: this host for the local runner, the ssh host,
the phone's serial. A process that finds the device busy says who holds it and waits (up to
`ELASTIC_DEPLOY_LOCK_TIMEOUT_S`, default one hour), then gives up with a DeviceBusyError. The lock is
reentrant within a process, so a table build can hold it for its whole run while each benchmark call
inside takes it again. Locks live in a folder shared by every checkout (`ELASTIC_DEPLOY_LOCK_DIR`,
default `<tmp>/elastic-deploy-locks`); the kernel releases them when a process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.errors import DeviceBusyError

if TYPE_CHECKING:
    from deploy.runners.base import Runner

log = logging.getLogger(__name__)

POLL_S = 0.25
DEFAULT_TIMEOUT_S = 3600.0
_held: dict[str, tuple[int, int]] = {}  # device -> (file descriptor, depth) held by this process
_guard = threading.Lock()


def lock_dir() -> Path:
    env = os.environ.get("ELASTIC_DEPLOY_LOCK_DIR")
    path = Path(env) if env else Path(tempfile.gettempdir()) / "elastic-deploy-locks"
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            path.chmod(0o1777)  # shared by every user's checkouts, like /tmp
    return path


def lock_path(device: str) -> Path:
    return lock_dir() / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", device) + ".lock")


def _timeout_s() -> float:
    try:
        return float(os.environ.get("ELASTIC_DEPLOY_LOCK_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096) or b"{}")
        return f"pid {data.get('pid')}: {data.get('what', 'elastic-deploy')}"
    except (OSError, ValueError):
        return "another elastic-deploy process"


def _describe_self(what: str) -> bytes:
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:6]))
    return json.dumps({"pid": os.getpid(), "what": what or command, "since": time.time()}).encode()


@contextlib.contextmanager
def device_lock(device: str, what: str = "", say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the measurement lock of `device` (waiting, with a message, while another process holds it)."""
    with _guard:
        if device in _held:
            fd, depth = _held[device]
            _held[device] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                fd, depth = _held[device]
                _held[device] = (fd, depth - 1)
        return

    fd = os.open(lock_path(device), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _acquire(fd, device, say or log.warning)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _describe_self(what), 0)
        with _guard:
            _held[device] = (fd, 1)
        try:
            yield
        finally:
            with _guard:
                del _held[device]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def measuring(runner: Runner, what: str = "") -> contextlib.AbstractContextManager[None]:
    """The lock of the device `runner` measures on (nothing for a farm, whose devices lock their own)."""
    key = runner.device_key()
    return device_lock(key, what) if key is not None else contextlib.nullcontext()


def _acquire(fd: int, device: str, say: Callable[[str], None]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    timeout = _timeout_s()
    holder = _holder(fd)
    say(f"waiting for {device}: another measurement runs there ({holder}); figures taken at once would be wrong")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            log.info("%s is free again; measuring", device)
            return
        except BlockingIOError:
            continue
    raise DeviceBusyError(
        f"{device} stayed busy for {timeout:.0f} s ({holder}); wait for it to finish (or stop it), then run "
        "this again, or set ELASTIC_DEPLOY_LOCK_TIMEOUT_S to wait longer"
    )
