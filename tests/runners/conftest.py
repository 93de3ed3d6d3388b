"""A real OpenSSH server on 127.0.0.1 for the ssh runner tests (skipped where sshd is missing or fails).

The server runs as this user with a throwaway host key and one authorised client key; the "remote"
Python is this interpreter (sys.executable), so `deploy` is importable at the far end.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD_PACKAGE = "openssh-server"
START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    key: Path  # authorised client key
    wrong_key: Path  # a valid key the server does not accept
    python: str  # the "remote" interpreter

    @staticmethod
    def unused_port() -> int:
        """A port on 127.0.0.1 nothing listens on (for unreachable-host cases)."""
        return free_port()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, capture_output=True)


def _wait_listening(proc: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return True
        except OSError:
            time.sleep(0.1)
    return False


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Iterator[SshServer]:
    sshd_bin = _find_sshd()
    if sshd_bin is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip(f"OpenSSH not installed: install {SSHD_PACKAGE} and openssh-client (`make test` does)")
    work = tmp_path_factory.mktemp("sshd")
    host_key, client_key, wrong_key = work / "host_key", work / "client_key", work / "wrong_key"
    for key in (host_key, client_key, wrong_key):
        _keygen(key)
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    with contextlib.suppress(OSError):  # not root: sshd may still start, or the fixture skips below
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation directory
    port = free_port()
    config = work / "sshd_config"
    config.write_text(
        "\n".join(
            [
                "ListenAddress 127.0.0.1",
                f"Port {port}",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {work / 'authorized_keys'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                f"PidFile {work / 'sshd.pid'}",
                "StrictModes no",
                "UsePAM no",
                "PermitRootLogin yes",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    log = (work / "sshd.log").open("wb")
    proc = subprocess.Popen([sshd_bin, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        if not _wait_listening(proc, port):
            proc.kill()
            tail = (work / "sshd.log").read_text(errors="replace").strip().splitlines()[-1:]
            pytest.skip(f"sshd did not start on 127.0.0.1:{port}: {tail[0] if tail else 'no output'}")
        user = os.environ.get("USER") or getpass.getuser()
        yield SshServer("127.0.0.1", port, user, client_key, wrong_key, sys.executable)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """ORT artifacts of the tiny variant's largest and smallest subnets, with their reference inputs."""
    import torch

    from deploy.backends import get_backend
    from deploy.export import hub
    from deploy.models import build
    from deploy.targets import DeviceInfo, Target

    torch.manual_seed(0)
    supernet = build("matformer_vit_tiny").eval()
    target = Target(
        name="t", device=DeviceInfo(name="here"), backend="onnxruntime", budget_ms=5.0, model="matformer_vit_tiny"
    )
    backend = get_backend("onnxruntime")
    cache = tmp_path_factory.mktemp("cache")
    items = []
    for config in (supernet.largest(), supernet.smallest()):
        entry = hub.get_or_export(
            supernet.extract(config), supernet.example_inputs()[0], {"subnet": config.id}, cache, with_program=False
        )
        artifact = backend.compile(entry, target, cache / "artifacts" / entry.key)
        items.append((artifact, entry.reference_inputs()))
    return backend, items
