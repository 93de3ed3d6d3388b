"""Few-shot latency transfer (deploy/latency/transfer.py) checked on data nobody here produced.

For a source device fully known and N subnets measured on the destination, how well are the other
subnets' destination latencies predicted? Data (../shared/datasets, see its README):

- NAS-Bench-201 (nb201/nb201_joined.csv): the same 15,625 cells timed on HELP's devices and
  HW-NAS-Bench-360's; cells timing ~0 ms (disconnected graphs) are left out, as estimate_transfer.py does.
  Features per cell from the source: its measured latency ("total": what factor, affine and power use),
  and a per-op lookup table fitted on every source cell (non-negative, per edge × op × whether the op is
  live, i.e. on a path from input to output) summed per kind: fixed part, live conv3x3 / conv1x1 / pool /
  skip, and all dead ops.
  Runtimes that prune dead ops (TFLite on pixel3, raspi4, Pi 5, Pixel 6a) and ones that run every op
  (PyTorch on the desktops, pixel2, samsung_a50) differ mostly there.
  "HELP-like" setups give every one of HELP's 9 meta-training devices as a source (their totals).
- HAT (hat/*_all.csv): 2,000 SubTransformers per task and device, sampled separately per device (almost
  no config is shared), so the source side is a predictor fitted on the source's 2,000 rows (NNLS on
  physically motivated terms per part) evaluated at the destination's configs; its encoder, decoder-fixed
  and decoder-per-layer parts are the feature columns. The latency is encoder + decoder mean, what HAT's
  own latency_predictor.py trains on and its search constrains.

For each N, `DRAWS` random draws (and `COVERAGE_DRAWS` coverage-based ones: smallest, largest, one per
stratum of source-predicted latency) are fitted with fit_transfer (model chosen by held-out error), with
only factor/affine/power ("total only"), and with one factor (median ratio); every other subnet is
predicted and scored. Figures are means over draws.

    python -m benchmarks.transfer_external           # ~4 min on 2 cores; skipped where the data sets are absent
    python -m benchmarks.transfer_external --quick   # smoke test: one NAS-Bench-201 pair, N = 5 and 10, 2 draws
"""

from __future__ import annotations

