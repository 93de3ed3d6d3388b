"""Our ONNX-with-KV-cache LM artifact against the same slice without a KV cache, against LiteRT and against torch
eager, interleaved in one run; and whether a peer exporter (Optimum, onnxruntime-genai) can take the slice.

For the smallest, the full and one seeded Mix'n'Match slice of matformer_lm_py, each path generates greedily
after the same prompt (the target's `ttft_prompt` tokens) and is timed two ways, every item of every slice in
one interleaved measurement:

- ttft: the prefill of the prompt and the first argmax;
- loop: the whole generation of `generate_tokens` tokens (prefill + decodes), as `generate` runs it;
  ms/token is derived as (loop − ttft) / (tokens − 1).

Paths: ours (prefill.onnx + decode.onnx, dynamic KV cache, ONNX Runtime, the target's threads), ours measured
again (the repeatability floor), no KV cache (one ONNX of the whole decoder, dynamic length, run on the whole
context for every token: what the cache buys), LiteRT (prefill_<bucket> and decode signatures, static cache,
host-cpu-litert-lm's threads), torch eager with its KV cache. Each path's tokens are checked against torch's.

    python -m benchmarks.lm_paths           # matformer_lm_py, host-cpu-ort-lm's protocol, ~5 min
    python -m benchmarks.lm_paths --quick   # tiny LM, its smallest slice, QUICK_PROTOCOL: seconds
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import harness
from benchmarks.harness import lm as lmh
from deploy.errors import DeployError

log = logging.getLogger("benchmarks.lm_paths")

OURS, AGAIN, NOKV, LITERT, EAGER = "ours", "ours_repeat", "no_kv_ort", "litert", "torch_eager_kv"
PATHS = {
    OURS: "ours: prefill.onnx + decode.onnx, KV cache (ONNX Runtime)",
    AGAIN: "ours, measured again",
    NOKV: "same slice without a KV cache: whole context every token (ONNX Runtime)",
    LITERT: "LiteRT: prefill_<bucket> + decode signatures, static KV cache",
    EAGER: "torch eager with its KV cache",
}
GPT2 = (
    "the closest architecture they know, GPT-2 (learned positions, pre-LayerNorm, GELU MLP), has one n_inner for "
    "every layer, so a Mix'n'Match slice (a width per layer, layers skipped) cannot be written as its config; a "
    "uniform slice could, after a weight conversion this project does not ship"
)
PEERS = {  # import name -> why it cannot take a matformer_lm slice
    "optimum": "Optimum exports transformers models through the OnnxConfig registered for their model type; a "
    "matformer_lm slice is not a transformers model, and " + GPT2,
    "onnxruntime_genai": "onnxruntime-genai's model builder reads the Hugging Face config and weights of a "
    "supported type (LLaMA, Mistral, Phi, Gemma, Qwen, …); " + GPT2,
}


class NoKV(torch.nn.Module):
    """The decoder without a cache: the whole context in, the last position's logits out."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.decoder(tokens)[:, -1]


