"""Atomic writes and loud reads: a file is either the old version or the new one, never half of each."""

from __future__ import annotations

import json
import os
import re
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


def _read_text(path: Path, kind: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigFileError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ConfigFileError(f"{path}: is a folder, not a {kind} file") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            f"{path}: not a UTF-8 text file (byte {exc.start}); a {kind} file is text: fix or regenerate it"
        ) from None
    except OSError as exc:
        raise ConfigFileError(f"{path}: cannot be read ({exc.strerror or exc})") from None


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


def read_yaml(path: Path) -> Any:
    text = _read_text(path, "YAML")
    try:
        return yaml.safe_load(text)
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
    field = ".".join(str(p) for p in first.get("loc", ())) or "(top level)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    msg = str(first.get("msg", "")).removeprefix("Value error, ")
    nested = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg)  # a validator naming a field inside its own
    if nested:
        field, msg = f"{field}.{nested.group(1)}", nested.group(2)
    return f"{path}: field '{field}': {msg}{more}"
