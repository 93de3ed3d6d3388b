"""Artifacts as bytes, so that a device's actor on another machine measures what was compiled here.

Compiling stays in the driver (one hub cache, one toolchain); a device's host receives the artifact's
files and keeps them under a folder named by their sha256, so the same artifact is written once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deploy.backends.base import Artifact
from deploy.io import atomic_write_bytes

SHA_PREFIX = 16


@dataclass(frozen=True)
class ShippedArtifact:
    artifact: Artifact  # as compiled here; its path is rewritten where it is unpacked
    digest: str  # sha256 over the files' relative names and contents
    files: tuple[tuple[str, bytes], ...]  # (path relative to the artifact, contents); "" for a single file


def pack(artifact: Artifact) -> ShippedArtifact:
    path = Path(artifact.path)
    if path.is_dir():  # e.g. a CoreML .mlpackage
        files = tuple((f.relative_to(path).as_posix(), f.read_bytes()) for f in sorted(path.rglob("*")) if f.is_file())
    else:
        files = (("", path.read_bytes()),)
    digest = hashlib.sha256()
    for name, data in files:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return ShippedArtifact(artifact, digest.hexdigest(), files)


def unpack(shipped: ShippedArtifact, root: Path) -> Artifact:
    """The artifact written under root/<sha256 prefix>/ (once: a later call finds it there)."""
    name = Path(shipped.artifact.path).name
    dest = Path(root) / shipped.digest[:SHA_PREFIX] / name
    if not dest.exists():
        (first, data), *more = shipped.files
        if first == "" and not more:
            atomic_write_bytes(dest, data)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=dest.parent))
            try:
                for rel, data in shipped.files:
                    (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                    (staging / rel).write_bytes(data)
                with contextlib.suppress(OSError):  # another actor on this host got there first: same bytes
                    os.rename(staging, dest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(shipped.artifact, path=dest)
