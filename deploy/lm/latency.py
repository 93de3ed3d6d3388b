"""Latency of a language model: time to first token for a prompt length, ms per generated token at a context.

The table of an LM target (`lm:` in its YAML) holds blocks of two regimes (deploy/families/matformer_lm.py):
prefill blocks keyed by the prompt length (the target's `prompt_buckets`), decode blocks keyed by the KV
length (its `kv_lengths`; a static-cache backend has one, the model's max_context). A build measures them
as `tables build` does an image table's (one by one into a partial file it resumes from, then all again in
one interleaved calibration window) and fits one calibration per regime (the table's per-"family" fits, keyed
`<family>:prefill` and `<family>:decode`) on the calibration slices: timed as generation loops where the
target's LM artifacts run here (deploy/lm/calibrate.py: what a user's loop sees), else as whole-slice prefill
and decode graphs at those lengths through the target's runner. Between measured lengths a
dynamic-cache prediction is interpolated linearly; a static one uses the bucket a prompt is padded to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deploy import workspace
from deploy.errors import ConfigFileError, ExecutorError, InvalidArgumentError, PromptError
from deploy.executors.base import Executor, MakeItem
from deploy.executors.local import LocalExecutor
from deploy.families.base import BlockKey, Supernet
from deploy.families.lm_blocks import Decoder, Graph
from deploy.families.matformer_lm import REGIMES, Regime
from deploy.latency.build import (
    BuildPaths,
    block_identity,
    calibration_configs,
    complete_table,
    measure_blocks,
    measure_window,
    start_build,
    window_interrupted,
)
from deploy.latency.calibration import fit_calibration
from deploy.latency.lock import measuring
from deploy.latency.predictor import LatencyPredictor, Prediction
from deploy.latency.session import Measurable, MeasureSession
from deploy.latency.stats import LatencyStats
from deploy.latency.table import Calibration, CalibrationSample, LatencyTable
from deploy.progress import Progress, ProgressTask
from deploy.search.space import SubnetConfig
from deploy.targets import LMBudget, Target

log = logging.getLogger(__name__)

# loop timings this variable between rounds (median) mean a busy machine, whose fit over-predicts the whole
# table (docs/language-models.md)
NOISY_CALIBRATION_CV = 0.15


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
    """Fixed shapes (padded prompts, one cache of max_context), as the backend's LM half declares."""
    from deploy.lm.artifact import get_lm_backend

    return get_lm_backend(target.backend).cache != "dynamic"


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
    measured: int = 0  # blocks measured alone in this run (the rest were resumed or kept)
    written: bool = True  # False: the table was complete and calibrated, nothing was measured


def check_lm_executor(target: Target, executor: str) -> None:
    """Refuse an executor the build cannot honour, before anything starts: generation-loop calibration runs
    in this process (deploy/lm/calibrate.py), so its blocks must be timed where the loops are."""
    from deploy.executors import EXECUTORS
    from deploy.lm.calibrate import loops_run_here

    if executor != "local" and executor in EXECUTORS and loops_run_here(target):  # an unknown one: its own error
        raise ExecutorError(
            f"--executor {executor} cannot build {target.name}: its calibration times generation loops in this "
            "process, which must see the same device as its blocks; run `tables build` with --executor local "
            "on the machine the target describes"
        )


def check_lm_precision(target: Target, precision: str | None) -> None:
    if precision is not None and precision != target.precision:
        raise InvalidArgumentError(
            f"--precision {precision}: {target.name} is a language-model target, built at its one precision "
            f"({target.precision}); drop --precision"
        )


def _calibrated_on(calibration: Calibration) -> str:
    loops = any(s.config.get("source") == "loop" for s in calibration.samples)
    return "generation-loop timings" if loops else "slice graphs"


def _result(path: Path, blocks: int, calibration: Calibration, measured: int, written: bool) -> LMBuildResult:
    fits = {k: f.model_dump() for k, f in calibration.families.items()}
    return LMBuildResult(path, blocks, len(calibration.samples), fits, _calibrated_on(calibration), measured, written)


