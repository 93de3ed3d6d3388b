"""Latency-aware LM slices against the heuristics MatFormer Lab publishes, at equal latency budgets: how much
perplexity the latency-aware choice buys, per budget.

For a sweep of budgets between the fastest slice and the full model (both TTFT at the target's `ttft_prompt`
and ms/token at its `decode_context`, each the table's prediction less the table's safety margin), three
methods pick a slice of matformer_lm_py:

- ours: `select_lm` (deploy/lm/select.py): the lowest validation perplexity among slices whose predicted TTFT
  and ms/token both fit (surrogate screening, exact evaluation of the finalists);
- uniform FFN shrink: every layer kept, the same FFN width in each (1, 1/2, 1/4, 1/8): the widest that fits;
- rank by parameter count: every Mix'n'Match slice of the space ranked by parameters, the largest that fits.

All three get the same feasibility test (the same table, the same margins): the comparison isolates how a slice
is ranked, not how its latency is known. Each chosen slice's perplexity is then evaluated exactly on the test
split (the selection only saw val), and every distinct chosen slice is compiled to the target's KV-cache
artifact and its TTFT and ms/token measured in one interleaved run, so each row says what it measured.

    python -m benchmarks.lm_heuristics           # host-cpu-ort-lm, its table and protocol, ~5-10 min
    python -m benchmarks.lm_heuristics --quick   # tiny LM trained a few steps, its own tiny table: seconds
"""

from __future__ import annotations

import logging
import math
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import harness
from benchmarks.harness import lm as lmh
from deploy.errors import NoFeasibleSubnetError

log = logging.getLogger("benchmarks.lm_heuristics")

METHODS = {"ours": "latency-aware (select_lm)", "uniform": "uniform FFN shrink", "params": "largest by parameters"}
FRACTIONS = (0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)  # budget = fastest + f · (full − fastest), predicted
QUICK_FRACTIONS = (0.3, 1.0)
SLACK = 1e-9  # a budget set exactly at a slice's prediction admits it


def predicted(latency: Any, configs: list[Any]) -> dict[str, tuple[float, float]]:
    """config id -> (predicted TTFT, predicted ms/token)."""
    return {c.id: (latency.ttft(c).ms, latency.ms_per_token(c).ms) for c in configs}


def first_fitting(ranked: list[Any], pred: dict[str, tuple[float, float]], limits: tuple[float, float]) -> Any:
    ttft, per_token = limits
    return next((c for c in ranked if pred[c.id][0] <= ttft + SLACK and pred[c.id][1] <= per_token + SLACK), None)


def measured_latency(
    target: Any, net: Any, configs: list[Any], protocol: Any, eager: bool = False
) -> dict[str, dict[str, float]]:
    """Each slice's KV-cache artifact (the target's backend; with `eager`, --quick, the torch decoder instead),
    TTFT at ttft_prompt and one decode step at decode_context, all measured in one interleaved run."""
    from deploy.latency.measure import measure_interleaved
    from deploy.lm.artifact import get_lm_backend
    from deploy.lm.generate import TorchSession
    from deploy.lm.tokenizer import ByteTokenizer

    backend, lm = get_lm_backend(target.backend), target.lm
    calls: dict[str, Callable[[], object]] = {}
    with tempfile.TemporaryDirectory(prefix="lm-heuristics.") as tmp:
        for config in configs:
            decoder = net.extract(config).eval()
            longest = decoder.max_context
            if eager:
                session: Any = TorchSession(decoder)
            else:
                with harness.quiet():
                    artifact = backend.compile_lm(decoder, target, Path(tmp) / config.id,
                                                  buckets=lm.prompt_buckets, tokenizer=ByteTokenizer())  # fmt: skip
                session, longest = backend.open(artifact), artifact.spec.longest_prompt
            prompt = np.zeros(lm.ttft_prompt, np.int64)
            context = np.zeros(min(lm.decode_context - 1, longest), np.int64)
            _, state = session.prefill(context)
            calls[f"{config.id}|ttft"] = lambda s=session, p=prompt: int(np.argmax(s.prefill(p)[0]))
            calls[f"{config.id}|decode"] = lambda s=session, st=state: int(np.argmax(s.decode(0, st)[0]))
        stats = measure_interleaved(calls, protocol, seed=0, where=f"local ({target.name})")
    return {
        c.id: {"ttft_ms": stats[f"{c.id}|ttft"].median_ms, "ms_per_token": stats[f"{c.id}|decode"].median_ms,
               "round_cv_max": max(stats[f"{c.id}|{k}"].cv for k in ("ttft", "decode"))}
        for c in configs
    }  # fmt: skip


