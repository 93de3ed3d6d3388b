"""Keep a converter's chatter (C-level prints, tqdm bars, warnings, INFO logs) off the console.

PROCESS-WIDE while it runs: it redirects this process's file descriptors and `sys.stdout`/`sys.stderr`,
raises global loggers' levels, may set environment variables and filters warnings. Whatever else this
process prints or logs meanwhile (another thread's progress bar, a warning) is held back with the
converter's output. Use it around a conversion call only, never around a measurement.

Each converter needs a different part of it (`quiet_converter`'s arguments); what it held back goes to the
caller's DEBUG log line by line, progress-bar lines (those with a '|') left out, and to `capture` for
errors that quote it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal


@dataclass
class Captured:
    """What a quieted conversion printed, for an error message that needs it (an op the runtime lacks)."""

    text: str = ""


@contextlib.contextmanager
def _raised(loggers: Mapping[str, int]) -> Iterator[None]:
    """Each named logger at least at its level (never lower than it already is), restored afterwards."""
    held = [(logging.getLogger(name), level) for name, level in loggers.items()]
    saved = [lg.level for lg, _ in held]
    for lg, level in held:
        lg.setLevel(max(lg.getEffectiveLevel(), level))
    try:
        yield
    finally:
        for (lg, _), level in zip(held, saved, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _fds_into(sink: IO[bytes], fds: Sequence[int]) -> Iterator[None]:
    """The file descriptors `fds` (1: stdout, 2: stderr) written into `sink`: what C code prints."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved: dict[int, int] = {}
    for fd in fds:
        try:
            saved[fd] = os.dup(fd)
        except OSError:  # no such descriptor (an embedded interpreter): the Python-level redirect only
            continue
        os.dup2(sink.fileno(), fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)


@contextlib.contextmanager
def quiet_converter(
    label: str,
    log: logging.Logger,
    *,
    fds: Sequence[int] = (),
    streams: Sequence[Literal["stdout", "stderr"]] = (),
    loggers: Mapping[str, int] | None = None,
    env: Mapping[str, str] | None = None,
    ignore_warnings: bool = False,
    unless_debug: bool = False,
    capture: Captured | None = None,
) -> Iterator[None]:
    """Run the block with a converter's output held back (process-wide: see the module docstring).

    `fds`: descriptors redirected (C-level prints); `streams`: Python-level `sys.stdout`/`sys.stderr`
    redirected; `loggers`: name → the level each is raised to at least; `env`: variables set meanwhile;
    `ignore_warnings`: warnings dropped; `unless_debug`: change nothing when `log` is at DEBUG (the user
    asked to see it all). What was held back goes to `log.debug` as "`label`: line", and into `capture`.
    """
    if unless_debug and log.isEnabledFor(logging.DEBUG):
        yield
        return
    py = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(_raised(loggers or {}))
                stack.enter_context(_environ(env or {}))
                stack.enter_context(_fds_into(sink, fds))
                if "stdout" in streams:
                    stack.enter_context(contextlib.redirect_stdout(py))
                if "stderr" in streams:
                    stack.enter_context(contextlib.redirect_stderr(py))
                if ignore_warnings:
                    stack.enter_context(warnings.catch_warnings())
                    warnings.simplefilter("ignore")
                yield
        finally:
            sink.seek(0)
            text = py.getvalue() + sink.read().decode(errors="replace")
            if capture is not None:
                capture.text = text
            for line in text.replace("\r", "\n").splitlines():
                if line.strip() and "|" not in line:  # progress bars contain '|'
                    log.debug("%s: %s", label, line.strip())
