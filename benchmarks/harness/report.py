"""The markdown renderer: tables, and the whole report of a conversion-path comparison.

Every renderer takes a result as read back from its JSON, so that the documentation renders the same
pages from the committed files. Results written before the harness lack a few fields (`short`,
`reference`, `median_rse`); they render with what they have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from benchmarks.harness.core import Result, describe

FOOTER = (
    "Absolute figures hold only for this machine and moment (shared and noisy); the ratios, measured side by "
    "side in one run, are what carries over."
)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> list[str]:
    """A markdown table; `align` holds one character per column (l or r), default all left."""
    marks = [("---:" if a == "r" else "---") for a in (align or "l" * len(headers))]
    return [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(marks) + "|",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def ratio(value: Any) -> str:
    return f"{value:.2f}×" if isinstance(value, float) else "skipped"


def sci(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1e}"
    return "skipped" if value is None or str(value).startswith("skipped") else str(value)


def pct(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}%}"


def heading(result: Result, title: str) -> list[str]:
    """The title, then when and where the result was produced."""
    date, machine = describe(result)
    return [f"# {title}", "", f"{date}, {machine}."]


def source_line(result: Result, path: str) -> str:
    date, machine = describe(result)
    return f"Measured {date} on {machine}; data: `{path}`."


def _ms_cell(row: Mapping[str, Any], p: str) -> str:
    v = row["median_ms"].get(p)
    if not isinstance(v, float):
        return "skipped"
    cv = row.get("round_cv", {}).get(p)
    return f"{v:.3f} ({cv:.1%})" if cv is not None else f"{v:.3f}"


def _choices(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in config.items())


def paths_markdown(
    result: Result,
    title: str,
    short: Mapping[str, str],
    reference: str,
    extra: Callable[[Result], list[str]] | None = None,
) -> str:
    """The report of a conversion-path comparison (ort_paths, tflite_paths, executorch_paths, gpu_paths).

    `short` and `reference` are the comparison's own, used where an older result does not carry them."""
    s, proto = result["summary"], result["protocol"]
    short = {**short, **result.get("short", {})}
    ref = result.get("reference", reference)
    paths = [p for p in result["paths"] if any(p in r["median_ms"] for r in s["rows"])]
    others = [p for p in paths if p != ref]
    ratio_key = f"ratio_vs_{ref}"
    threads = result.get("threads")
    env = result.get("environment", {})
    lines = [
        f"# {title} ({result['model']})",
        "",
        f"Date {describe(result)[0]} · host {result.get('host', describe(result)[1])} · target {result['target']}"
        + (f" ({threads} thread{'s' if threads != 1 else ''})" if threads else "")
        + (f" · weights: {result['weights']}" if "weights" in result else ""),
    ]
    load = result.get("loadavg_1m") or env.get("loadavg_1m")
    if load:
        wall = result.get("wall_s", env.get("wall_s"))
        lines += ["", f"Load average (1 min) {load['start']} at start, {load.get('end')} at end; run took {wall} s"
                  + (f" (conversions {result['prepare_s']} s, measurement {result['measure_s']} s)."
                     if "prepare_s" in result else ".")]  # fmt: skip
    versions = result.get("versions") or env.get("versions") or {}
    lines += [
        "",
        "Paths: " + "; ".join(f"**{short.get(p, p)}** = {result['paths'][p]}" for p in paths) + ".",
        "",
        f"Protocol: {proto['rounds']} interleaved rounds (every subnet × path item per round, shuffled), each "
        f"item ≥ {proto['min_runs']} runs and ≥ {proto['min_time_s']} s per round after {proto['warmup_runs']} "
        f"warm-up runs; re-measured (all items) while a median is known to worse than ±{proto.get('cv_max', 0):.0%}, "
        f"up to {proto.get('max_retries', 0)} times. Median over all timed runs."
        + (" Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + "." if versions else ""),
        "",
        "## Median latency (ms) and round CV",
        "",
        *table(
            ["subnet", "params", *(short.get(p, p) for p in paths)],
            (
                [
                    f"{r['subnet']} `{r['id']}`",
                    f"{r['params'] / 1e6:.2f} M" if r["params"] == r["params"] else "–",
                    *(_ms_cell(r, p) for p in paths),
                ]
                for r in s["rows"]
            ),
            "lr" + "r" * len(paths),
        ),
        "",
        f"## Ratios vs {short.get(ref, ref)} (path median / {short.get(ref, ref)} median; > 1 means "
        f"{short.get(ref, ref)} is faster)",
        "",
    ]
    geo, rng = s[f"geomean_{ratio_key}"], s[f"ratio_range_vs_{ref}"]
    geo_row = [f"**{ratio(geo[p])}** ({rng[p][0]:.2f}–{rng[p][1]:.2f})" if rng.get(p) else "skipped" for p in others]
    lines += table(
        ["subnet", *(f"{short.get(p, p)} / {short.get(ref, ref)}" for p in others)],
        [*([r["subnet"], *(ratio(r[ratio_key].get(p)) for p in others)] for r in s["rows"]),
         ["**geomean** (range)", *geo_row]],
        "l" + "r" * len(others),
    )  # fmt: skip
    floor = s.get("repeatability_floor")
    above = s.get("items_above_gate", s.get("items_above_cv_max"))
    lines += [
        "",
        (f"Repeatability floor: {short.get(ref, ref)} measured twice in the same run differed by up to {floor:.1%}; "
         "a ratio within that of 1.00 is no measurable difference. " if floor is not None else "")
        + (f"Round CV: median {s['round_cv_median']:.1%}, max {s['round_cv_max']:.1%}; {above} of {s['items']} "
           f"items stayed above the ±{proto['cv_max']:.0%} gate after retries." if "round_cv_median" in s else ""),
        "",
        "## Parity (max abs diff vs the reference outputs)",
        "",
        *table(
            ["subnet", *(short.get(p, p) for p in paths)],
            ([r["subnet"], *(sci(r.get("parity_max_abs_diff", {}).get(p)) for p in paths)] for r in s["rows"]),
            "l" + "r" * len(paths),
        ),
    ]  # fmt: skip
    if extra:
        lines += ["", *extra(result)]
    lines += ["", "Subnets:", "", *(f"- {r['subnet']} `{r['id']}`: {_choices(r['config'])}" for r in s["rows"])]
    skipped = [(p, why) for p in paths for why in s.get("skipped", {}).get(p, [])]
    if skipped:
        lines += ["", "Skipped:", "", *(f"- {short.get(p, p)}: {why}" for p, why in skipped)]
    notes = [f"{r['subnet']}: {n}" for r in s["rows"] for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    return "\n".join([*lines, "", FOOTER, ""])