import argparse
import csv
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from deploy.latency.solvers import nnls
from deploy.latency.transfer import Column, choose_samples, fit_transfer

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
NB201 = DATASETS / "nb201" / "nb201_joined.csv"
HAT = DATASETS / "hat"
NS = (5, 10, 20, 50, 100)
DRAWS = 20
COVERAGE_DRAWS = 10
TOTAL_ONLY = ("factor", "affine", "power")
HELP_SPEARMAN_N10 = {  # HELP (NeurIPS 2021) Table 3, 10 target samples, meta-trained on HELP_SOURCES
    "help_titan_rtx_256_ms": 0.987, "help_gold_6226_ms": 0.989, "help_pixel2_ms": 0.802,
    "help_raspi4_ms": 0.890, "help_eyeriss_ms": 0.940, "help_fpga_ms": 0.985,
}  # fmt: skip
HELP_MEAN = 0.932
HELP_SOURCES = (
    "help_1080ti_1_ms", "help_1080ti_32_ms", "help_1080ti_256_ms", "help_silver_4114_ms", "help_silver_4210r_ms",
    "help_samsung_a50_ms", "help_pixel3_ms", "help_essential_ph_1_ms", "help_samsung_s7_ms",
)  # fmt: skip
# (source, destination, family); the first 9 are estimate_transfer.py's pairs
NB201_PAIRS = [
    ("help_1080ti_1_ms", "help_titan_rtx_1_ms", "GPU → GPU"),
    ("help_1080ti_1_ms", "help_2080ti_1_ms", "GPU → GPU"),
    ("help_titanxp_1_ms", "help_2080ti_1_ms", "GPU → GPU"),
    ("help_gold_6226_ms", "help_pixel3_ms", "desktop CPU → phone"),
    ("help_gold_6226_ms", "help_pixel2_ms", "desktop CPU → phone"),
    ("help_gold_6226_ms", "help_samsung_a50_ms", "desktop CPU → phone"),
    ("help_silver_4114_ms", "help_pixel3_ms", "desktop CPU → phone"),
    ("help_raspi4_ms", "help_pixel3_ms", "board ↔ phone"),
    ("hw360_pi5_litert_cifar100_ms", "hw360_pixel_litert_cifar100_ms", "board ↔ phone"),
    ("help_1080ti_256_ms", "help_titan_rtx_256_ms", "GPU → GPU"),
    ("help_silver_4114_ms", "help_gold_6226_ms", "CPU → CPU"),
    ("help_silver_4114_ms", "help_pixel2_ms", "desktop CPU → phone"),
    ("help_samsung_a50_ms", "help_pixel2_ms", "board ↔ phone"),
    ("help_silver_4114_ms", "help_raspi4_ms", "desktop CPU → Raspberry Pi"),
    ("help_gold_6226_ms", "help_raspi4_ms", "desktop CPU → Raspberry Pi"),
    ("help_1080ti_1_ms", "help_gold_6226_ms", "GPU → CPU"),
    ("help_1080ti_1_ms", "help_eyeriss_ms", "GPU → accelerator (simulated)"),
    ("help_1080ti_1_ms", "help_fpga_ms", "GPU → accelerator (simulated)"),
]
# HELP-like: the primary source (used by factor/affine/power) first, then the rest of HELP's 9
HELP_PRIMARY = {
    "help_titan_rtx_256_ms": "help_1080ti_256_ms", "help_gold_6226_ms": "help_silver_4114_ms",
    "help_pixel2_ms": "help_samsung_a50_ms", "help_raspi4_ms": "help_silver_4114_ms",
    "help_eyeriss_ms": "help_1080ti_1_ms", "help_fpga_ms": "help_1080ti_1_ms",
}  # fmt: skip
HAT_DEVICES = ("cpu_raspberrypi", "cpu_xeon", "gpu_titanxp")
HAT_TASKS = ("wmt14ende", "wmt14enfr")
OPS = ("nor_conv_3x3", "nor_conv_1x1", "avg_pool_3x3", "skip_connect")
EDGES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))  # arch_str order: node 1 from 0; 2 from 0, 1; 3 from 0-2


@dataclass(frozen=True)
class Setup:
    name: str
    family: str
    x: np.ndarray  # (subnets, columns) source features
    y: np.ndarray  # destination latency (ms)
    columns: tuple[Column, ...]
    note: str = ""


# --- metrics and the evaluation core ---------------------------------------------------------------


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (ties share one: phone latencies are whole ms)."""
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (starts + (counts - 1) / 2)[inv]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation; 0 for a constant prediction (it ranks nothing: a fit with slope 0)."""
    ra, rb = _ranks(a), _ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else 0.0


