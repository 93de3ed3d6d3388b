"""Selection from a CSV of already-measured candidates, and its error messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.errors import ConfigFileError, InvalidArgumentError, NoFeasibleSubnetError
from deploy.search.candidates import select_from_csv

TABLE = """id,layers,latency_ms,accuracy,notes
e2b,30,2.5,0.71,small
e3b,35,3.1,0.74,mid
e4b,35,4.0,0.78,full
e3b-fast,32,2.9,0.74,same accuracy as e3b but faster
"""


def write(tmp_path: Path, text: str, name: str = "candidates.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_select_from_csv_returns_most_accurate_row_within_budget_with_all_columns(tmp_path: Path) -> None:
    row = select_from_csv(write(tmp_path, TABLE), budget_ms=3.5)
    assert row == {
        "id": "e3b-fast",
        "layers": "32",
        "latency_ms": "2.9",
        "accuracy": "0.74",
        "notes": "same accuracy as e3b but faster",
    }


def test_select_from_csv_returns_largest_when_budget_is_loose(tmp_path: Path) -> None:
    assert select_from_csv(write(tmp_path, TABLE), budget_ms=100)["id"] == "e4b"


def test_select_from_csv_uses_named_columns(tmp_path: Path) -> None:
    text = "name,p50,top1\na,1.0,0.5\nb,2.0,0.6\nc,3.0,0.7\n"
    row = select_from_csv(write(tmp_path, text), 2.0, latency_column="p50", accuracy_column="top1", id_column="name")
    assert row["name"] == "b"


def test_select_from_csv_raises_no_feasible_naming_fastest_row(tmp_path: Path) -> None:
    with pytest.raises(NoFeasibleSubnetError) as err:
        select_from_csv(write(tmp_path, TABLE), budget_ms=1.0)
    message = str(err.value)
    assert "'e2b'" in message and "2.5 ms" in message and "raise the budget" in message


def test_select_from_csv_missing_column_lists_present_columns(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError) as err:
        select_from_csv(write(tmp_path, TABLE), 3.0, latency_column="p90_ms")
    message = str(err.value)
    assert "'p90_ms'" in message
    assert "columns present: 'id', 'layers', 'latency_ms', 'accuracy', 'notes'" in message


def test_select_from_csv_non_numeric_value_names_line_and_column(tmp_path: Path) -> None:
    text = "id,latency_ms,accuracy\na,1.0,0.5\nb,fast,0.6\n"
    with pytest.raises(ConfigFileError, match=r"line 3, column 'latency_ms': 'fast' is not a finite number"):
        select_from_csv(write(tmp_path, text), 3.0)


def test_select_from_csv_nan_value_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="line 2, column 'accuracy'"):
        select_from_csv(write(tmp_path, "id,latency_ms,accuracy\na,1.0,nan\n"), 3.0)


def test_select_from_csv_short_row_names_missing_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="line 2 has no value in column 'accuracy'"):
        select_from_csv(write(tmp_path, "id,latency_ms,accuracy\na,1.0\n"), 3.0)


def test_select_from_csv_empty_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="empty file"):
        select_from_csv(write(tmp_path, ""), 3.0)


def test_select_from_csv_header_only_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="no candidate rows"):
        select_from_csv(write(tmp_path, "id,latency_ms,accuracy\n"), 3.0)


def test_select_from_csv_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="file not found"):
        select_from_csv(tmp_path / "nope.csv", 3.0)


def test_select_from_csv_binary_file_raises_not_csv(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x00")
    with pytest.raises(ConfigFileError, match="not a text CSV"):
        select_from_csv(path, 3.0)


@pytest.mark.parametrize("budget", [0.0, -1.0, float("nan"), float("inf")])
def test_select_from_csv_budget_that_is_not_positive_and_finite_raises(tmp_path: Path, budget: float) -> None:
    with pytest.raises(InvalidArgumentError, match="--budget-ms"):
        select_from_csv(write(tmp_path, TABLE), budget)
