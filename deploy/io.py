"""Atomic writes and loud reads: a file is either the old version or the new one, never half of each."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

from deploy.errors import ConfigFileError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; shipped tables and caches are shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# Every file this tool reads is small (the largest, an accuracy cache, holds under a KiB per evaluated subnet);
# the bound stops a file that is a link to /dev/zero, or a runaway one, from filling memory.
MAX_READ_BYTES = 32 * 1024 * 1024
_CHUNK = 1024 * 1024  # read(n) allocates n bytes up front: a small file must not cost the whole bound


def read_bytes(path: Path, kind: str, limit: int = MAX_READ_BYTES) -> bytes:
    """At most `limit` bytes of `path`, read with a bound (the size a device reports means nothing); a pipe is
    refused rather than waited on."""
    chunks: list[bytes] = []
    total = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with open(fd, "rb") as f:
            if stat.S_ISFIFO(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise ConfigFileError(f"{path}: is a pipe, not a {kind} file; give the file itself")
            while total <= limit and (chunk := f.read(min(_CHUNK, limit + 1 - total))):
                chunks.append(chunk)
                total += len(chunk)
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{path}: is a folder, not a {kind} file") from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if total > limit:
        bound = f"{limit / 2**20:g} MiB" if limit >= 2**20 else f"{limit:,} bytes"
        raise ConfigFileError(
            f"{path}: larger than {bound}, the most a {kind} file of this tool holds (is it a link to a device "
            "or another file?); give the right file"
        )
    return b"".join(chunks)


def _read_text(path: Path, kind: str) -> str:
    data = read_bytes(path, kind, MAX_READ_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            f"{path}: not a UTF-8 text file (byte {exc.start}); a {kind} file is text: fix or regenerate it"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as text mode reads them


def read_json(path: Path) -> Any:
    text = _read_text(path, "JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigFileError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; fix or regenerate it"
        ) from None
    except RecursionError:
        raise ConfigFileError(f"{path}: JSON nested too deeply to be a file of this tool; regenerate it") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` may override what it merges
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: SafeLoader's own error names it
                    continue
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} appears twice (first at line {first.start_mark.line + 1}); keep one",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    text = _read_text(path, "YAML")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except RecursionError:
        raise ConfigFileError(f"{path}: YAML nested too deeply to be a file of this tool; fix it") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigFileError(f"{path}: malformed YAML{where}: {problem}") from None


def pydantic_error_line(path: Path, exc: Exception) -> str:
    """One line naming the file, the field and what is wrong, from a pydantic ValidationError."""
    errors = getattr(exc, "errors", lambda: [])()
    if not errors:
        return f"{path}: {exc}"
    first = errors[0]
    loc = ".".join(str(p) for p in first.get("loc", ()))
    field = loc or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    msg = str(first.get("msg", "")).removeprefix("Value error, ")
    nested = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg)  # a validator naming a field inside its own
    if nested:
        field, msg = f"{loc}.{nested.group(1)}" if loc else nested.group(1), nested.group(2)
    return f"{path}: field '{field}': {msg}{more}"
