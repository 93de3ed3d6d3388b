"""`tables validate` for a language model: whole generation loops timed end to end against the table.

Random slices the calibration did not see are compiled with the target's LM backend; each generates
`generate_tokens` tokens greedily after a prompt of `ttft_prompt` tokens, in interleaved rounds, twice per
round (two independent measurements in one run: the repeatability floor). Time to first token is compared
with the table's prefill prediction at that prompt length, ms per token with the mean of its decode
predictions over the contexts the loop went through; tokens/s is reported beside them. The figures are the
usual ones (median error, within ±5 % and ±10 %, p90, worst, repeatability), per regime.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy import workspace
from deploy.errors import BackendUnavailableError, NothingToValidateError
from deploy.families.base import Supernet
from deploy.io import atomic_write_json
from deploy.latency.lock import measuring
from deploy.latency.table import LatencyTable, Validation, now_iso
from deploy.latency.validate import VALIDATION_SEED, summarize
from deploy.lm.artifact import get_lm_backend
from deploy.lm.generate import greedy
from deploy.lm.latency import LMLatency, lm_budget, pick_unseen, regime_key
from deploy.lm.tokenizer import ByteTokenizer
from deploy.runners import get_runner
from deploy.targets import Target

log = logging.getLogger(__name__)

WARMUP_LOOPS = 2


@dataclass(frozen=True)
class LoopRow:
    subnet_id: str
    config: dict[str, Any]
    predicted_ttft_ms: float
    measured_ttft_ms: float
    measured_ttft_again_ms: float
    predicted_ms_per_token: float
    measured_ms_per_token: float
    measured_ms_per_token_again: float
    tokens_per_s: float

    @staticmethod
    def _error(predicted: float, a: float, b: float) -> float:
        measured = (a + b) / 2
        return (predicted - measured) / measured * 100

    @property
    def ttft_pct_error(self) -> float:
        return self._error(self.predicted_ttft_ms, self.measured_ttft_ms, self.measured_ttft_again_ms)

    @property
    def decode_pct_error(self) -> float:
        return self._error(self.predicted_ms_per_token, self.measured_ms_per_token, self.measured_ms_per_token_again)


def _figures(errors: list[float], pairs: list[tuple[float, float]]) -> dict[str, float]:
    """summarize() of the errors, and the repeatability: median |a − b| / mean of each slice timed twice."""
    repeat = [abs(a - b) / ((a + b) / 2) * 100 for a, b in pairs]
    return {**summarize(errors), "repeatability_pct": float(np.median(repeat))}


@dataclass(frozen=True)
class LMValidationReport:
    target: str
    samples: int
    seed: int
    date: str
    host: str
    prompt_tokens: int
    generated_tokens: int
    rounds: int
    prefill: dict[str, float]  # summarize() of the TTFT errors + repeatability_pct
    decode: dict[str, float]  # of the ms/token errors + repeatability_pct
    tokens_per_s: dict[str, float]  # median over slices, min, max
    rows: tuple[LoopRow, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = [{**asdict(r), "ttft_pct_error": r.ttft_pct_error, "decode_pct_error": r.decode_pct_error}
                        for r in self.rows]  # fmt: skip
        return data

    def validation(self, regime: str) -> Validation:
        figures = self.prefill if regime == "prefill" else self.decode
        return Validation(
            date=self.date, n_samples=self.samples, seed=self.seed, host=self.host, source="lm generation loops",
            same_window_median_abs_pct_error=figures["median_abs_pct_error"],
            repeatability_pct=figures["repeatability_pct"],
            **{k: figures[k] for k in ("median_abs_pct_error", "within_5pct", "within_10pct", "p90_abs_pct_error",
                                       "worst_pct_error")},
        )  # fmt: skip

    def summary(self) -> str:
        def line(name: str, f: dict[str, float]) -> str:
            return (
                f"{name}: median error {f['median_abs_pct_error']:.1f}%, within ±5% {f['within_5pct']:.0%}, "
                f"±10% {f['within_10pct']:.0%}, p90 {f['p90_abs_pct_error']:.1f}%, "
                f"repeatability {f['repeatability_pct']:.1f}%"
            )

        t = self.tokens_per_s
        return "\n".join([
            f"{self.target}: {self.samples} slices, prompt {self.prompt_tokens} tokens, "
            f"{self.generated_tokens} generated",
            line("TTFT", self.prefill), line("ms/token", self.decode),
            f"tokens/s: median {t['median']:.0f} (range {t['min']:.0f} … {t['max']:.0f})",
        ])  # fmt: skip


def validate_lm_table(
    target: Target,
    supernet: Supernet,
    *,
    samples: int,
    seed: int = VALIDATION_SEED,
    rounds: int | None = None,
    cache_dir: Path | None = None,
    json_path: Path | None = None,
    write_back: bool = True,
) -> LMValidationReport:
    lm = lm_budget(target)
    table = LatencyTable.load(target.table_path, target.name)
    table.require_calibration()
    latency = LMLatency(table, supernet, target)
    backend = get_lm_backend(target.backend)
    reason = backend.runs_here()
    if reason is not None:
        raise BackendUnavailableError(f"cannot time {target.name}'s generation loops here: {reason}")
    configs = pick_unseen(supernet, table, samples, seed)
    if len(configs) < 2:
        raise NothingToValidateError(f"{supernet.variant} has fewer than 2 slices the calibration did not use")
    work = Path(cache_dir or workspace.cache_dir()) / "lm-validate" / target.name
    sessions, tokenizer = [], ByteTokenizer(vocab=supernet.dims.vocab)
    for config in configs:
        artifact = backend.compile_lm(
            supernet.extract(config), target, work / config.id, buckets=lm.prompt_buckets, tokenizer=tokenizer
        )
        sessions.append((artifact, backend.open(artifact)))
    prompt = [i % supernet.dims.vocab for i in range(lm.ttft_prompt)]
    rounds = rounds or target.measurement.rounds
    rng = random.Random(seed)
    timings: dict[tuple[int, int], list[tuple[float, list[float]]]] = {}
    with measuring(get_runner(target.runner), f"tables validate {target.name} (LM generation loops)"):
        order = [(i, rep) for i in range(len(configs)) for rep in (0, 1)]
        for _ in range(WARMUP_LOOPS):
            for i, _rep in order:
                _loop(sessions[i], prompt, lm.generate_tokens)
        for _ in range(rounds):
            rng.shuffle(order)  # interleaved: a burst of load hits every slice, not one
            for i, rep in order:
                g = _loop(sessions[i], prompt, lm.generate_tokens)
                timings.setdefault((i, rep), []).append((g.ttft_ms, list(g.decode_ms)))
    rows = []
    for i, config in enumerate(configs):
        ttft = [float(np.median([t for t, _ in timings[(i, rep)]])) for rep in (0, 1)]
        per_token = [float(np.median([d for _, ds in timings[(i, rep)] for d in ds])) for rep in (0, 1)]
        rows.append(
            LoopRow(
                subnet_id=config.id, config=config.to_json(),
                predicted_ttft_ms=latency.ttft(config, len(prompt)).ms,
                measured_ttft_ms=ttft[0], measured_ttft_again_ms=ttft[1],
                predicted_ms_per_token=latency.generation_ms_per_token(config, len(prompt), lm.generate_tokens),
                measured_ms_per_token=per_token[0], measured_ms_per_token_again=per_token[1],
                tokens_per_s=1000 / float(np.mean(per_token)),
            )
        )  # fmt: skip
    tps = [r.tokens_per_s for r in rows]
    report = LMValidationReport(
        target=target.name, samples=len(rows), seed=seed, date=now_iso(), host=get_runner(target.runner).describe(),
        prompt_tokens=len(prompt), generated_tokens=lm.generate_tokens, rounds=rounds,
        prefill=_figures(
            [r.ttft_pct_error for r in rows], [(r.measured_ttft_ms, r.measured_ttft_again_ms) for r in rows]
        ),
        decode=_figures(
            [r.decode_pct_error for r in rows], [(r.measured_ms_per_token, r.measured_ms_per_token_again) for r in rows]
        ),
        tokens_per_s={"median": float(np.median(tps)), "min": min(tps), "max": max(tps)},
        rows=tuple(rows),
    )  # fmt: skip
    if json_path is not None:
        atomic_write_json(json_path, report.to_json())
    if write_back:
        for regime in ("prefill", "decode"):
            table.validations[regime_key(supernet.family, regime)] = report.validation(regime)
        table.save(target.table_write_path)
    return report


def _loop(entry: tuple[Any, Any], prompt: list[int], tokens: int) -> Any:
    artifact, session = entry
    spec = artifact.spec
    return greedy(session, prompt, tokens, vocab=spec.vocab, max_context=spec.max_context,
                  longest_prompt=spec.longest_prompt)  # fmt: skip
