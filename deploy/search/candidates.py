"""Selection from a list of candidates someone already measured (e.g. a Gemma 3n-style slicing table).

The CSV has one row per candidate, with at least an id, a latency and an accuracy column; every column
is carried through to the result so the caller keeps whatever else the table says about the choice.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path

from deploy.errors import ConfigFileError, InvalidArgumentError, NoFeasibleSubnetError
from deploy.io import read_bytes

log = logging.getLogger(__name__)


def _number(path: Path, line: int, column: str, text: str | None) -> float:
    if text is None or not text.strip():
        raise ConfigFileError(f"{path}: row at line {line} has no value in column '{column}'; fill it in")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigFileError(f"{path}: row at line {line}, column '{column}': {text!r} is not a finite number; fix it")
    return value


def _read_rows(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for every data row; ConfigFileError for anything that is not a usable CSV."""
    try:
        text = read_bytes(Path(path), "CSV").decode("utf-8-sig")  # bounded: a link to a device is refused
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = reader.fieldnames
        rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not a text CSV file (not UTF-8); export it as CSV") from None
    except csv.Error as exc:
        raise ConfigFileError(f"{path}: malformed CSV: {exc}; export it again as CSV") from None
    if not header:
        raise ConfigFileError(f"{path}: empty file; expected a header row with {', '.join(required)}")
    missing = [c for c in required if c not in header]
    if missing:
        raise ConfigFileError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"columns present: {', '.join(repr(c) for c in header)}"
        )
    if not rows:
        raise ConfigFileError(f"{path}: has a header but no candidate rows; add at least one row")
    return rows


def select_from_csv(
    path: Path,
    budget_ms: float,
    latency_column: str = "latency_ms",
    accuracy_column: str = "accuracy",
    id_column: str = "id",
) -> dict[str, str]:
    """The most accurate row whose latency is within `budget_ms` (ties: the faster), all columns kept."""
    if not (math.isfinite(budget_ms) and budget_ms > 0):
        raise InvalidArgumentError(
            f"--budget-ms {budget_ms} is not a positive, finite number of milliseconds; give one such as 0.6"
        )
    path = Path(path)
    rows = _read_rows(path, (id_column, latency_column, accuracy_column))
    scored = []
    first_line: dict[str, tuple[int, tuple[float, float]]] = {}
    for i, (line, row) in enumerate(rows):
        latency = _number(path, line, latency_column, row.get(latency_column))
        accuracy = _number(path, line, accuracy_column, row.get(accuracy_column))
        if latency <= 0:
            raise ConfigFileError(
                f"{path}: row at line {line}, column '{latency_column}': {latency:g} ms is not a latency "
                "(it must be above 0); fix the measurement or drop the row"
            )
        ident = (row.get(id_column) or "").strip()
        if not ident:
            raise ConfigFileError(f"{path}: row at line {line} has no value in column '{id_column}'; fill it in")
        seen = first_line.setdefault(ident, (line, (latency, accuracy)))
        if seen[0] != line and seen[1] != (latency, accuracy):
            raise ConfigFileError(
                f"{path}: {id_column}={ident!r} appears at lines {seen[0]} and {line} with different "
                f"{latency_column}/{accuracy_column}; keep one row per candidate"
            )
        scored.append((latency, accuracy, i, row))
    feasible = [s for s in scored if s[0] <= budget_ms]
    if not feasible:
        fastest = min(scored, key=lambda s: (s[0], s[2]))
        raise NoFeasibleSubnetError(
            f"no candidate in {path} fits {budget_ms:.4g} ms: the fastest, "
            f"{id_column}={fastest[3].get(id_column)!r}, takes {fastest[0]:.4g} ms; "
            "raise the budget or measure faster candidates"
        )
    # Highest accuracy, then lowest latency, then first in the file.
    latency, accuracy, _, row = min(feasible, key=lambda s: (-s[1], s[0], s[2]))
    log.info(
        "chose %s=%s from %s: %.4g ms, accuracy %.4g (%d of %d rows within %.4g ms)",
        id_column,
        row.get(id_column),
        path,
        latency,
        accuracy,
        len(feasible),
        len(scored),
        budget_ms,
    )
    # DictReader puts surplus fields under None and short rows' missing fields as None.
    return {k: "" if v is None else v for k, v in row.items() if k is not None}
