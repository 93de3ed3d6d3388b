"""How good can an ESTIMATED table be? One factor from one device to another, checked on real data.

deploy/latency/estimate.py scales a measured table by one factor (anchor-derived or from clock
ratios). NAS-Bench-201's 15,625 cells, each timed on many devices (../shared/datasets/nb201, from
HELP and HW-NAS-Bench-360), say how well that can work:
- best factor: the median ratio over all cells (the most one factor can do);
- one-anchor factor: the ratio of ONE random cell (what an anchor model gives), 200 draws;
- clock-ratio factor (GPU pairs): the ratio of boost clocks, what the GPU targets use.
Errors are |predicted − measured| / measured per cell; the table reports their medians.

    .venv/bin/python benchmarks/estimate_transfer.py   # writes benchmarks/results/estimate_transfer.{json,md}
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from deploy.io import atomic_write_json, atomic_write_text
from deploy.latency.table import now_iso

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "nb201" / "nb201_joined.csv"
OUT = Path(__file__).resolve().parent / "results"
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


def main() -> int:
    if not DATA.exists():
        print(f"skipped: {DATA} not found (the datasets folder beside the repository)", file=sys.stderr)
        return 0
    rows = list(csv.DictReader(DATA.open()))

    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r[name] not in ("", "nan") else np.nan for r in rows])

    rng = np.random.default_rng(0)
    results = []
    for src, dst, mhz_src, mhz_dst in PAIRS:
        x, y = col(src), col(dst)
        keep = np.isfinite(x) & np.isfinite(y) & (x > 0.05) & (y > 0.05)  # disconnected cells time ~0 ms
        x, y = x[keep], y[keep]
        ratio = y / x
        best = float(np.median(np.abs(np.median(ratio) * x - y) / y))
        one = [float(np.median(np.abs(ratio[i] * x - y) / y)) for i in rng.integers(len(x), size=200)]
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
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_json(OUT / "estimate_transfer.json", {"date": now_iso(), "data": str(DATA.name), "pairs": results})
    lines = [
        f"# One factor from one device to another (NAS-Bench-201, {now_iso()})",
        "",
        "Median per-cell error of latencies predicted as source × factor.",
        "",
        "| source → destination | cells | best factor | one-anchor factor (median / p90, 200 draws) | clock ratio |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        c = r["clock_ratio"]
        clock = f"{c['median_err']:.0%} (factor {c['factor']:.2f}, true {c['true_median_ratio']:.2f})" if c else "—"
        lines.append(
            f"| {r['source']} → {r['destination']} | {r['cells']:,} | {r['best_factor_median_err']:.1%} | "
            f"{r['one_anchor_median_err_median']:.1%} / {r['one_anchor_median_err_p90']:.1%} | {clock} |"
        )
    atomic_write_text(OUT / "estimate_transfer.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
