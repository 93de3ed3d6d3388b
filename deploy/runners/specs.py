"""What a target says about its runner: one pydantic spec per runner kind (a union keyed by `kind`).

Each runner class declares its spec (`spec_model`) and the backends it can run (`backends`, None: any
whose runtime runs where it measures); a target is checked against both when it loads. A user's runner
subclasses `RunnerSpecBase` with its own `kind` and registers in the `elastic_deploy.runners` group.
A spec also declares what its runner can do (`measures_in_process`), so callers ask that rather than
test for a kind by name.

Every field that reaches a program's argument list (ssh, scp, adb) is argument-safe: never an option
(a leading '-'), no whitespace or control characters, only the characters a host, user, serial or path
needs. A target file must not be able to run a command on this machine.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


def argument_safe(pattern: str, what: str) -> Any:
    """A str type for values that reach an argument list (see the module docstring)."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if value.startswith("-"):
            raise ValueError(f"{value!r} starts with '-', which ssh/adb would read as an option; {what}")
        if any(c.isspace() or not c.isprintable() for c in value):
            raise ValueError(f"{value!r} holds whitespace or control characters; {what}")
        if not compiled.fullmatch(value):
            raise ValueError(f"{value!r} holds characters that are not allowed; {what}")
        return value

    return Annotated[str, AfterValidator(check)]


Host = argument_safe(r"[A-Za-z0-9_.:%\[\]-]+", "give a host name or IP address")
User = argument_safe(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*", "give a plain user name")
Serial = argument_safe(r"[A-Za-z0-9][A-Za-z0-9_.:-]*", "give the serial that `adb devices` lists")
FilePath = argument_safe(r"[A-Za-z0-9_./~+@:=-]+", "give a path without spaces or shell characters")
CpuMask = argument_safe(r"[0-9a-fA-F]+", "give a hexadecimal CPU mask such as f0")


class RunnerSpecBase(BaseModel):
    """Common to every runner spec: its `kind` (the runner's registered name) and its runner's capabilities.

    `measures_in_process`: the runner times artifacts in this process, on this machine, with this machine's
    runtime (the local runner). Then an artifact this machine cannot run cannot be measured either, the
    machine's CPU count bounds the target's threads, and a failure to measure is this machine's, not a
    device that is away. False (a user's runner inherits it): measurements run on a device elsewhere.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    measures_in_process: ClassVar[bool] = False
    kind: str

    def where(self) -> str | None:
        """What names the device this spec reaches (a host, a serial), for its default device id."""
        return None


class LocalSpec(RunnerSpecBase):
    measures_in_process: ClassVar[bool] = True
    kind: Literal["local"] = "local"


class SshSpec(RunnerSpecBase):
    kind: Literal["ssh"] = "ssh"
    host: Host
    user: User | None = None  # default: this user's name
    port: int = Field(22, ge=1, le=65535, strict=True)  # `port: true` is not port 1
    key_path: FilePath | None = None
    python: FilePath = "python3"  # remote interpreter that has elastic-deploy installed

    def where(self) -> str:
        return self.host


class AdbSpec(RunnerSpecBase):
    kind: Literal["adb"] = "adb"
    serial: Serial | None = None  # default: the only phone `adb devices` lists
    benchmark_binary: FilePath | None = None
    cpu_mask: CpuMask | None = None  # taskset mask, e.g. f0 for a phone's big cores

    def where(self) -> str | None:
        return self.serial


RunnerSpec = LocalSpec | SshSpec | AdbSpec  # the built-in kinds (users add theirs through the registry)


def parse_runner(data: Any) -> RunnerSpecBase:
    """The spec of the runner `data['kind']` names (default local), validated by that runner's own model."""
    if isinstance(data, RunnerSpecBase):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping with 'kind' (local, ssh, adb, …), got {type(data).__name__}")
    kind = data.get("kind", "local")
    if not isinstance(kind, str):
        raise ValueError(f"kind must be a runner name, got {kind!r}")
    from deploy.errors import DeployError
    from deploy.runners import RUNNERS

    try:
        model = RUNNERS.load(kind).spec_model
    except DeployError as exc:
        raise ValueError(str(exc)) from None
    try:
        return model.model_validate({**data, "kind": kind})
    except ValidationError as exc:  # one line naming the runner's field (a nested error would span lines)
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ())) or "(spec)"
        msg = str(first.get("msg", "")).removeprefix("Value error, ")
        raise ValueError(f"{field}: {msg}") from None
