"""The text corpus language models train on here: a slice of the Python standard library's own source.

Available offline, allowed to be shipped (PSF license, beside it in the archive) and fixed by content: the
slice is shipped as one archive (`deploy/tasks/corpus/pystdlib.tar.xz`) with a manifest giving every file's
sha256, and every load checks each file against it. `python -m deploy.tasks.corpus` rebuilds the archive
from this interpreter's standard library (the files, the rule that picks them, the manifest).

Files, not windows, are split: a file's name decides whether it is train, val or test (sha256 of the
name), so no validation text was ever seen in training, whatever the window length.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import sys
import sysconfig
import tarfile
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import CorpusError

HERE = Path(__file__).resolve().parent / "corpus"
ARCHIVE = HERE / "pystdlib.tar.xz"
MANIFEST = HERE / "pystdlib.json"
NAME = "pystdlib"
MAX_FILE_BYTES = 60_000  # leave out the few huge modules (one would dominate a split)
TARGET_BYTES = 2_600_000  # train + val + test
SEPARATOR = b"\n\n"
REBUILD = "python -m deploy.tasks.corpus (rebuilds the archive from this interpreter's standard library)"


def split_of(name: str) -> str:
    """train, val or test, from the file name alone (1 in 10 each to val and test)."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 10
    return "val" if bucket == 0 else "test" if bucket == 1 else "train"


@dataclass(frozen=True)
class Corpus:
    name: str
    files: dict[str, bytes]  # archive member name -> bytes, in manifest order
    splits: dict[str, str]  # member name -> split
    sha256: str  # of the manifest's file list (names and digests): the corpus's identity

    def text(self, split: str) -> bytes:
        """The split's files joined by a blank line, in manifest order."""
        return SEPARATOR.join(data for name, data in self.files.items() if self.splits[name] == split)

    def facts(self) -> dict[str, object]:
        sizes = {s: sum(len(d) for n, d in self.files.items() if self.splits[n] == s) for s in ("train", "val", "test")}
        return {
            "corpus": self.name,
            "corpus_sha256": self.sha256,
            "files": len(self.files),
            "bytes": sizes,
            "source": "Python 3.11.7 standard library source (PSF license), shipped in deploy/tasks/corpus/",
        }


def _digest_list(entries: list[dict[str, object]]) -> str:
    blob = "\n".join(f"{e['name']}\0{e['sha256']}" for e in entries)
    return hashlib.sha256(blob.encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def load(archive: Path = ARCHIVE, manifest: Path = MANIFEST) -> Corpus:
    """The shipped corpus, every file checked against its sha256 (CorpusError names the file and the fix)."""
    try:
        meta = json.loads(Path(manifest).read_text())
        entries = list(meta["files"])
    except (OSError, ValueError, KeyError) as exc:
        raise CorpusError(
            f"corpus manifest {manifest} is missing or unreadable ({exc}); restore it or run {REBUILD}"
        ) from None
    try:
        with tarfile.open(archive, "r:xz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore
    except (OSError, tarfile.TarError) as exc:
        raise CorpusError(
            f"corpus archive {archive} is missing or unreadable ({exc}); restore it or run {REBUILD}"
        ) from None
    files: dict[str, bytes] = {}
    for e in entries:
        name = str(e["name"])
        data = members.get(name)
        if data is None:
            raise CorpusError(f"corpus archive {archive} lacks {name}, which {manifest} lists; restore both files")
        if hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise CorpusError(
                f"corpus file {name} in {archive} does not match its sha256 in {manifest}: the corpus changed, "
                "so perplexities would not compare; restore the shipped files"
            )
        files[name] = data
    if _digest_list(entries) != meta.get("sha256"):
        raise CorpusError(f"{manifest}: its sha256 does not match its file list; restore the shipped file")
    return Corpus(
        str(meta.get("name", NAME)), files, {str(e["name"]): str(e["split"]) for e in entries}, meta["sha256"]
    )


def pick(stdlib: Path) -> list[Path]:
    """The slice: top-level .py modules in name order, each under MAX_FILE_BYTES, until TARGET_BYTES."""
    chosen, total = [], 0
    for path in sorted(Path(stdlib).glob("*.py")):
        size = path.stat().st_size
        if size > MAX_FILE_BYTES or path.name.startswith("_"):
            continue
        chosen.append(path)
        total += size
        if total >= TARGET_BYTES:
            break
    return chosen


def build(stdlib: Path | None = None, out_dir: Path = HERE) -> Path:
    """Write the archive and its manifest from an interpreter's standard library (run once, then shipped)."""
    stdlib = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = [*pick(stdlib), stdlib / "LICENSE.txt"]
    entries, buffer = [], io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for path in files:
            data = path.read_bytes()
            name = f"Lib/{path.name}"
            split = "license" if path.name == "LICENSE.txt" else split_of(path.name)
            digest = hashlib.sha256(data).hexdigest()
            entries.append({"name": name, "sha256": digest, "bytes": len(data), "split": split})
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ARCHIVE.name).write_bytes(buffer.getvalue())
    manifest = {
        "name": NAME,
        "python": sys.version.split()[0],
        "rule": f"top-level *.py of the stdlib in name order, no leading '_', each <= {MAX_FILE_BYTES} bytes, "
        f"until {TARGET_BYTES} bytes; split by sha256(file name) % 10 (0 val, 1 test)",
        "license": "Python Software Foundation License (Lib/LICENSE.txt in the archive)",
        "sha256": _digest_list(entries),
        "files": entries,
    }
    (out_dir / MANIFEST.name).write_text(json.dumps(manifest, indent=1) + "\n")
    return out_dir / ARCHIVE.name


if __name__ == "__main__":
    print(build())
