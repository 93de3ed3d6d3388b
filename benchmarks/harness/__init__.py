"""The one benchmark harness: every comparison under benchmarks/ is built from these pieces.

- `core`: `Comparison`, `main` (arguments, environment record, results writer), `RESULTS`, `Skipped`;
- `subnets`: the subnets under test, their paths, interleaved measurement and summary statistics;
- `report`: the markdown renderer (tables, the report of a conversion-path comparison).
"""

from benchmarks.harness import report, subnets
from benchmarks.harness.core import RESULTS, Comparison, Result, Skipped, describe, environment, main
from benchmarks.harness.report import heading, paths_markdown, source_line, table
from benchmarks.harness.subnets import (
    QUICK_PROTOCOL,
    Context,
    PathSet,
    Subnet,
    add_path,
    add_subnet_arguments,
    compare_paths,
    geomean,
    load_supernet,
    max_abs_diff,
    measure,
    one_line,
    pick_subnets,
    quiet,
    summarize,
)

__all__ = [
    "QUICK_PROTOCOL",
    "RESULTS",
    "Comparison",
    "Context",
    "PathSet",
    "Result",
    "Skipped",
    "Subnet",
    "add_path",
    "add_subnet_arguments",
    "compare_paths",
    "describe",
    "environment",
    "geomean",
    "heading",
    "load_supernet",
    "main",
    "max_abs_diff",
    "measure",
    "one_line",
    "paths_markdown",
    "pick_subnets",
    "quiet",
    "report",
    "source_line",
    "subnets",
    "summarize",
    "table",
]