def run(args: Any) -> harness.Result:
    from deploy.accuracy.model import build_accuracy_model
    from deploy.accuracy.oracle import EvalOracle
    from deploy.latency.table import LatencyTable, safety_margin_pct
    from deploy.lm.latency import LMLatency, build_lm_table, regime_key
    from deploy.lm.select import select_lm
    from deploy.models.checkpoint import task_for

    with lmh.workspace(args.quick) as root:
        target = lmh.target_for(args, "onnxruntime", root)
        if root is not None:
            lmh.train_quick(root)
        net, ckpt, weights = lmh.supernet(args.quick, trained=True)
        if root is not None:
            build_lm_table(target, net, progress=False)
        table = LatencyTable.load(target.table_path, target.name)
        table.require_calibration()
        latency = LMLatency(table, net, target)
        accuracy = build_accuracy_model(net, ckpt, progress=False)
        test = EvalOracle(net, task_for(ckpt), "test", None, ckpt.sha256)
        margins = {r: safety_margin_pct(table, regime_key(net.family, r)) for r in ("prefill", "decode")}
        keep = 1 - margins["prefill"] / 100, 1 - margins["decode"] / 100

        space = list(net.space().enumerate())
        pred = predicted(latency, space)
        by_params = sorted(space, key=lambda c: (-net.param_count(c), c.id))
        uniform = [net.config(list(range(net.dims.depth)), [w] * net.dims.depth) for w in sorted(net.dims.widths)[::-1]]
        fast, full = pred[net.smallest().id], pred[net.largest().id]

        rows, chosen = [], {}
        for f in QUICK_FRACTIONS if args.quick else FRACTIONS:
            limits = tuple(fast[i] + f * (full[i] - fast[i]) for i in (0, 1))
            budgets = (limits[0] / keep[0], limits[1] / keep[1])  # what a target would state
            t = target.model_copy(update={"lm": target.lm.model_copy(
                update={"ttft_ms": budgets[0], "ms_per_token": budgets[1]})})  # fmt: skip
            picks: dict[str, Any] = {}
            try:
                picks["ours"] = select_lm(t, net, accuracy, latency).selection.choice.config
            except NoFeasibleSubnetError as exc:
                picks["ours"] = harness.one_line(str(exc))
            picks["uniform"] = first_fitting(uniform, pred, limits) or "no uniform slice fits: it keeps every layer"
            picks["params"] = first_fitting(by_params, pred, limits) or "no slice fits"
            row: dict[str, Any] = {
                "fraction": f, "ttft_budget_ms": budgets[0], "ms_per_token_budget": budgets[1],
                "limits": {"ttft_ms": limits[0], "ms_per_token": limits[1]}, "methods": {},
            }  # fmt: skip
            for method, config in picks.items():
                if isinstance(config, str):
                    row["methods"][method] = {"skipped": config}
                    continue
                chosen[config.id] = config
                row["methods"][method] = {
                    "id": config.id, "config": config.to_json()["choices"], "params": net.param_count(config),
                    "predicted_ttft_ms": pred[config.id][0], "predicted_ms_per_token": pred[config.id][1],
                    "val_perplexity": accuracy.exact(config), "test_perplexity": test(config),
                }  # fmt: skip
            rows.append(row)
        protocol = harness.QUICK_PROTOCOL if args.quick else target.measurement.protocol()
        measured = measured_latency(target, net, list(chosen.values()), protocol, eager=args.quick)
        for row in rows:
            for m in row["methods"].values():
                if "id" in m:
                    m["measured"] = measured[m["id"]]
        return {
            "model": net.variant, "weights": weights, "target": target.name, "threads": target.threads,
            "table": {"date": table.provenance.date, "method": table.provenance.method, "margins_pct": margins},
            "ttft_prompt": target.lm.ttft_prompt, "decode_context": target.lm.decode_context,
            "protocol": protocol.to_json(), "methods": METHODS,
            "measured_with": "torch eager decoder (--quick)" if args.quick else f"{target.backend} KV-cache artifact",
            "space_size": len(space),
            "perplexity_spread": {"smallest": accuracy.exact(net.smallest()), "full": accuracy.exact(net.largest())},
            "rows": rows, "summary": summarize(rows),
        }  # fmt: skip


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per heuristic: test perplexity it gives up against ours, over the budgets where both chose a slice."""
    out: dict[str, Any] = {}
    for h in ("uniform", "params"):
        deltas = [r["methods"][h]["test_perplexity"] - r["methods"]["ours"]["test_perplexity"]
                  for r in rows if "id" in r["methods"][h] and "id" in r["methods"]["ours"]]  # fmt: skip
        out[h] = {
            "budgets_compared": len(deltas),
            "budgets_without_a_slice": sum("id" not in r["methods"][h] for r in rows),
            "median_perplexity_bought": statistics.median(deltas) if deltas else None,
            "max_perplexity_bought": max(deltas) if deltas else None,
        }
    return out


def _cell(m: dict[str, Any], key: str, fmt: str) -> str:
    if "id" not in m:
        return "–"
    value = m[key] if key in m else m.get("measured", {}).get(key.replace("measured_", ""), math.nan)
    return format(value, fmt)


def markdown(result: harness.Result) -> str:
    lines = [
        *harness.heading(result, "Latency-aware LM slices vs MatFormer Lab's heuristics, at equal budgets"),
        "",
        f"{result['model']} ({result['weights']}) on {result['target']} ({result['threads']} thread): budgets on "
        f"TTFT at {result['ttft_prompt']} prompt tokens and ms/token at {result['decode_context']} tokens of "
        "context, swept from the fastest slice to the full model (table predictions less the table's margins; "
        "the same feasibility for every method). Perplexity: exact, test split. Measured: "
        f"{result['measured_with']} of each chosen slice, all slices in one interleaved run.",
        "",
        f"Perplexity of the smallest / full slice (val): {result['perplexity_spread']['smallest']:.3f} / "
        f"{result['perplexity_spread']['full']:.3f}.",
        "",
    ]
    head = ["budget TTFT ms / ms/token"]
    for m in METHODS:
        head += [f"{m}: test ppl", f"{m}: measured TTFT / ms/token"]
    body = []
    for r in result["rows"]:
        cells = [f"{r['ttft_budget_ms']:.3g} / {r['ms_per_token_budget']:.3g}"]
        for m in METHODS:
            got = r["methods"][m]
            cells.append(_cell(got, "test_perplexity", ".3f") if "id" in got else f"none ({got['skipped'][:40]})")
            cells.append(f"{_cell(got, 'measured_ttft_ms', '.3g')} / {_cell(got, 'measured_ms_per_token', '.3g')}")
        body.append(cells)
    lines += harness.table(head, body, "l" + "rr" * len(METHODS))
    lines += ["", "Perplexity the latency-aware choice buys (heuristic's test perplexity − ours):", ""]
    for h, s in result["summary"].items():
        med = "n/a" if s["median_perplexity_bought"] is None else f"{s['median_perplexity_bought']:+.3f}"
        top = "n/a" if s["max_perplexity_bought"] is None else f"{s['max_perplexity_bought']:+.3f}"
        lines.append(f"- vs {METHODS[h]}: median {med}, at most {top} over {s['budgets_compared']} budgets; "
                     f"{s['budgets_without_a_slice']} budgets where it has no slice")  # fmt: skip
    lines.append("")
    lines.append(harness.source_line(result, "benchmarks/results/lm_heuristics.json"))
    return "\n".join(lines) + "\n"


def arguments(parser: Any) -> None:
    parser.add_argument("--target", default=lmh.TARGETS["onnxruntime"], help="an LM target with a measured table")


COMPARISON = harness.Comparison("lm_heuristics", __doc__, run, markdown, arguments)

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
