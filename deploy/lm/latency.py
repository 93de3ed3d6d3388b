"""Latency of a language model: time to first token for a prompt length, ms per generated token at a context.

The table of an LM target (`lm:` in its YAML) holds blocks of two regimes (deploy/families/matformer_lm.py):
prefill blocks keyed by the prompt length (the target's `prompt_buckets`), decode blocks keyed by the KV
length (its `kv_lengths`; a static-cache backend has one, the model's max_context). A build measures them
in one interleaved window and fits one calibration per regime (the table's per-"family" fits, keyed
`<family>:prefill` and `<family>:decode`) on the calibration slices: timed as generation loops where the
target's LM artifacts run here (deploy/lm/calibrate.py: what a user's loop sees), else as whole-slice prefill
and decode graphs at those lengths through the target's runner. Between measured lengths a
dynamic-cache prediction is interpolated linearly; a static one uses the bucket a prompt is padded to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from deploy.errors import ConfigFileError, PromptError
from deploy.families.base import Supernet
from deploy.families.lm_blocks import Decoder, Graph
from deploy.families.matformer_lm import REGIMES, Regime
from deploy.latency.build import block_identity, calibration_configs, fit_calibration, new_table, null_measurable
from deploy.latency.predictor import LatencyPredictor, Prediction
from deploy.latency.session import MeasureSession
from deploy.latency.table import CalibrationSample, Entry, LatencyTable, now_iso
from deploy.search.space import SubnetConfig
from deploy.targets import LMBudget, Target

log = logging.getLogger(__name__)

# loop timings this variable between rounds mean a busy machine: such a fit over-predicted a whole table
# (host-cpu-litert-lm, docs/changelog.md 2026-12-02)
NOISY_CALIBRATION_CV = 0.15
STATIC_BACKENDS = ("tflite", "coreml", "executorch", "executorch_coreml")  # fixed shapes: padded prompts, fixed cache


def regime_key(family: str, regime: Regime) -> str:
    """The table's per-family fit and validation of one regime."""
    return f"{family}:{regime}"


def lm_budget(target: Target) -> LMBudget:
    if target.lm is None:
        raise ConfigFileError(
            f"target {target.name} has no `lm:` section (prompt buckets, KV lengths, TTFT / per-token budgets); "
            "use a language-model target such as host-cpu-ort-lm"
        )
    return target.lm


def is_static(target: Target) -> bool:
    return target.backend in STATIC_BACKENDS


def lengths(target: Target, supernet: Supernet, regime: Regime) -> tuple[int, ...]:
    """The lengths a regime is timed at: the prompt buckets, the KV lengths (static cache: max_context only)."""
    lm, max_context = lm_budget(target), supernet.dims.max_context
    if regime == "decode" and is_static(target):
        return (max_context,)
    chosen = lm.prompt_buckets if regime == "prefill" else lm.kv_lengths
    # a decode step at KV length n attends to n past tokens and writes position n: n < max_context
    limit = max_context if regime == "prefill" else max_context - 1
    too_long = [n for n in chosen if n > limit]
    if too_long:
        what = "prompt_buckets" if regime == "prefill" else "kv_lengths (a decode step's new token goes at position n)"
        raise ConfigFileError(
            f"targets/{target.name}.yaml: lm {what} {too_long} exceed {limit} for {supernet.variant} "
            f"(max_context {max_context})"
        )
    return tuple(chosen)


def table_blocks(target: Target, supernet: Supernet) -> list:
    """Every block an LM table of this target must hold for this model."""
    static = is_static(target)
    keys = {k for r in REGIMES for k in supernet.regime_block_keys(r, lengths(target, supernet, r), static)}
    return sorted(keys)


@dataclass(frozen=True)
class LMPrediction:
    ms: float
    std_ms: float
    at: int  # the prompt length or context it is for
    method: str


