"""Output folders (`dist/<target>/`, `--out DIR`): never emptied if they hold a user's files, swapped in one step.

A deploy or convert builds its files in a staging folder beside the output folder and swaps the two
when everything has been written. The rules, each because of a way a user could lose work:

- The output folder is checked before any work: a file, a folder that cannot be written, or a folder
  holding anything this tool did not write (`--out .` in a project, `--out ~/notes`) is refused with
  one line. What a deploy wrote is listed in its marker file, so a later deploy knows what it may replace;
  a folder without that marker is never taken for a previous output, whatever its files are called.
- The swap is one step (Linux `renameat2(RENAME_EXCHANGE)`): a kill at any moment leaves either the
  old folder or the new one at the path. Where the exchange is not available the old folder is renamed
  aside first, and the next run puts it back if it was killed in between.
- Staging and set-aside folders carry their process id in their name and the marker inside; the next run
  deletes (or restores) only those that carry the marker and whose process has died. A folder of the user's
  that merely looks like one is never touched.
- A disk that fills up mid-write is one line; the previous output stays as it was.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from deploy.errors import OutputDirError
from deploy.io import atomic_write_json

log = logging.getLogger(__name__)

_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

MARKER = ".elastic-deploy.json"
_STAGING, _ASIDE = "staging", "old"


def _marker(folder: Path) -> dict | None:
    """The marker this tool writes into every folder it makes (None when absent or not ours)."""
    try:
        data = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != "elastic-deploy" or not isinstance(data.get("files"), list):
        return None
    return data


def _is_ours(folder: Path) -> tuple[bool, list[str]]:
    """(whether every entry of `folder` was written by a deploy or convert, the entries that were not)."""
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return True, []
    marker = _marker(folder)
    listed = {str(n) for n in marker["files"]} | {MARKER} if marker is not None else set()
    foreign = [n for n in names if n not in listed]
    return not foreign, foreign


def is_output_dir(folder: Path) -> bool:
    """Whether `folder` is an output folder this tool made (it holds the marker)."""
    return _marker(folder) is not None


def add_to_marker(folder: Path, names: list[str]) -> None:
    """Record files a later step (`compile` on the device) wrote into an output folder, so that the next
    deploy may replace them."""
    marker = _marker(folder) or {"tool": "elastic-deploy", "files": []}
    files = sorted({str(n) for n in marker["files"]} | set(names))
    atomic_write_json(folder / MARKER, {**marker, "files": files})


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def check_output_dir(out_dir: Path, option: str = "--out") -> Path:
    """Refuse, before any work, an output path that would lose files or cannot be written; returns it resolved."""
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputDirError(f"{option} {out_dir} is a file, not a folder; give a folder (new or from a previous run)")
    if out_dir.is_dir():
        ours, foreign = _is_ours(out_dir)
        if not ours:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputDirError(
                f"{option} {out_dir} holds files elastic-deploy did not write ({shown}); nothing was changed: "
                "give a new or empty folder (the artifacts are written into it; an output of an elastic-deploy "
                f"older than its {MARKER} marker is not recognised: delete it yourself)"
            )
    parent = _nearest_existing(out_dir.parent)
    if not parent.is_dir():
        raise OutputDirError(f"{option} {out_dir}: {parent} is a file, so the folder cannot be made; choose another")
    try:  # the real test of writability (os.access says yes to root on read-only mounts)
        probe = tempfile.mkdtemp(prefix=".elastic-deploy-probe.", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise OutputDirError(
            f"{option} {out_dir}: cannot write in {parent} ({exc.strerror or exc}); choose a folder you can write to"
        ) from None
    return out_dir


def check_output_file(path: Path, option: str) -> Path:
    """Refuse a file path that is a folder or whose folder cannot be written, before any work."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise OutputDirError(f"{option} {path} is a folder; give a file name, e.g. {path / 'choice.json'}")
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        raise OutputDirError(f"{option} {path}: {parent} is a file, so the file cannot be written there")
    try:
        probe = tempfile.mkstemp(prefix=".elastic-deploy-probe.", dir=parent)
        os.close(probe[0])
        os.unlink(probe[1])
    except OSError as exc:
        raise OutputDirError(
            f"{option} {path}: cannot write in {parent} ({exc.strerror or exc}); choose another place"
        ) from None
    return path


def _pid_of(name: str) -> int | None:
    # .<out>.<kind>-<pid>-<random>
    try:
        return int(name.rsplit(".", 1)[1].split("-")[1])
    except (IndexError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def recover(out_dir: Path) -> None:
    """Clean up after killed runs: delete dead staging folders, put back an old folder set aside mid-swap.

    Only folders named `.<out>.staging-<pid>-…` or `.<out>.old-<pid>-…` that hold this tool's marker and
    whose process is gone; anything else beside the output folder is the user's."""
    parent = out_dir.parent
    if not parent.is_dir():
        return
    for leftover in sorted(parent.glob(f".{out_dir.name}.*")):
        kind = leftover.name[len(out_dir.name) + 2 :].split("-")[0]
        if kind not in (_STAGING, _ASIDE) or leftover.is_symlink() or not leftover.is_dir():
            continue
        if _marker(leftover) is None or _alive(_pid_of(leftover.name)):
            continue
        if kind == _ASIDE and not out_dir.exists():
            leftover.rename(out_dir)  # killed between setting the old one aside and moving the new one in
            log.warning("restored %s, which an interrupted run had set aside", out_dir)
            continue
        log.info("removing %s, left by an interrupted run", leftover)
        shutil.rmtree(leftover, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(staging: Path, out_dir: Path) -> None:
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    if _exchange(staging, out_dir):
        shutil.rmtree(staging, ignore_errors=True)  # now holds the previous output
        return
    aside = out_dir.with_name(f".{out_dir.name}.{_ASIDE}-{os.getpid()}-{os.urandom(3).hex()}")
    out_dir.rename(aside)
    staging.rename(out_dir)
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def staged_dir(out_dir: Path, option: str = "--out") -> Iterator[Path]:
    """A fresh folder beside out_dir that replaces it in one step when the block completes.

    A failed run leaves the previous output in place; a folder holding a user's files is refused before
    anything is written (and checked again just before the swap).
    """
    out_dir = check_output_dir(out_dir, option)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    recover(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{_STAGING}-{os.getpid()}-", suffix="", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        # Marked from the start: a later run deletes a dead staging folder only when it carries this.
        atomic_write_json(staging / MARKER, {"tool": "elastic-deploy", "files": [], "staging": True})
        yield staging
        files = sorted(p.name for p in staging.iterdir() if p.name != MARKER)
        atomic_write_json(staging / MARKER, {"tool": "elastic-deploy", "files": files})
        check_output_dir(out_dir, option)  # a file dropped in meanwhile must not be swapped away
        _swap_in(staging, out_dir)
    except OSError as exc:
        if exc.errno not in _NO_ROOM:
            raise
        raise OutputDirError(
            f"{option} {out_dir}: {exc.strerror} while writing the output; nothing was half-written and the "
            "previous output (if any) is unchanged: free space (or choose another folder) and run again"
        ) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