def scores(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    err = np.abs(pred - y) / y
    return {
        "spearman": spearman(pred, y),
        "within_10pct": float(np.mean(err <= 0.10)),
        "within_5pct": float(np.mean(err <= 0.05)),
        "median_abs_pct": float(np.median(err) * 100),
    }


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def evaluate(
    setup: Setup, ns: Sequence[int] = NS, draws: int = DRAWS, coverage_draws: int = COVERAGE_DRAWS, seed: int = 0
) -> dict[str, Any]:
    """Per N and sampler: mean held-out scores of the chosen model, the total-only choice and one factor."""
    x, y, cols = setup.x, setup.y, setup.columns
    source_total = x[:, [c.source == cols[0].source for c in cols]].sum(axis=1)
    ids = [(str(i), float(v)) for i, v in enumerate(source_total)]
    out: dict[str, Any] = {}
    for n in ns:
        if n >= len(y) - 2:
            continue
        per: dict[str, Any] = {}
        for sampler, k in (("random", draws), ("coverage", coverage_draws)):
            rng = np.random.default_rng([seed, n, len(y)])
            rows: dict[str, list[dict[str, float]]] = {"auto": [], "total_only": [], "factor": []}
            wins: Counter[str] = Counter()
            for d in range(k):
                if sampler == "random":
                    idx = rng.choice(len(y), size=n, replace=False)
                else:
                    idx = np.array([int(i) for i in choose_samples(ids, n, seed=seed * 1000 + d)])
                rest = np.setdiff1d(np.arange(len(y)), idx)
                for key, models in (("auto", None), ("total_only", TOTAL_ONLY), ("factor", ("factor",))):
                    fit = fit_transfer(x[idx], y[idx], cols, models=models)
                    rows[key].append(scores(fit.predict(x[rest]), y[rest]))
                    if key == "auto":
                        wins[fit.model] += 1
            per[sampler] = {key: _mean(r) for key, r in rows.items()}
            per[sampler]["auto_within_10pct_p10"] = float(np.percentile([r["within_10pct"] for r in rows["auto"]], 10))
            per[sampler]["chosen"] = dict(wins.most_common())
            per[sampler]["draws"] = k
        out[str(n)] = per
    return out


def ceilings(setup: Setup) -> dict[str, dict[str, float]]:
    """What the same models reach with every subnet measured (in-sample; ≤ 10 parameters on thousands)."""
    x, y, cols = setup.x, setup.y, setup.columns
    factor = fit_transfer(x, y, cols, models=("factor",))
    best = fit_transfer(x, y, cols)
    return {"factor": scores(factor.predict(x), y), best.model: scores(best.predict(x), y)}


# --- NAS-Bench-201 ----------------------------------------------------------------------------------


def _edges(arch: str) -> list[str]:
    return [t.split("~")[0] for part in arch.strip("|").split("|+|") for t in part.strip("|").split("|")]


def _live(ops: np.ndarray) -> np.ndarray:
    """(cells, 6) bool: the edge's op runs on a path from the input node to the output node."""
    on = ops != "none"
    reach = np.zeros((len(ops), 4), dtype=bool)
    reach[:, 0] = True
    for j, (a, b) in enumerate(EDGES):
        reach[:, b] |= reach[:, a] & on[:, j]
    to_out = np.zeros((len(ops), 4), dtype=bool)
    to_out[:, 3] = True
    for j, (a, b) in reversed(list(enumerate(EDGES))):
        to_out[:, a] |= to_out[:, b] & on[:, j]
    return on & reach[:, [a for a, _ in EDGES]] & to_out[:, [b for _, b in EDGES]]


def nb201_kinds(ops: np.ndarray, src_ms: np.ndarray) -> tuple[np.ndarray, list[str], float]:
    """The source's per-op lookup table summed per kind, and its in-sample median error (%)."""
    live = _live(ops)
    dummies = [np.ones(len(ops))]
    groups = ["fixed"]
    for op in OPS:
        for is_live in (True, False):
            for e in range(6):
                dummies.append(((ops[:, e] == op) & (live[:, e] == is_live)).astype(float))
                groups.append(op if is_live else "dead")  # per op as well: better on eyeriss only, slower to fit
    d = np.stack(dummies, axis=1)
    lut = nnls(d / src_ms[:, None], np.ones(len(src_ms)))  # relative error, non-negative entries
    kinds = list(dict.fromkeys(groups))
    x = np.stack([d[:, [g == k for g in groups]] @ lut[[g == k for g in groups]] for k in kinds], axis=1)
    keep = x.max(axis=0) > 1e-9  # a kind this source never pays for (skip on PyTorch) says nothing
    err = float(np.median(np.abs(x.sum(axis=1) - src_ms) / src_ms) * 100)
    return x[:, keep], [k for k, kp in zip(kinds, keep, strict=True) if kp], err


def nb201_setups(rows: list[dict[str, str]], pairs: int | None = None, helps: bool = True) -> list[Setup]:
    def col(name: str) -> np.ndarray:
        return np.array([float(r[name]) if r[name] not in ("", "nan") else np.nan for r in rows])

    ops = np.array([_edges(r["arch_str"]) for r in rows])
    setups = []
    for src, dst, family in NB201_PAIRS[:pairs]:
        s, y = col(src), col(dst)
        keep = np.isfinite(s) & np.isfinite(y) & (s > 0.05) & (y > 0.05)  # disconnected cells time ~0 ms
        kinds, names, lut_err = nb201_kinds(ops[keep], s[keep])
        short = src.removesuffix("_ms")
        # the measured total first (factor, affine and power use it), then the table's kinds as a second view
        x = np.concatenate([s[keep, None], kinds], axis=1)
        cols = (Column(short), *(Column(f"{short} LUT", k) for k in names))
        note = f"source LUT in-sample median error {lut_err:.1f}%"
        setups.append(Setup(f"{short} → {dst.removesuffix('_ms')}", family, x, y[keep], cols, note))
    for dst, primary in HELP_PRIMARY.items() if helps else ():
        sources = [primary, *(s for s in HELP_SOURCES if s != primary)]
        s = np.stack([col(c) for c in sources], axis=1)
        y = col(dst)
        keep = np.all(np.isfinite(s) & (s > 0.05), axis=1) & np.isfinite(y) & (y > 0.05)
        cols = tuple(Column(c.removesuffix("_ms")) for c in sources)
        name = f"HELP's 9 sources (primary {primary.removesuffix('_ms')}) → {dst.removesuffix('_ms')}"
        note = f"HELP Table 3, N=10: Spearman {HELP_SPEARMAN_N10[dst]}"
        setups.append(Setup(name, "HELP-like (9 sources)", s[keep], y[keep], cols, note))
    return setups


# --- HAT --------------------------------------------------------------------------------------------


def _hat_terms(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-part cost terms from the 10 features: per-layer work ∝ layers × widths (all ≥ 0)."""
    de, le, fe, he, dd, ld, fd, hd, eh, arb = a[:, :10].T
    one = np.ones(len(a))
    enc = np.stack([one, le * de, le * fe * de / 512, le * he, le * de * de / 512], axis=1)
    dec = np.stack([one, dd, ld, ld * dd, ld * fd * dd / 512, ld * hd, ld * eh, ld * arb, ld * arb * dd,
                    ld * dd * dd / 512], axis=1)  # fmt: skip
    return enc, dec


DEC_FIXED = 2  # the decoder's first two terms do not grow with its layers (embedding, output projection)


def hat_source(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit the source's per-part predictor on its rows; return its coefficients and 5-fold median error (%)."""
    enc, dec = _hat_terms(a)
    tot = a[:, 10] + a[:, 11]
    fold = np.arange(len(a)) % 5
    cv = np.empty(len(a))
    for f in range(5):
        t = fold == f
        be = nnls(enc[~t] / a[~t, 10:11], np.ones(int((~t).sum())))
        bd = nnls(dec[~t] / a[~t, 11:12], np.ones(int((~t).sum())))
        cv[t] = enc[t] @ be + dec[t] @ bd
    be = nnls(enc / a[:, 10:11], np.ones(len(a)))
    bd = nnls(dec / a[:, 11:12], np.ones(len(a)))
    return be, bd, float(np.median(np.abs(cv - tot) / tot) * 100)


def _configs(a: np.ndarray) -> set[tuple[float, ...]]:
    return {tuple(r) for r in np.round(a[:, :10], 4)}


def hat_setups(files: dict[str, Path]) -> list[Setup]:
    data = {k: np.array(list(csv.reader(p.open()))[1:], dtype=float) for k, p in files.items()}
    fitted = {k: hat_source(a) for k, a in data.items()}
    setups = []
    for task in HAT_TASKS:
        for src, dst in permutations(HAT_DEVICES, 2):
            be, bd, own_err = fitted[f"{task}_{src}"]
            a = data[f"{task}_{dst}"]
            shared = _configs(data[f"{task}_{src}"]) & _configs(a)
            enc, dec = _hat_terms(a)
            x = np.stack([enc @ be, dec[:, :DEC_FIXED] @ bd[:DEC_FIXED], dec[:, DEC_FIXED:] @ bd[DEC_FIXED:]], axis=1)
            cols = tuple(Column(src, k) for k in ("encoder", "decoder_fixed", "decoder_layers"))
            note = (f"source predictor 5-fold median error on its own rows {own_err:.1f}%; "
                    f"destination's own {fitted[f'{task}_{dst}'][2]:.1f}%; configs shared {len(shared)}")  # fmt: skip
            fam = f"{'CPU' if 'cpu' in src else 'GPU'} → {'CPU' if 'cpu' in dst else 'GPU'}"
            setups.append(Setup(f"{task}: {src} → {dst}", f"HAT {fam}", x, a[:, 10] + a[:, 11], cols, note))
    return setups


# --- report -----------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cell(s: dict[str, float]) -> str:
    return f"{s['spearman']:.3f} · {s['within_10pct']:.0%} · {s['within_5pct']:.0%} · {s['median_abs_pct']:.1f}%"


def markdown(results: dict[str, Any]) -> str:
    date, machine = harness.describe(results)
    runtime = results.get("runtime_s", results.get("environment", {}).get("wall_s", 0))
    ns_all, draws = results.get("ns", NS), results.get("draws", DRAWS)
    lines = [
        f"# Few-shot latency transfer on external data ({date})",
        "",
        f"{results['protocol']} Machine: {machine}. Runtime {runtime:.0f} s.",
        "",
        "Cells: Spearman · share within ±10% · within ±5% · median abs error, on every subnet not measured,",
        f"mean over {draws} random draws of N destination measurements. Rows: **chosen** = fit_transfer's",
        "choice by held-out error; **factor** = one median-ratio factor from the same N (Spearman equals the",
        "source's own). Last column: the models fitted on every subnet, in-sample (≤ 10 parameters on",
        "thousands): for factor it is estimate_transfer.md's best factor, for chosen what the features allow.",
    ]
    for dataset, block in results["datasets"].items():
        ns = [n for n in map(str, ns_all) if any(n in s["by_n"] for s in block["setups"])]
        lines += ["", f"## {dataset}", "", block["about"], ""]
        lines.append("| setup | model | " + " | ".join(f"N={n}" for n in ns) + " | fitted on all cells (in-sample) |")
        lines.append("|---|---|" + "---|" * (len(ns) + 1))
        for s in block["setups"]:
            for key, label in (("auto", "chosen"), ("factor", "factor")):
                cells = [_cell(s["by_n"][n]["random"][key]) if n in s["by_n"] else "—" for n in ns]
                best = next(m for m in s["all_cells"] if m != "factor") if len(s["all_cells"]) > 1 else "factor"
                last = _cell(s["all_cells"]["factor"]) if key == "factor" else f"{best}: {_cell(s['all_cells'][best])}"
                name = f"{s['name']} ({s['family']})" if key == "auto" else ""
                lines.append(f"| {name} | {label} | " + " | ".join(cells) + f" | {last} |")
        lines += ["", block["summary"]]
    return "\n".join(lines) + "\n"


def _fam(setups: list[dict[str, Any]], n: str, sampler: str, key: str) -> str:
    """Mean Spearman / within ±10% over a family's setups."""
    got = [s["by_n"][n][sampler][key] for s in setups if n in s["by_n"]]
    return f"{np.mean([g['spearman'] for g in got]):.3f} / {np.mean([g['within_10pct'] for g in got]):.0%}"


def summarise(setups: list[dict[str, Any]], helps: bool) -> str:
    parts = []
    for n in ("10", "50"):
        wins: Counter[str] = Counter()
        for s in setups:
            wins.update(s["by_n"].get(n, {}).get("random", {}).get("chosen", {}))
        parts.append(f"N={n}: " + ", ".join(f"{m} {c}" for m, c in wins.most_common()))
    fams: dict[str, list[dict[str, Any]]] = {}
    for s in setups:
        fams.setdefault(s["family"], []).append(s)
    lines = [
        "Chosen model, counted over all random draws: " + "; ".join(parts) + ".",
        "",
        "| family (setups) | N=10 chosen ρ / ±10% | N=10 factor ±10% | N=50 chosen ρ / ±10% | coverage N=10 ±10% |",
        "|---|---|---|---|---|",
    ]
    for fam, ss in fams.items():
        lines.append(
            f"| {fam} ({len(ss)}) | {_fam(ss, '10', 'random', 'auto')} | "
            f"{_fam(ss, '10', 'random', 'factor').split(' / ')[1]} | {_fam(ss, '50', 'random', 'auto')} | "
            f"{_fam(ss, '10', 'coverage', 'auto').split(' / ')[1]} |"
        )
    if helps:
        mine = [s["by_n"]["10"]["random"]["auto"]["spearman"] for s in setups if s["family"].startswith("HELP")]
        lines += ["", f"HELP-like setups, N=10: mean Spearman {np.mean(mine):.3f} (HELP's Table 3: {HELP_MEAN}, "
                  "same 6 destinations, same 9 meta-training devices, N=10)."]  # fmt: skip
    return "\n".join(lines)


def run_setups(
    setups: list[Setup], ns: Sequence[int] = NS, draws: int = DRAWS, coverage: int = COVERAGE_DRAWS
) -> list[dict[str, Any]]:
    out = []
    for i, s in enumerate(setups):
        out.append(
            {
                "name": s.name,
                "family": s.family,
                "columns": [str(c) for c in s.columns],
                "subnets": len(s.y),
                "note": s.note,
                "all_cells": ceilings(s),
                "by_n": evaluate(s, ns, draws, coverage, seed=i),
            }
        )
    return out


def run(args: argparse.Namespace) -> harness.Result:
    hat_files = {f"{t}_{d}": HAT / f"{t}_{d}_all.csv" for t in HAT_TASKS for d in HAT_DEVICES}
    if not NB201.exists() and not all(p.exists() for p in hat_files.values()):
        raise harness.Skipped(f"{DATASETS} not found (the datasets folder beside the repository)")
    ns, draws, coverage = ((5, 10), 2, 1) if args.quick else (NS, DRAWS, COVERAGE_DRAWS)
    datasets: dict[str, Any] = {}
    files: dict[str, str] = {}
    if NB201.exists():
        rows = list(csv.DictReader(NB201.open()))
        setups = run_setups(nb201_setups(rows, 1 if args.quick else None, not args.quick), ns, draws, coverage)
        datasets["NAS-Bench-201 (HELP, HW-NAS-Bench-360 devices)"] = {
            "about": "Features: the measured source latency and per-kind sums of a per-op table fitted on all source "
            "cells (HELP-like rows: the 9 sources' totals). Scored on every other connected cell. pixel2, "
            "samsung_a50, samsung_s7 and essential_ph_1 report whole ms (pixel2: 42 distinct values, median 15 ms; "
            "pixel3 does not), eyeriss 38 distinct values: rounding alone moves a 10 ms cell by up to 5%.",
            "setups": setups,
            "summary": summarise(setups, helps=not args.quick),
        }
        files[str(NB201.relative_to(DATASETS))] = sha256(NB201)
    if all(p.exists() for p in hat_files.values()) and not args.quick:
        setups = run_setups(hat_setups(hat_files), ns, draws, coverage)
        datasets["HAT SubTransformers (Raspberry Pi 4, Xeon E5-2640, TITAN Xp)"] = {
            "about": "Latency = encoder + decoder mean (what HAT's predictor trains on). Features: the "
            "source-fitted predictor's encoder, decoder-fixed and decoder-per-layer parts at the destination's "
            "2,000 configs. The devices' samples are separate (0-3 configs shared per pair), so a source-side "
            "predictor is unavoidable; its own 5-fold error (0.5-4.1% median, JSON notes) is part of every figure.",
            "setups": setups,
            "summary": summarise(setups, helps=False),
        }
        files.update({str(p.relative_to(DATASETS)): sha256(p) for p in hat_files.values()})
    return {
        "ns": list(ns),
        "draws": draws,
        "data": files,
        "protocol": (
            f"N in {list(ns)} destination measurements: {draws} uniform random draws and {coverage} coverage "
            "draws (deploy.latency.transfer.choose_samples on the source total), seeded per setup and N; model "
            "chosen by 10-fold (leave-one-out for N ≤ 10) held-out relative error, the simplest within one standard "
            "error of the best; scored on every subnet not drawn."
        ),
        "help_reference": {"spearman_n10": HELP_SPEARMAN_N10, "mean": HELP_MEAN, "source": "HELP Table 3"},
        "datasets": datasets,
    }


def arguments(parser: argparse.ArgumentParser) -> None:
    """No options of its own."""


COMPARISON = harness.Comparison("transfer_external", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