class LMLatency:
    """Predictions of one LM target's table: `ttft(config, prompt)`, `ms_per_token(config, context)`."""

    def __init__(
        self, table: LatencyTable, supernet: Supernet, target: Target, corrections: Mapping[str, float] | None = None
    ) -> None:
        """`corrections` rescale one regime's predictions (a deploy measured its artifact off the table)."""
        self.table, self.supernet, self.target = table, supernet, target
        self.corrections = dict(corrections or {})
        self.predictors = {r: LatencyPredictor(table, self.corrections.get(r, 1.0)) for r in REGIMES}
        self.static = is_static(target)
        self.lengths = {r: lengths(target, supernet, r) for r in REGIMES}
        self.predictors["prefill"].require(table_blocks(target, supernet))

    def _at(self, config: SubnetConfig, regime: Regime, length: int) -> Prediction:
        blocks = self.supernet.regime_blocks(config, regime, length, self.static)
        return self.predictors[regime].predict(blocks, regime_key(self.supernet.family, regime))

    def predict(self, config: SubnetConfig, regime: Regime, length: int) -> LMPrediction:
        measured = self.lengths[regime]
        if length < 1 or length > (self.supernet.dims.max_context if regime == "decode" else measured[-1]):
            raise PromptError(
                f"{regime} length {length} is outside what {self.target.name}'s table covers (1 … {measured[-1]})"
            )
        if self.static or length in measured or length <= measured[0]:
            at = next((n for n in measured if n >= length), measured[-1])  # the bucket it is padded to
            p = self._at(config, regime, at)
            return LMPrediction(p.ms, p.std_ms, length, p.method)
        hi = next(i for i, n in enumerate(measured) if n >= length)
        (a, pa), (b, pb) = ((measured[i], self._at(config, regime, measured[i])) for i in (hi - 1, hi))
        w = (length - a) / (b - a)
        return LMPrediction(pa.ms + w * (pb.ms - pa.ms), pa.std_ms + w * (pb.std_ms - pa.std_ms), length, pa.method)

    def ttft(self, config: SubnetConfig, prompt: int | None = None) -> LMPrediction:
        return self.predict(config, "prefill", prompt or lm_budget(self.target).ttft_prompt)

    def ms_per_token(self, config: SubnetConfig, context: int | None = None) -> LMPrediction:
        return self.predict(config, "decode", context or lm_budget(self.target).decode_context)

    def generation_ms_per_token(self, config: SubnetConfig, prompt: int, tokens: int) -> float:
        """Mean predicted decode time over a generation of `tokens` after a prompt (contexts prompt … +tokens−1)."""
        ends = range(prompt, min(prompt + tokens - 1, self.supernet.dims.max_context))
        return float(np.mean([self.predict(config, "decode", c).ms for c in ends]))


# --- whole-slice graphs, as the artifacts run them ------------------------------------------------------------


def regime_graph(decoder: Decoder, regime: Regime, length: int, static: bool) -> tuple[nn.Module, tuple, tuple]:
    """(module, example inputs, input names) of a slice's prefill of `length` tokens or decode at that context."""
    if regime == "prefill":
        method = "prefill_static" if static else "prefill"
        return Graph(decoder, method), (torch.zeros(1, length, dtype=torch.long),), ("tokens",)
    token = torch.zeros(1, 1, dtype=torch.long)
    if static:
        cache = torch.zeros(decoder.cache_shape(decoder.max_context))
        return Graph(decoder, "decode_static"), (token, torch.tensor([length - 1]), cache), ("token", "pos", "kv")
    return Graph(decoder, "decode"), (token, torch.zeros(decoder.cache_shape(length))), ("token", "past")


def graph_identity(config: SubnetConfig, regime: Regime, length: int, static: bool) -> dict[str, str]:
    return {
        "subnet": config.id,
        "lm_graph": f"{regime}@{length}{'/static' if static else ''}",
        "weights": "latency-only",
    }


@dataclass(frozen=True)
class LMBuildResult:
    path: Path
    blocks: int
    graphs: int  # calibration samples: (slice, regime, length)
    fits: dict[str, Any]
    calibrated_on: str = "slice graphs"  # or "generation-loop timings"