class NoKVSession:
    """An LMSession that recomputes the whole context at every step (its state is the context so far)."""

    def __init__(self, session: Any) -> None:
        self.session = session

    def prefill(self, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(prompt, np.int64).reshape(1, -1)
        return self.session.run(None, {"tokens": ids})[0][0], ids

    def decode(self, token: int, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = np.concatenate([state, np.array([[token]], np.int64)], axis=1)
        return self.session.run(None, {"tokens": ids})[0][0], ids


def peer_exporters() -> dict[str, str]:
    """Per peer exporter: why it does not take the slice (installed or not)."""
    out = {}
    for name, why in PEERS.items():
        installed = importlib.util.find_spec(name) is not None
        out[name] = f"{'installed' if installed else 'not installed here'}; {why}"
    return out


def no_kv_session(decoder: Any, target: Any, out: Path) -> tuple[NoKVSession, float]:
    import onnxruntime as ort

    from deploy.backends.onnxruntime_lm import EXAMPLE_LENGTH, export_onnx

    start = time.perf_counter()
    path = out / "nokv.onnx"
    export_onnx(NoKV(decoder), (torch.zeros(1, EXAMPLE_LENGTH, dtype=torch.long),), path,
                (("tokens",), ("logits",)), {"tokens": {1: "context"}})  # fmt: skip
    options = ort.SessionOptions()
    options.intra_op_num_threads = target.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL  # as the backend sets ours
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return NoKVSession(session), time.perf_counter() - start


def build_paths(decoder: Any, targets: dict[str, Any], work: Path, skipped: dict[str, str]) -> dict[str, Any]:
    """path -> (session, artifact spec or None, convert seconds)."""
    from deploy.lm.artifact import get_lm_backend
    from deploy.lm.generate import TorchSession
    from deploy.lm.tokenizer import ByteTokenizer

    lm = targets["onnxruntime"].lm
    sessions: dict[str, Any] = {EAGER: (TorchSession(decoder), None, None)}
    for path, backend_name in ((OURS, "onnxruntime"), (LITERT, "tflite")):
        backend = get_lm_backend(backend_name)
        why = backend.runs_here()
        if why:
            skipped[path] = why
            continue
        start = time.perf_counter()
        try:
            with harness.quiet():
                artifact = backend.compile_lm(
                    decoder, targets[backend_name], work / path, tokenizer=ByteTokenizer(),
                    buckets=[b for b in lm.prompt_buckets if b >= lm.ttft_prompt][:1],  # the one the prompt needs
                )  # fmt: skip
        except DeployError as exc:
            skipped[path] = harness.one_line(str(exc))
            continue
        sessions[path] = (backend.open(artifact), artifact.spec, time.perf_counter() - start)
    if OURS in sessions:
        sessions[AGAIN] = sessions[OURS]
    with harness.quiet():
        session, seconds = no_kv_session(decoder, targets["onnxruntime"], work)
    sessions[NOKV] = (session, None, seconds)
    return sessions


def slice_calls(label: str, decoder: Any, sessions: dict[str, Any], prompt: np.ndarray, tokens: int, row: dict) -> dict:
    """The timed calls of one slice (ttft and loop per path), with each path's tokens checked against torch's."""
    from deploy.lm.generate import greedy

    vocab, max_context = decoder.vocab, decoder.max_context
    reference = greedy(sessions[EAGER][0], prompt, tokens, vocab=vocab, max_context=max_context).tokens
    calls: dict[str, Callable[[], object]] = {}
    for path, (session, spec, seconds) in sessions.items():
        longest = spec.longest_prompt if spec is not None else max_context
        got = greedy(session, prompt, tokens, vocab=vocab, max_context=max_context, longest_prompt=longest).tokens
        row["tokens_identical"][path] = got == reference
        if seconds is not None:
            row["convert_s"][path] = round(seconds, 2)

        def loop(s: Any = session, n: int = longest) -> object:
            return greedy(s, prompt, tokens, vocab=vocab, max_context=max_context, longest_prompt=n)

        calls[f"{label}|{path}|ttft"] = lambda s=session: int(np.argmax(s.prefill(prompt)[0]))
        calls[f"{label}|{path}|loop"] = loop
    return calls


def run(args: Any) -> harness.Result:
    from deploy.latency.measure import measure_interleaved

    with lmh.workspace(args.quick) as root, tempfile.TemporaryDirectory(prefix="lm-paths.") as tmp:
        targets = {b: lmh.target_for(args, b, root) for b in ("onnxruntime", "tflite")}
        target = targets["onnxruntime"]
        torch.set_num_threads(target.threads)
        net, _, weights = lmh.supernet(args.quick, trained=False)
        picked = harness.pick_subnets(net, 0 if args.quick else 1, harness.subnets.SUBNET_SEED)
        picked = picked[:1] if args.quick else picked
        lm = target.lm
        prompt = np.asarray(np.random.default_rng(0).integers(32, 127, lm.ttft_prompt), np.int64)
        tokens = lm.generate_tokens
        skipped: dict[str, str] = {}
        rows, calls = [], {}
        for label, config in picked:
            decoder = net.extract(config).eval()
            row = {"subnet": label, "id": config.id, "config": config.to_json()["choices"],
                   "params": net.param_count(config), "tokens_identical": {}, "convert_s": {}}  # fmt: skip
            sessions = build_paths(decoder, targets, Path(tmp) / config.id, skipped)
            calls.update(slice_calls(label, decoder, sessions, prompt, tokens, row))
            rows.append(row)
            log.info("  %s %s built: %s", label, config, row["convert_s"])
        protocol = harness.QUICK_PROTOCOL if args.quick else target.measurement.protocol()
        with torch.inference_mode():
            stats = measure_interleaved(calls, protocol, seed=0, where=f"local ({target.name})")
    for row in rows:
        row["median_ms"], row["round_cv"] = {}, {}
        for path in PATHS:
            if f"{row['subnet']}|{path}|ttft" not in stats:
                continue
            ttft, loop = (stats[f"{row['subnet']}|{path}|{k}"] for k in ("ttft", "loop"))
            per_token = (loop.median_ms - ttft.median_ms) / max(tokens - 1, 1)
            row["median_ms"][path] = {"ttft": ttft.median_ms, "loop": loop.median_ms, "ms_per_token": per_token,
                                      "tokens_per_s": 1000 / per_token if per_token > 0 else None}  # fmt: skip
            row["round_cv"][path] = max(ttft.cv, loop.cv)
        ours = row["median_ms"].get(OURS)
        row["loop_ratio_vs_ours"] = {p: v["loop"] / ours["loop"] for p, v in row["median_ms"].items()} if ours else {}
    return {
        "model": net.variant, "weights": weights, "target": target.name, "litert_target": targets["tflite"].name,
        "threads": target.threads, "prompt_tokens": int(prompt.size), "generated_tokens": tokens,
        "protocol": protocol.to_json(), "paths": PATHS, "skipped": skipped, "peer_exporters": peer_exporters(),
        "summary": {"rows": rows, "geomean_loop_ratio_vs_ours": {
            p: harness.geomean([r["loop_ratio_vs_ours"][p] for r in rows if p in r["loop_ratio_vs_ours"]])
            for p in PATHS if any(p in r["loop_ratio_vs_ours"] for r in rows)}},
    }  # fmt: skip


def markdown(result: harness.Result) -> str:
    rows = result["summary"]["rows"]
    lines = [
        *harness.heading(result, "LM paths: ONNX with KV cache vs without, vs LiteRT, vs torch eager"),
        "",
        f"{result['model']} ({result['weights']}), {result['threads']} thread (ONNX Runtime: {result['target']}; "
        f"LiteRT: {result['litert_target']}); a prompt of {result['prompt_tokens']} tokens, "
        f"{result['generated_tokens']} tokens generated greedily; every (slice, path) timed in one interleaved "
        "run. TTFT and the whole loop are medians of measured calls; ms/token = (loop − TTFT) / (tokens − 1).",
        "",
    ]
    head = ["slice", "path", "TTFT ms", "ms/token", "tokens/s", "loop ms", "loop vs ours", "tokens = torch"]
    body = []
    for r in rows:
        for p, v in r["median_ms"].items():
            tps = "–" if v["tokens_per_s"] is None else f"{v['tokens_per_s']:.0f}"
            same = "yes" if r["tokens_identical"].get(p) else "NO"
            body.append([r["subnet"], p, f"{v['ttft']:.3f}", f"{v['ms_per_token']:.3f}", tps, f"{v['loop']:.2f}",
                         f"{r['loop_ratio_vs_ours'][p]:.2f}×", same])  # fmt: skip
    lines += harness.table(head, body, "llrrrrrl")
    geo = result["summary"]["geomean_loop_ratio_vs_ours"]
    lines += ["", "Geometric mean of the loop time against ours: "
              + ", ".join(f"{p} {v:.2f}×" for p, v in geo.items() if p != OURS) + "."]  # fmt: skip
    for p, why in result["skipped"].items():
        lines.append(f"- {p} skipped: {why}")
    lines += ["", "Peer exporters:", ""]
    lines += [f"- {name}: {why}." for name, why in result["peer_exporters"].items()]
    lines += ["", harness.source_line(result, "benchmarks/results/lm_paths.json")]
    return "\n".join(lines) + "\n"


def arguments(parser: Any) -> None:
    parser.add_argument("--target", default=lmh.TARGETS["onnxruntime"], help="the ONNX Runtime LM target")


COMPARISON = harness.Comparison("lm_paths", __doc__, run, markdown, arguments, distributions=("ai-edge-litert",))

if __name__ == "__main__":
    raise SystemExit(harness.main(COMPARISON))