def build_lm_table(
    target: Target,
    supernet: Supernet,
    *,
    path: Path | None = None,
    rebuild: bool = False,
    recalibrate: bool = False,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    executor: Executor | None = None,
) -> LMBuildResult:
    """Measure the prefill/decode blocks the table lacks, then calibrate one fit per regime.

    As `build_table` (deploy/latency/build.py): blocks are measured one by one through the executor into
    the partial file (an interrupted build resumes), `rebuild` measures every block again, `recalibrate`
    only the calibration window, in which every block is measured again interleaved with whole-slice graphs
    at each length, or beside generation loops where the target's LM artifacts run here."""
    executor = executor or LocalExecutor()
    check_lm_executor(target, executor.name)
    paths = BuildPaths.of(target, path)
    workspace.check_writable(paths.table.parent, "latency table folder")  # before any measuring
    workspace.check_writable(cache_dir or workspace.cache_dir(), "cache")
    session = executor.session(target, cache_dir)
    start = start_build(session, paths, rebuild)
    old, blocks = start.old, table_blocks(target, supernet)
    todo = [b for b in blocks if b not in start.table.index()]
    log.info("%d LM blocks, %d already measured, %d to measure", len(blocks), len(blocks) - len(todo), len(todo))
    if start.up_to_date(todo) and old is not None and old.calibration is not None and not recalibrate:
        log.info("%s is complete and calibrated; nothing to measure (--rebuild measures it all again)", paths.table)
        return _result(paths.table, len(blocks), old.calibration, measured=0, written=False)

    def compile_block(key: BlockKey) -> Measurable:
        module, example = supernet.measurable_block(key)
        return session.compile(module, example, block_identity(key))

    with measuring(session.runner, f"tables build {target.name}"):  # held for the whole build, as build_table
        done, label = len(blocks) - len(todo), f"LM blocks on {target.name}"
        task = ProgressTask(progress, "blocks", len(blocks), completed=done, description=label)
        measure_blocks(executor, session, start, paths, blocks, todo, compile_block, task)
        window, samples, null = _calibration_window(target, supernet, session, paths, old, compile_block, progress)
    noisy_cv = float(np.median([x.cv for x in samples])) if samples else 0.0
    if noisy_cv > NOISY_CALIBRATION_CV:
        log.warning(
            "%s: the calibration timings varied %.0f%% between rounds (median), so the machine was busy while "
            "they ran and the fit inherits it; rebuild in a quieter window "
            "(elastic-deploy tables build --target %s --rebuild)",
            target.name, 100 * noisy_cv, target.name,
        )  # fmt: skip
    calibration = complete_table(session, start.table, paths, window, fit_calibration(samples, null.median_ms))
    result = _result(paths.table, len(blocks), calibration, measured=len(todo), written=True)
    log.info("LM table %s: %d blocks, %d %s; fits %s", paths.table, len(blocks), result.graphs, result.calibrated_on,
             result.fits)  # fmt: skip
    return result


def _compile_graph(
    session: MeasureSession, supernet: Supernet, config: SubnetConfig, regime: Regime, length: int, static: bool
) -> Measurable:
    module, example, names = regime_graph(supernet.extract(config), regime, length, static)
    return session.compile(module, example, graph_identity(config, regime, length, static), names)


def _calibration_window(
    target: Target,
    supernet: Supernet,
    session: MeasureSession,
    paths: BuildPaths,
    old: LatencyTable | None,
    compile_block: MakeItem,
    progress: Progress | None,
) -> tuple[dict[BlockKey, LatencyStats], list[CalibrationSample], LatencyStats]:
    """Every block measured again in one window with whole-slice graphs at each length, or followed by the
    calibration slices' generation loops where they run here: (block figures, calibration samples, null)."""
    from deploy.lm.calibrate import loop_samples, loops_run_here

    static, blocks = is_static(target), table_blocks(target, supernet)
    configs = [c for _, c in calibration_configs([supernet], lm_budget(target).calibration_prompts)]
    loops = loops_run_here(target)  # else whole-slice graphs through the target's runner
    graphs = [] if loops else [(c, r, n) for c in configs for r in REGIMES for n in lengths(target, supernet, r)]
    total = len(blocks) + (len(configs) if loops else len(graphs))
    task = ProgressTask(progress, "calibration", total, description=f"compiling LM blocks and slices for {target.name}")
    makers = [partial(_compile_graph, session, supernet, c, r, n, static) for c, r, n in graphs]
    window, stats, null = measure_window(
        session, paths, old, blocks, compile_block, makers, task,
        "measuring blocks" + ("" if loops else " and slices interleaved"),
    )  # fmt: skip
    if loops:
        task.describe("calibration slices: generation loops")
        try:
            samples = loop_samples(
                target, supernet, configs, window,
                buckets=lengths(target, supernet, "prefill"), kv_lengths=lengths(target, supernet, "decode"),
                static=static, work=Path(session.cache_dir or workspace.cache_dir()) / "lm-build" / target.name,
                regime_key=regime_key, advance=task.advance,
            )  # fmt: skip
        except KeyboardInterrupt:
            raise window_interrupted(paths, old) from None
        return window, samples, null
    samples = []
    for (config, regime, length), s in zip(graphs, stats, strict=True):
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
    return window, samples, null


def calibrated_ids(table: LatencyTable) -> set[str]:
    """Slices the table's calibration measured (validation draws others)."""
    return {s.subnet_id.split(":")[0] for s in (table.calibration.samples if table.calibration else [])}


def pick_unseen(supernet: Supernet, table: LatencyTable, n: int, seed: int) -> list[SubnetConfig]:
    from deploy.latency.validate import validation_configs

    return validation_configs(supernet, table, n, seed)