def build_lm_table(
    target: Target,
    supernet: Supernet,
    *,
    cache_dir: Path | None = None,
    progress: bool = True,
    path: Path | None = None,
) -> LMBuildResult:
    """Measure every prefill/decode block of the model and whole-slice graphs at each length, interleaved in one
    window, and fit one calibration per regime. Writes the target's table (its `lm` blocks and fits)."""
    from deploy import workspace
    from deploy.lm.calibrate import loop_samples, loops_run_here

    path = path or target.table_write_path
    static = is_static(target)
    session = MeasureSession.open(target, cache_dir)
    blocks = table_blocks(target, supernet)
    n = lm_budget(target).calibration_prompts
    configs = [c for _, c in calibration_configs([supernet], n)]
    loops = loops_run_here(target)  # else whole-slice graphs through the target's runner
    graphs = [] if loops else [(c, r, n) for c in configs for r in REGIMES for n in lengths(target, supernet, r)]
    with Progress(disable=not progress) as bar:
        total = len(blocks) + (len(configs) if loops else len(graphs))
        task = bar.add_task(f"[cyan]compiling LM blocks and slices for {target.name}", total=total)
        items = []
        for key in blocks:
            module, example = supernet.measurable_block(key)
            items.append(session.compile(module, example, block_identity(key)))
            bar.advance(task)
        for config, regime, length in graphs:
            module, example, names = regime_graph(supernet.extract(config), regime, length, static)
            items.append(session.compile(module, example, graph_identity(config, regime, length, static), names))
            bar.advance(task)
        bar.update(task, description="[cyan]measuring blocks" + ("" if loops else " and slices interleaved"))
        *stats, null = session.measure([*items, null_measurable(session)])
        window = dict(zip(blocks, stats[: len(blocks)], strict=True))
        if loops:
            bar.update(task, description="[cyan]calibration slices: generation loops")
            samples = loop_samples(
                target, supernet, configs, window,
                buckets=lengths(target, supernet, "prefill"), kv_lengths=lengths(target, supernet, "decode"),
                static=static, work=Path(cache_dir or workspace.cache_dir()) / "lm-build" / target.name,
                regime_key=regime_key, advance=lambda: bar.advance(task),
            )  # fmt: skip
    fingerprint = session.fingerprint()
    table = new_table(session)
    for key, s in window.items():
        table.upsert(Entry.from_stats(key, s, fingerprint, session.device_id()))
    if not loops:
        samples = []
        for (config, regime, length), s in zip(graphs, stats[len(blocks) :], strict=True):
            keys = supernet.regime_blocks(config, regime, length, static)
            samples.append(
                CalibrationSample(
                    subnet_id=f"{config.id}:{regime}@{length}",
                    config={**config.to_json(), "family": regime_key(supernet.family, regime), "length": length},
                    block_sum_ms=sum(window[k].median_ms for k in keys),
                    n_blocks=len(keys),
                    measured_ms=s.median_ms,
                    cv=s.cv,
                )
            )
    noisy_cv = float(np.median([x.cv for x in samples])) if samples else 0.0
    if noisy_cv > NOISY_CALIBRATION_CV:
        log.warning(
            "%s: the calibration timings varied %.0f%% between rounds (median), so the machine was busy while "
            "they ran and the fit inherits it; rebuild in a quieter window "
            "(elastic-deploy tables build --target %s --rebuild)",
            target.name, 100 * noisy_cv, target.name,
        )  # fmt: skip
    table.calibration = fit_calibration(samples, call_overhead_ms=null.median_ms)
    table.provenance = table.provenance.model_copy(update={"date": now_iso()})
    table.save(path)
    fits = {k: f.model_dump() for k, f in table.calibration.families.items()}
    on = "generation-loop timings" if loops else "slice graphs"
    log.info("LM table %s: %d blocks, %d %s; fits %s", path, len(blocks), len(samples), on, fits)
    return LMBuildResult(path, len(blocks), len(samples), fits, on)


def calibrated_ids(table: LatencyTable) -> set[str]:
    """Slices the table's calibration measured (validation draws others)."""
    return {s.subnet_id.split(":")[0] for s in (table.calibration.samples if table.calibration else [])}


def pick_unseen(supernet: Supernet, table: LatencyTable, n: int, seed: int) -> list[SubnetConfig]:
    from deploy.latency.validate import validation_configs

    return validation_configs(supernet, table, n, seed)
