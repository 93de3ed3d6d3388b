"""How good can an ESTIMATED table be? One factor from one device to another, checked on real data.

deploy/latency/estimate.py scales a measured table by one factor (anchor-derived or from clock
ratios). NAS-Bench-201's 15,625 cells, each timed on many devices (../shared/datasets/nb201, from
HELP and HW-NAS-Bench-360), say how well that can work:
- best factor: the median ratio over all cells (the most one factor can do);
- one-anchor factor: the ratio of ONE random cell (what an anchor model gives), 200 draws;
- clock-ratio factor (GPU pairs): the ratio of boost clocks, what the GPU targets use.
Errors are |predicted − measured| / measured per cell; the table reports their medians.

    python -m benchmarks.estimate_transfer           # ~10 s; skipped where the data sets are absent
    python -m benchmarks.estimate_transfer --quick   # smoke test: two device pairs, 20 anchor draws
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nb201" / "nb201_joined.csv"
# (source column, destination column, source boost MHz, destination boost MHz) — vendor boost clocks
PAIRS = [
    ("help_1080ti_1_ms", "help_titan_rtx_1_ms", 1582, 1770),
    ("help_1080ti_1_ms", "help_2080ti_1_ms", 1582, 1545),
    ("help_titanxp_1_ms", "help_2080ti_1_ms", 1582, 1545),
    ("help_gold_6226_ms", "help_pixel3_ms", None, None),
    ("help_gold_6226_ms", "help_pixel2_ms", None, None),
    ("help_gold_6226_ms", "help_samsung_a50_ms", None, None),
    ("help_silver_4114_ms", "help_pixel3_ms", None, None),
    ("help_raspi4_ms", "help_pixel3_ms", None, None),
    ("hw360_pi5_litert_cifar100_ms", "hw360_pixel_litert_cifar100_ms", None, None),
]


def run(args: argparse.Namespace) -> harness.Result:
    if not DATA.exists():
        raise harness.Skipped(f"{DATA} not found (the datasets folder beside the repository)")
    rows = list(csv.DictReader(DATA.open()))

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r[name] not in ("", "nan") else np.nan for r in rows])

    rng = np.random.default_rng(0)
    draws = 20 if args.quick else 200
    results = []
    for src, dst, mhz_src, mhz_dst in PAIRS[:2] if args.quick else PAIRS:
        x, y = col(src), col(dst)
        keep = np.isfinite(x) & np.isfinite(y) & (x > 0.05) & (y > 0.05)  # disconnected cells time ~0 ms
        x, y = x[keep], y[keep]
        ratio = y / x
        best = float(np.median(np.abs(np.median(ratio) * x - y) / y))
        one = [float(np.median(np.abs(ratio[i] * x - y) / y)) for i in rng.integers(len(x), size=draws)]
        clock = None
        if mhz_src:
            f = mhz_src / mhz_dst
            clock = {
                "factor": f,
                "true_median_ratio": float(np.median(ratio)),
                "median_err": float(np.median(np.abs(f * x - y) / y)),
            }
        results.append(
            {
                "source": src,
                "destination": dst,
                "cells": int(keep.sum()),
                "median_ratio": float(np.median(ratio)),
                "best_factor_median_err": best,
                "one_anchor_median_err_median": float(np.median(one)),
                "one_anchor_median_err_p90": float(np.percentile(one, 90)),
                "clock_ratio": clock,
            }
        )
    return {"data": str(DATA.name), "draws": draws, "pairs": results}


def markdown(result: harness.Result) -> str:
    date, _ = harness.describe(result)
    lines = [
        f"# One factor from one device to another (NAS-Bench-201, {date})",
        "",
        "Median per-cell error of latencies predicted as source × factor.",
        "",
        f"| source → destination | cells | best factor | one-anchor factor (median / p90, {result.get('draws', 200)} "
        "draws) | clock ratio |",
        "|---|---|---|---|---|",
    ]
    for r in result["pairs"]:
        c = r["clock_ratio"]
        clock = f"{c['median_err']:.0%} (factor {c['factor']:.2f}, true {c['true_median_ratio']:.2f})" if c else "—"
        lines.append(
            f"| {r['source']} → {r['destination']} | {r['cells']:,} | {r['best_factor_median_err']:.1%} | "
            f"{r['one_anchor_median_err_median']:.1%} / {r['one_anchor_median_err_p90']:.1%} | {clock} |"
        )
    return "\n".join(lines) + "\n"


def arguments(parser: Any) -> None:
    """No options of its own."""


COMPARISON = harness.Comparison("estimate_transfer", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
