"""The ssh runner: copies artifacts to a host over OpenSSH and measures them there.

Every call runs the real `ssh`/`scp` clients with argument lists (never a local shell). Artifacts go to
`~/.cache/elastic-deploy/remote/<sha256 prefix>/<file name>` on the host (skipped when a file with the
same sha256 is already there), then `<runner.python> -m deploy.runners.remote_bench` measures them and prints
one JSON line, parsed here into LatencyStats. The host needs Python with elastic-deploy installed;
the remote benchmark feeds a seeded random input of each ONNX file's input shape (the `inputs` given
here are not sent: latency does not depend on values). Failures are one-line RunnerErrors.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import logging
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from deploy import workspace
from deploy.backends.base import Artifact, Backend
from deploy.errors import RunnerError
from deploy.latency.stats import LatencyStats, MeasureProtocol
from deploy.models.checkpoint import sha256_file
from deploy.runners.base import Progress, SingleFromMany
from deploy.runners.remote_bench import SUPPORTED_BACKENDS
from deploy.runners.specs import SshSpec

log = logging.getLogger(__name__)

REMOTE_ROOT = PurePosixPath(".cache/elastic-deploy/remote")  # relative to the remote home directory
SHA_PREFIX = 16
CONNECT_TIMEOUT_S = 10
SSH_FAILED = 255  # ssh's own exit status for connection and authentication failures
UNREACHABLE = ("Connection refused", "timed out", "No route", "Could not resolve", "Network is unreachable")
_STAT_FIELDS = {f.name for f in dataclasses.fields(LatencyStats)}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


class SshRunner(SingleFromMany):
    name = "ssh"
    spec_model = SshSpec
    backends = SUPPORTED_BACKENDS  # what deploy.runners.remote_bench loads on the host

    def __init__(self, spec: SshSpec, cache_dir: Path | None = None) -> None:
        if not spec.host:
            raise RunnerError("runner kind ssh needs a host: set runner.host (and user, port, key_path) in the target")
        self.spec = spec
        self.host = spec.host
        self.user = spec.user or getpass.getuser()
        self.port = spec.port or 22
        self.key_path = Path(spec.key_path).expanduser() if spec.key_path else None
        self.python = spec.python or "python3"
        self.known_hosts = (cache_dir or workspace.cache_dir()) / "ssh" / "known_hosts"
        self._described: str | None = None

    @property
    def where(self) -> str:
        return f"ssh:{self.user}@{self.host}"

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def _options(self) -> list[str]:
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        opts = [
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        if self.key_path is not None:
            opts = ["-i", str(self.key_path), "-o", "IdentitiesOnly=yes", *opts]
        return opts

    def ssh_command(self, remote_command: str) -> list[str]:
        """The local argv: remote_command is one string for the remote shell, built with shlex.quote."""
        # "--" ends ssh's options: the destination can never be read as one (the spec refuses a leading "-" too).
        return ["ssh", "-p", str(self.port), *self._options(), "--", f"{self.user}@{self.host}", remote_command]

    def scp_command(self, local: Path, remote: PurePosixPath) -> list[str]:
        destination = f"{self.user}@{self.host}:{remote}"
        return ["scp", "-q", "-P", str(self.port), *self._options(), "--", str(local), destination]

    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess[str]:
        log.debug("%s: %s", what, shlex.join(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        except FileNotFoundError:
            raise RunnerError(
                f"the OpenSSH client ({argv[0]}) is not installed here; install openssh-client to use ssh targets"
            ) from None
        if proc.returncode != 0:
            self._raise_transport(proc, what)
        return proc

    def _raise_transport(self, proc: subprocess.CompletedProcess[str], what: str) -> None:
        """Connection and authentication failures (ssh exit 255, or scp's messages from ssh)."""
        err = proc.stderr
        if "Permission denied" in err:
            key = f" {self.key_path}" if self.key_path else ""
            raise RunnerError(
                f"ssh authentication to {self.address} failed (Permission denied) while {what}: authorise the key"
                f"{key} on the host (ssh-copy-id -p {self.port}{' -i' + key if key else ''} {self.user}@{self.host}) "
                "or fix runner.user/key_path"
            )
        if any(s in err for s in UNREACHABLE):
            raise RunnerError(
                f"cannot reach {self.host} port {self.port} while {what} ({_last_line(err)}): check the host is up "
                "and sshd listens there, or fix runner.host/port in the target"
            )
        if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
            raise RunnerError(
                f"the host key of {self.host}:{self.port} changed: if that is expected, remove its line from "
                f"{self.known_hosts} and run again"
            )
        if proc.returncode == SSH_FAILED:
            raise RunnerError(
                f"ssh to {self.address} failed while {what} ({_last_line(err) or 'exit 255'}); "
                f"try `{shlex.join(['ssh', '-p', str(self.port), '--', f'{self.user}@{self.host}'])}` by hand"
            )

    def device_key(self) -> str:
        return f"ssh:{self.host}:{self.port}"

    def describe(self) -> str:
        if self._described is None:
            proc = self._run(self.ssh_command("hostname"), "describing the host")
            name = proc.stdout.strip() or self.host
            self._described = f"{self.user}@{self.host}:{self.port} ({name})"
        return self._described

    def upload(self, artifacts: Sequence[Artifact]) -> list[PurePosixPath]:
        """Remote paths of the artifacts, copying those not already there with the same sha256."""
        local = {Path(a.path): sha256_file(Path(a.path)) for a in artifacts}
        remote = {p: REMOTE_ROOT / digest[:SHA_PREFIX] / p.name for p, digest in local.items()}
        dirs = sorted({str(r.parent) for r in remote.values()})
        files = sorted({str(r) for r in remote.values()})
        quoted = shlex.join(files)
        check = (
            f"mkdir -p -- {shlex.join(dirs)} && "
            f"{{ sha256sum -- {quoted} 2>/dev/null || shasum -a 256 -- {quoted} 2>/dev/null; true; }}"
        )
        proc = self._run(self.ssh_command(check), "checking artifacts on the host")
        present = {}
        for line in proc.stdout.splitlines():
            parts = line.split(maxsplit=1)
            if len(parts) == 2:
                present[parts[1].strip().lstrip("*")] = parts[0]
        for path, digest in local.items():
            if present.get(str(remote[path])) == digest:
                log.debug("%s already on %s", remote[path], self.host)
                continue
            self._run(self.scp_command(path, remote[path]), f"copying {path.name} to the host")
        return [remote[Path(a.path)] for a in artifacts]

    def benchmark_many(
        self,
        backend: Backend,
        items: Sequence[tuple[Artifact, Mapping[str, np.ndarray]]],
        protocol: MeasureProtocol,
        on_progress: Progress | None = None,
        *,
        warn_noisy: bool = True,  # the host's gate warning stays in its stderr, which is shown only on failure
    ) -> list[LatencyStats]:
        if not items:
            return []
        progress = on_progress or (lambda _msg: None)
        artifacts = [artifact for artifact, _ in items]
        progress(f"copying {len(artifacts)} artifact(s) to {self.address}")
        remote = self.upload(artifacts)
        threads = int(artifacts[0].options.get("intra_op_num_threads", 1))
        argv = [
            self.python, "-m", "deploy.runners.remote_bench",
            "--backend", backend.name,
            "--threads", str(threads),
            "--protocol", json.dumps(protocol.to_json(), separators=(",", ":")),
            "--artifact", str(remote[0]),
        ]  # fmt: skip
        if len(remote) > 1:
            argv += ["--items", ",".join(str(r) for r in remote[1:])]
        progress(f"measuring {len(artifacts)} artifact(s) on {self.address}")
        proc = self._run_bench(shlex.join(argv))
        return self._parse(proc, len(items))

    def _run_bench(self, command: str) -> subprocess.CompletedProcess[str]:
        argv = self.ssh_command(command)
        log.debug("benchmark: %s", shlex.join(argv))
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        except FileNotFoundError:
            raise RunnerError("the OpenSSH client (ssh) is not installed here; install openssh-client") from None
        if proc.returncode == SSH_FAILED:
            self._raise_transport(proc, "running the benchmark")
        err = proc.stderr
        if "No module named deploy" in err or "No module named 'deploy'" in err:
            raise RunnerError(
                f"{self.python} on {self.address} cannot import deploy: `pip install elastic-deploy` there "
                "(into that Python) or set runner.python to an interpreter that has it"
            )
        if proc.returncode == 127 or (proc.returncode != 0 and not proc.stdout.strip() and "not found" in err):
            raise RunnerError(
                f"remote python '{self.python}' was not found on {self.address} ({_last_line(err)}): install "
                "Python 3 with elastic-deploy there or set runner.python in the target"
            )
        return proc

    def _parse(self, proc: subprocess.CompletedProcess[str], n: int) -> list[LatencyStats]:
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.strip().startswith("{")), "")
        try:
            result: Any = json.loads(line) if line else None
        except json.JSONDecodeError:
            result = None
        if not isinstance(result, dict):
            detail = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit {proc.returncode}"
            raise RunnerError(
                f"the benchmark on {self.address} printed no result ({detail}); run "
                f"`{self.python} -m deploy.runners.remote_bench --help` there to check the install"
            )
        if "error" in result:
            raise RunnerError(f"the benchmark on {self.address} failed: {result['error']}")
        try:
            host = result.get("host", {})
            log.info("measured on %s (%s)", host.get("hostname", self.host), host.get("cpu", "unknown CPU"))
            stats = [
                LatencyStats(
                    **{
                        **{k: v for k, v in item["stats"].items() if k in _STAT_FIELDS},
                        "round_medians_ms": tuple(item["stats"].get("round_medians_ms", ())),
                        "where": self.where,
                    }
                )
                for item in result["items"]
            ]
        except (KeyError, TypeError, AttributeError) as exc:
            raise RunnerError(
                f"the benchmark on {self.address} printed a malformed result ({type(exc).__name__}: {exc}); "
                "install the same elastic-deploy version there as here"
            ) from None
        if len(stats) != n:
            raise RunnerError(
                f"the benchmark on {self.address} returned {len(stats)} results for {n} artifacts; "
                "install the same elastic-deploy version there as here"
            )
        return stats
