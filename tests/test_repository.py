"""What is committed holds nothing of the machine it was made on, and what the code names is in the checkout."""

from __future__ import annotations

import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# A folder of a user's machine: home folders, the checkouts and temporary folders of a build host.
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:home|Users|root|work|tmp/pytest-of-\w+|private/var/folders)/[^\s\"'`),]+")
# Paths that are test input on purpose (an injection payload, a target's field), not where a file was made.
ALLOWED = {("tests/test_targets.py", "/tmp/p")}


def _tracked_text_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (an unpacked sdist or wheel): nothing tracked to check")
    files = []
    for name in filter(None, names.decode().split("\0")):
        path = REPO / name
        if path.is_file() and path.suffix not in {".png", ".safetensors", ".npz", ".onnx", ".tflite", ".pte"}:
            files.append(path)
    return files


def test_tracked_files_hold_no_absolute_path_of_a_machine():
    found = []
    for path in _tracked_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        rel = str(path.relative_to(REPO))
        for match in MACHINE_PATH.finditer(text):
            if (rel, match.group()) not in ALLOWED:
                found.append(f"{rel}: {match.group()}")
        if str(REPO) in text:
            found.append(f"{rel}: {REPO}")
    assert not found, "machine paths in tracked files (record them relative to the repository): " + "; ".join(
        found[:10]
    )


def test_results_writer_records_paths_relative_to_the_repository():
    from benchmarks.harness.core import machine_free

    record = {"python": str(REPO / ".cache" / "venv" / "bin" / "python"), "home": str(Path.home() / "x"), "n": 3}
    assert machine_free(record) == {"python": ".cache/venv/bin/python", "home": "~/x", "n": 3}


# What the code says about the repository must hold in the checkout: a path it names exists, and figures
# and dates live in docs/*.md (changelog, backends, families …), not in the code that outlives them.
CODE = REPO / "deploy"
# A path inside the repository named in code or prose: one of the project's folders, then a relative path.
REPO_PATH = re.compile(
    r"(?<![\w./~-])(?:\.\./[\w./-]+"
    r"|(?:deploy|docs|tests|benchmarks|targets|latency_tables|checkpoints)/[\w./<>{}*…#-]*"
    r"|(?:TOOLCHAIN|DESIGN|README)\.md(?:#[\w-]+)?)"
)
PLACEHOLDER = re.compile(r"[<>{}*…]|\.\.\.")  # templates (targets/<name>.yaml, {name}.json): no one file to check
# Dates: ISO days and month-year ("Dec 2026", "December 2026").
DATE = re.compile(
    r"\b20\d\d-[01]\d-[0-3]\d\b|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.? 20\d\d\b"
)
# Files under deploy/ that are data, not code or prose about the project, and why they are not checked.
NOT_CODE = {
    "deploy/tasks/corpus/": "the shipped text corpus (Python stdlib sources) and its manifest: data someone else wrote",
}


def _code_files() -> list[Path]:
    """Every text file under deploy/ but the data in NOT_CODE (and bytecode caches)."""
    files = []
    for path in sorted(CODE.rglob("*")):
        rel = path.relative_to(REPO).as_posix()
        if not path.is_file() or "__pycache__" in path.parts or rel.startswith(tuple(NOT_CODE)):
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (mkdocs) gives a heading."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def _anchors(doc: Path) -> set[str]:
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", doc.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {_slug(h) for h in headings}


def _missing(ref: str) -> str | None:
    """Why `ref` (a path, perhaps with a #anchor) names nothing in the checkout, or None when it does."""
    path, _, anchor = ref.rstrip(".,;:)").partition("#")
    path = path.rstrip(".,;:)")
    if path.startswith("../"):
        return "outside the repository"
    target = REPO / path
    if not target.exists():
        return "no such file or folder"
    if anchor and target.suffix == ".md" and anchor not in _anchors(target):
        return f"{path} has no heading #{anchor}"
    return None


def test_paths_named_in_the_code_exist_in_the_checkout():
    # A pointer to a file that is not there (TOOLCHAIN.md, deploy/train_stitch.py, ../shared …) sends a reader
    # nowhere: name the module or the docs section that holds it.
    found = []
    for path in _code_files():
        rel = path.relative_to(REPO).as_posix()
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in REPO_PATH.finditer(line):
                ref = match.group()
                if PLACEHOLDER.search(ref.split("#")[0]):
                    continue
                why = _missing(ref)
                if why:
                    found.append(f"{rel}:{lineno}: {ref} ({why})")
    assert not found, f"{len(found)} references to nothing in the checkout:\n" + "\n".join(found)


def test_code_holds_no_dates():
    # A dated note in code goes stale silently; the date and what was measured then belong in docs/changelog.md
    # (or the docs page of the subject), and the code points there.
    found = []
    for path in _code_files():
        rel = path.relative_to(REPO).as_posix()
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [f"{rel}:{lineno}: {m.group()}" for m in DATE.finditer(line)]
    assert not found, f"{len(found)} dates in deploy/ (move them to docs/changelog.md):\n" + "\n".join(found)
