"""One measurement per device at a time, across every elastic-deploy process on this machine.

Two deploys measuring at once on one machine each saw the other's load, went over their budgets and both
shipped saying nothing (docs/getting-started.md#your-files-are-safe). Every measurement therefore holds an
advisory lock (`flock`) named after the physical device it runs on: this host for the local runner, the ssh
host, the phone's serial. A process that finds the device busy says who holds it and waits (up to
`ELASTIC_DEPLOY_LOCK_TIMEOUT_S`, default one hour), then gives up with a DeviceBusyError. The lock is
reentrant within a process, so a table build can hold it for its whole run while each benchmark call inside
takes it again. Locks live in a folder of the user's own (`ELASTIC_DEPLOY_LOCK_DIR`, default
`$XDG_RUNTIME_DIR/elastic-deploy-locks`, else `<tmp>/elastic-deploy-locks-<uid>`, mode 0700); the kernel
releases them when a process dies.

A lock file is opened without following a symbolic link and must be a regular file of this user with one
link: another local user who plants a link in a shared folder cannot make a lock truncate their target.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from deploy.errors import DeviceBusyError, InvalidArgumentError, LockFileError

if TYPE_CHECKING:
    from deploy.runners.base import Runner

log = logging.getLogger(__name__)

POLL_S = 0.25
DEFAULT_TIMEOUT_S = 3600.0
_held: dict[str, tuple[int, int]] = {}  # device -> (file descriptor, depth) held by this process
_guard = threading.Lock()


def _default_lock_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "elastic-deploy-locks"
    return Path(tempfile.gettempdir()) / f"elastic-deploy-locks-{os.getuid()}"


def lock_dir() -> Path:
    """The lock folder, made private to this user where this tool creates it; refused when it is a file or link."""
    env = os.environ.get("ELASTIC_DEPLOY_LOCK_DIR")
    path = Path(env).expanduser() if env else _default_lock_dir()
    fix = "set ELASTIC_DEPLOY_LOCK_DIR to a folder of your own" if env else "remove it, or set ELASTIC_DEPLOY_LOCK_DIR"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise LockFileError(f"lock folder {path} is a file, not a folder; {fix}") from None
    except OSError as exc:
        raise LockFileError(f"lock folder {path} cannot be made ({exc.strerror or exc}); {fix}") from None
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) and not env:
        # The default lives in a shared folder: a link there may be another user's plant.
        raise LockFileError(f"lock folder {path} is a symbolic link, which this tool never makes; {fix}")
    if not path.is_dir():
        raise LockFileError(f"lock folder {path} is not a folder; {fix}")
    if not env and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise LockFileError(f"lock folder {path} belongs to another user or others can write in it; {fix}")
    return path


def lock_path(device: str) -> Path:
    return lock_dir() / (re.sub(r"[^A-Za-z0-9_.@-]+", "_", device) + ".lock")


def _open_lock(path: Path) -> int:
    """Open (or create) the lock file itself: never through a link, never a file of another user or a FIFO."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        what = "is a symbolic link" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror or exc})"
        raise LockFileError(
            f"lock file {path} {what}; nothing was changed: remove it or set ELASTIC_DEPLOY_LOCK_DIR to a folder "
            "of your own"
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.getuid():
        os.close(fd)
        raise LockFileError(
            f"lock file {path} is not a lock file of yours (another file type, another owner or a hard link); "
            "nothing was changed: remove it or set ELASTIC_DEPLOY_LOCK_DIR to a folder of your own"
        )
    return fd


def _timeout_s() -> float:
    text = os.environ.get("ELASTIC_DEPLOY_LOCK_TIMEOUT_S")
    if text is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise InvalidArgumentError(
            f"ELASTIC_DEPLOY_LOCK_TIMEOUT_S={text!r} is not a number of seconds; set it to e.g. 600, or unset it "
            f"(default {DEFAULT_TIMEOUT_S:.0f})"
        )
    return value


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

    timeout = _timeout_s()  # a bad value is refused before anything is opened
    fd = _open_lock(lock_path(device))
    try:
        _acquire(fd, device, timeout, say or log.warning)
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


def _acquire(fd: int, device: str, timeout: float, say: Callable[[str], None]) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
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
