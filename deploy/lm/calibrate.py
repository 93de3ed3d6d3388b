"""An LM table's calibration from generation loops, the way `generate` and `tables validate` run a slice.

Whole prefill and decode graphs timed alone miss what the LM session does around each call (feeding the
past KV in, taking the present out, the argmax), a large share of the time to first token and of each decode
step (docs/language-models.md has the figures). Where the target's LM artifacts run here, `build_lm_table`
therefore compiles each calibration slice as the LM artifact a deploy ships and times, in interleaved rounds:

- prefill: the time to first token of a prompt of each bucket's length (one token generated);
- decode: a generation of the target's `generate_tokens` after a prompt of each KV length (shortened where
  the context would run out; a static cache: after the TTFT prompt), the median of its decode steps. A
  generation's first steps after its prefill run slower than later ones (the prefill evicted the decode's
  working set), so a step deep into a long generation would understate what users see.

Each becomes a CalibrationSample beside the block sums of the same slice, so the fit maps blocks measured
here to what a user's loop sees.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from deploy.families.base import BlockKey, Supernet
from deploy.latency.lock import measuring
from deploy.latency.stats import LatencyStats
from deploy.latency.table import CalibrationSample
from deploy.lm.artifact import get_lm_backend
from deploy.lm.generate import greedy
from deploy.lm.tokenizer import ByteTokenizer
from deploy.runners import get_runner
from deploy.search.space import SubnetConfig
from deploy.targets import Target

WARMUP_ROUNDS = 2


def loops_run_here(target: Target) -> bool:
    """Generation loops time what a user sees only where the artifact runs in this process."""
    return target.runner.measures_in_process and get_lm_backend(target.backend).runs_here() is None


def loop_samples(
    target: Target,
    supernet: Supernet,
    configs: list[SubnetConfig],
    window: Mapping[BlockKey, LatencyStats],
    *,
    buckets: tuple[int, ...],
    kv_lengths: tuple[int, ...],
    static: bool,
    work: Path,
    regime_key: Callable[[str, str], str],
    advance: Callable[[], None] = lambda: None,
) -> list[CalibrationSample]:
    lm = target.lm
    assert lm is not None  # lm_budget() checked it
    backend = get_lm_backend(target.backend)
    tokenizer = ByteTokenizer(vocab=supernet.dims.vocab)
    sessions = []
    for config in configs:
        artifact = backend.compile_lm(
            supernet.extract(config), target, work / config.id, buckets=lm.prompt_buckets, tokenizer=tokenizer
        )
        sessions.append((artifact.spec, backend.open(artifact)))
        advance()
    max_context, tokens = supernet.dims.max_context, lm.generate_tokens
    prompt = [i % supernet.dims.vocab for i in range(max_context)]
    starts = {}  # KV length -> the prompt length its generation starts from
    for length in kv_lengths:
        n = min(lm.ttft_prompt, max(buckets)) if static else min(length, max_context - tokens)
        starts[length] = max(1, n)
    jobs = [(i, "prefill", n) for i in range(len(configs)) for n in buckets]
    jobs += [(i, "decode", length) for i in range(len(configs)) for length in kv_lengths]
    times: dict[tuple[int, str, int], list[float]] = {}
    rng = random.Random(0)
    with measuring(get_runner(target.runner), f"calibrating {target.name} on generation loops"):
        for r in range(WARMUP_ROUNDS + target.measurement.rounds):
            rng.shuffle(jobs)  # interleaved: a burst of load hits every slice and length, not one
            for i, regime, n in jobs:
                spec, session = sessions[i]
                start, new = (n, 1) if regime == "prefill" else (starts[n], tokens)
                g = greedy(session, prompt[:start], new, vocab=spec.vocab, max_context=spec.max_context,
                           longest_prompt=spec.longest_prompt)  # fmt: skip
                if r >= WARMUP_ROUNDS:
                    times.setdefault((i, regime, n), []).append(
                        g.ttft_ms if regime == "prefill" else float(np.median(g.decode_ms))
                    )
    samples = []
    for i, config in enumerate(configs):
        for regime, n in [("prefill", n) for n in buckets] + [("decode", n) for n in kv_lengths]:
            samples.append(_sample(supernet, config, regime, n, times[(i, regime, n)], window, static, regime_key))
    return samples


def _sample(
    supernet: Supernet,
    config: SubnetConfig,
    regime: str,
    length: int,
    times: list[float],
    window: Mapping[BlockKey, LatencyStats],
    static: bool,
    regime_key: Callable[[str, str], str],
) -> CalibrationSample:
    keys = supernet.regime_blocks(config, regime, length, static)
    median = float(np.median(times))
    return CalibrationSample(
        subnet_id=f"{config.id}:{regime}@{length}",
        config={**config.to_json(), "family": regime_key(supernet.family, regime), "length": length, "source": "loop"},
        block_sum_ms=sum(window[k].median_ms for k in keys),
        n_blocks=len(keys),
        measured_ms=median,
        cv=float(np.std(times) / median) if median > 0 else 0.0,
    )
