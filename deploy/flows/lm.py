"""The language-model workload: a slice under its TTFT, ms/token and size budgets, a KV-cache artifact.

The stages it answers for the deploy skeleton (deploy/flows/workload.py): its checkpoint, tokenizer (against the
sha256 training recorded), task and LM table; the drift check over the table's own prefill/decode blocks, one
correction per regime; `select_lm`; the KV-cache artifact compiled into `lm/` and checked (greedy parity with
the torch slice, perplexity through the artifact's own cache); generation loops timed under the device's
measurement lock; an observation per regime and the over-budget rule; `LMManifest` and report.md.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from deploy.accuracy.model import AccuracyModel, build_accuracy_model
from deploy.accuracy.oracle import EvalOracle, user_cache_path
from deploy.errors import DeployError, MeasuredOverBudgetError, TokenizerError
from deploy.export.hub import toolchain_versions
from deploy.families.base import Supernet
from deploy.flows.workload import Chosen, DeployRequest, Loaded, Reselect, RunRecord
from deploy.latency.drift import Correction, check_drift, session_or_reason
from deploy.latency.lock import measuring
from deploy.latency.observations import (
    Observation,
    observations_path,
    observed_scale,
    record_observation,
    table_identity,
)
from deploy.latency.table import LatencyTable, now_iso
from deploy.lm import tokenizer as tok
from deploy.lm.artifact import ARTIFACT_DIR, LMArtifact, LMBackend, get_lm_backend
from deploy.lm.generate import TorchSession, teacher_forced_nll, time_loops_gated
from deploy.lm.latency import REGIMES, LMLatency, lm_budget, regime_key, table_blocks
from deploy.lm.parity import greedy_parity, parity_prompts
from deploy.lm.select import select_lm
from deploy.models.checkpoint import CheckpointInfo, task_for
from deploy.models.checkpoint import load as load_checkpoint
from deploy.packaging.manifest import (
    GenerationTiming,
    LMArtifactRecord,
    LMLatencyRecord,
    LMManifest,
    LMMetricRecord,
    SubnetRecord,
    TokenizerRecord,
)
from deploy.packaging.report import write_report
from deploy.runners import get_runner
from deploy.targets import Target
from deploy.tasks.base import predictor

PERPLEXITY_WINDOWS = 16  # test windows scored through the artifact's KV-cache path
TIMED_LOOPS = 10


@dataclass(frozen=True)
class LMLoaded(Loaded):
    backend: LMBackend
    tokenizer: tok.ByteTokenizer
    accuracy: AccuracyModel


@dataclass(frozen=True)
class LMChosen(Chosen):
    latency: LMLatency


@dataclass(frozen=True)
class LMBuilt:
    artifact: LMArtifact
    inspection: dict[str, Any]
    test_metric: float
    next_token_accuracy: float | None
    parity: dict[str, Any] | None
    artifact_ppl: float | None
    torch_ppl: float | None
    not_run_reason: str | None  # why the artifact cannot run here (None: it ran)


def checkpoint_tokenizer(info: CheckpointInfo, supernet: Supernet) -> tok.ByteTokenizer:
    """The tokenizer saved beside the checkpoint, checked against the sha256 training recorded and the model's
    vocabulary (TokenizerError names both files)."""
    recorded = info.meta.get("tokenizer")
    if not isinstance(recorded, dict):
        raise TokenizerError(
            f"{info.path} records no tokenizer; retrain it with `make train MODEL={supernet.variant}` (training "
            "writes <model>.tokenizer.json beside the checkpoint)"
        )
    path = Path(info.path).with_name(str(recorded["file"]))
    return tok.load(
        path, vocab=supernet.dims.vocab, sha256=str(recorded["sha256"]), what=f"checkpoint {info.path.name}"
    )


def _windows_perplexity(session: Any, windows: list[list[int]]) -> float:
    nll = [teacher_forced_nll(session, w) for w in windows]
    return float(np.exp(sum(s for s, _ in nll) / sum(n for _, n in nll)))


def _windows(task: Any, n: int) -> list[list[int]]:
    test = task.split("test")
    rows = test.inputs["tokens"][:n]
    return [[*r.tolist(), int(t[-1])] for r, t in zip(rows, test.targets[:n], strict=True)]


def lm_corrections(
    target: Target, table: LatencyTable, supernet: Supernet, *, measure: bool, cache_dir: Path | None, say: Any
) -> dict[str, Correction]:
    """The drift check over the table's own prefill/decode blocks (one check: the device's speed) and, per
    regime, the refit on recent observations of it; the same line an image deploy prints."""
    observed = {r: observed_scale(target, table, regime_key(supernet.family, r), cache_dir=cache_dir) for r in REGIMES}
    if not measure:
        return {r: Correction(skipped="--no-measure", observed=observed[r]) for r in REGIMES}
    session, reason = session_or_reason(target, cache_dir)
    if session is None:
        say(f"no drift check for {target.name}: {reason}")
        return {r: Correction(skipped=reason, observed=observed[r]) for r in REGIMES}
    drift = check_drift(session, table, supernet, keys=table_blocks(target, supernet))
    say(drift.message())
    return {r: Correction(drift=drift, observed=observed[r]) for r in REGIMES}


def over_budget(
    target: Target, config_id: str, timing: GenerationTiming, predicted: Mapping[str, float], per_token_ms: float,
    corrections: Mapping[str, float],
) -> tuple[str, dict[str, float]] | None:  # fmt: skip
    """The measured loop against the budgets: TTFT directly (it is timed at the budget's prompt length), the
    per-token time through the ratio of measured to predicted decode over the timed generation. None within
    them, else (what was over, the correction per regime the measurement implies)."""
    lm = lm_budget(target)
    ratios = {"prefill": timing.ttft_ms / predicted["prefill"], "decode": timing.ms_per_token / predicted["decode"]}
    over = []
    if lm.ttft_ms is not None and timing.ttft_ms > lm.ttft_ms:
        over.append(f"TTFT {timing.ttft_ms:.3f} ms (predicted {predicted['prefill']:.3f}) > {lm.ttft_ms:g} ms budget")
    implied = per_token_ms * ratios["decode"]
    if lm.ms_per_token is not None and implied > lm.ms_per_token:
        over.append(
            f"{implied:.3f} ms/token at {lm.decode_context} of context (from {timing.ms_per_token:.3f} measured "
            f"vs {predicted['decode']:.3f} predicted over the loop) > {lm.ms_per_token:g} ms/token budget"
        )
    if not over:
        return None
    factors = {r: corrections.get(r, 1.0) * ratios[r] for r in REGIMES}
    return f"slice {config_id} measured {' and '.join(over)}", factors


class LMWorkload:
    kind: ClassVar[str] = "lm"

    def load(self, request: DeployRequest) -> LMLoaded:
        target, say = request.target, request.say
        lm_budget(target)
        backend = get_lm_backend(target.backend)  # a backend without LM support fails before anything else
        supernet, ckpt = load_checkpoint(request.variant)
        supernet.eval()
        tokenizer = checkpoint_tokenizer(ckpt, supernet)
        task = task_for(ckpt)
        table = LatencyTable.load(target.table_path, target.name)
        if table.provenance.method != "measured":
            method, why = table.provenance.method.upper(), table.provenance.estimation or ""
            say(f"{method} latency table for {target.name}: {why}")
        table.require_calibration()
        accuracy = build_accuracy_model(supernet, ckpt, progress=request.progress)
        return LMLoaded(supernet, ckpt, task, table, backend, tokenizer, accuracy)

    def drift_check(self, request: DeployRequest, loaded: Loaded) -> dict[str, Correction]:
        return lm_corrections(
            request.target, loaded.table, loaded.supernet, measure=request.measure, cache_dir=request.cache_dir,
            say=request.say,
        )  # fmt: skip

    def select(self, request: DeployRequest, loaded: Loaded, corrections: Mapping[str, Correction]) -> LMChosen:
        assert isinstance(loaded, LMLoaded)
        target, lm = request.target, lm_budget(request.target)
        factors = {r: c.factor for r, c in corrections.items()}
        latency = LMLatency(loaded.table, loaded.supernet, target, factors)
        chosen = select_lm(target, loaded.supernet, loaded.accuracy, latency)
        choice, metric = chosen.selection.choice, loaded.task.metric
        ttft, per_token = latency.ttft(choice.config), latency.ms_per_token(choice.config)
        request.say(
            f"selected {choice.config.id} {choice.config}: predicted TTFT {ttft.ms:.3f} ms at {lm.ttft_prompt} "
            f"tokens, {per_token.ms:.3f} ms/token at {lm.decode_context} of context ({1000 / per_token.ms:.0f} "
            f"tokens/s); val {metric.name} {metric.format(choice.accuracy)}"
        )
        return LMChosen(config=choice.config, selection=chosen, latency=latency)

    def build(self, record: RunRecord, staging: Path) -> LMBuilt:
        req, loaded, chosen = record.request, record.loaded, record.chosen
        assert isinstance(loaded, LMLoaded) and isinstance(chosen, LMChosen)
        supernet, task, config, backend = loaded.supernet, loaded.task, chosen.config, loaded.backend
        decoder = supernet.extract(config)
        test_cache = user_cache_path(req.variant, loaded.ckpt.sha256, "test")
        test_metric = EvalOracle(supernet, task, "test", test_cache, loaded.ckpt.sha256)(config)
        next_token = task.extra_metrics(predictor(supernet, supernet.input_names(), config=config), "val")
        artifact = backend.compile_lm(
            decoder, req.target, staging / ARTIFACT_DIR, buckets=lm_budget(req.target).prompt_buckets,
            tokenizer=loaded.tokenizer,
        )  # fmt: skip
        reason = backend.runs_here()
        parity = artifact_ppl = torch_ppl = None
        if reason is None:
            session = backend.open(artifact)
            prompts = parity_prompts(task.split("test").inputs["tokens"], artifact.spec.longest_prompt)
            report, _ = greedy_parity(TorchSession(decoder), session, artifact, prompts, backend.parity_atol)
            report.raise_if_failed(f"{req.target.backend} LM artifact of {config.id}")
            parity = report.to_json()
            req.say(f"parity: {report.summary()}")
            windows = _windows(task, PERPLEXITY_WINDOWS)
            artifact_ppl = _windows_perplexity(session, windows)
            torch_ppl = _windows_perplexity(TorchSession(decoder), windows)
            fmt = task.metric.format
            req.say(
                f"test {task.metric.name} on {len(windows)} windows through the KV cache: artifact "
                f"{fmt(artifact_ppl)}, torch slice {fmt(torch_ppl)}; whole test split (torch slice): {fmt(test_metric)}"
            )
        else:
            req.say(f"not run here: {reason}")
        return LMBuilt(
            artifact, backend.inspect(artifact), test_metric, next_token.get("next_token_accuracy"), parity,
            artifact_ppl, torch_ppl, reason,
        )  # fmt: skip

    def measure(self, record: RunRecord) -> tuple[GenerationTiming | None, str | None]:
        req, built, chosen, loaded = record.request, record.built, record.chosen, record.loaded
        assert isinstance(built, LMBuilt) and isinstance(chosen, LMChosen) and isinstance(loaded, LMLoaded)
        target, lm = req.target, lm_budget(req.target)
        if built.not_run_reason is not None:
            return None, built.not_run_reason
        if not req.measure:
            return None, "--no-measure"
        if not target.runner.measures_in_process:
            reason = (
                f"generation loops are timed where the artifact runs in this process; {target.name}'s runner is "
                f"{target.runner.kind}, so only parity ran here (on this machine's {target.backend} runtime)"
            )
            req.say(f"not timed: {reason}")
            return None, reason
        spec = built.artifact.spec
        prompt = [i % spec.vocab for i in range(lm.ttft_prompt)]
        session = loaded.backend.open(built.artifact)
        # the same lock every measurement holds: two deploys on one machine would time each other's load
        with measuring(get_runner(target.runner), f"deploy {target.name}"):
            figures, how = time_loops_gated(
                session, prompt, lm.generate_tokens, target.measurement.protocol(), vocab=spec.vocab,
                max_context=spec.max_context, longest=spec.longest_prompt, loops=TIMED_LOOPS,
            )  # fmt: skip
        timing = GenerationTiming(
            **figures, prompt_tokens=len(prompt), generated_tokens=lm.generate_tokens, loops=how["loops"],
            where=f"local ({platform.node()})", relative_standard_error=how["rse"], within_gate=how["within_gate"],
        )  # fmt: skip
        if not how["within_gate"]:
            req.say(
                f"warning: the generation timing stayed noisy: ms/token {how['rse']:.1%} relative standard error "
                f"over {how['loops']} loops, above the target's cv_max {target.measurement.cv_max:.1%}"
            )
        ttft = chosen.latency.ttft(chosen.config)
        generation_ms = chosen.latency.generation_ms_per_token(chosen.config, len(prompt), lm.generate_tokens)
        req.say(
            f"measured TTFT {timing.ttft_ms:.3f} ms (predicted {ttft.ms:.3f}), {timing.ms_per_token:.3f} ms/token "
            f"over the loop (predicted {generation_ms:.3f}), {timing.tokens_per_s:.0f} tokens/s"
        )
        return timing, None

    def settle(self, record: RunRecord) -> dict[str, Any]:
        """Observations per regime (measured vs the table's own prediction), then the budgets: TTFT directly
        (timed at the budget's prompt length), ms/token through the ratio of measured to predicted decode over
        the timed generation."""
        req, chosen, timing = record.request, record.chosen, record.measured
        assert isinstance(chosen, LMChosen)
        block: dict[str, Any] = {
            "corrections": {r: c.to_json() for r, c in record.corrections.items()},
            "reselected": None if record.retry is None else dict(record.retry.first),
            "observations": None,
            "not_measured_reason": record.not_measured,
        }
        if timing is None:
            return block
        target, config = req.target, chosen.config
        table_only = LMLatency(record.loaded.table, record.loaded.supernet, target)
        predicted = {
            "prefill": chosen.latency.ttft(config).ms,
            "decode": chosen.latency.generation_ms_per_token(config, timing.prompt_tokens, timing.generated_tokens),
        }
        table_ms = {
            "prefill": table_only.ttft(config).ms,
            "decode": table_only.generation_ms_per_token(config, timing.prompt_tokens, timing.generated_tokens),
        }
        measured = {"prefill": timing.ttft_ms, "decode": timing.ms_per_token}
        block["observations"] = [
            self._observe(record, r, table_ms[r], predicted[r], measured[r], timing.where) for r in REGIMES
        ]
        over = over_budget(
            target, config.id, timing, predicted, chosen.latency.ms_per_token(config).ms,
            {r: c.factor for r, c in record.corrections.items()},
        )  # fmt: skip
        if over is None:
            return block
        message, factors = over
        if record.retry is not None:
            raise self.reselect_failed(req, record.retry, MeasuredOverBudgetError(message))
        req.say(
            f"{message}: selecting once more with the predictions rescaled by that measurement "
            f"({', '.join(f'{r} x{f:.2f}' for r, f in factors.items())})"
        )
        corrections = {r: Correction(measured_factor=f) for r, f in factors.items()}
        raise Reselect(corrections, {"message": message, "subnet": config.id, "factors": factors})

    def _observe(
        self, record: RunRecord, regime: str, table_ms: float, predicted_ms: float, measured_ms: float, where: str
    ) -> dict[str, Any]:
        req, loaded = record.request, record.loaded
        correction = record.corrections.get(regime)
        obs = Observation(
            date=now_iso(), source="deploy", target=req.target.name, precision=req.target.precision,
            table=req.target.table_path.name, table_identity=table_identity(loaded.table), model=req.variant,
            family=regime_key(loaded.supernet.family, regime), subnet_id=record.chosen.config.id,
            artifact_sha256=record.built.artifact.sha256(), table_prediction_ms=table_ms,
            drift_factor=correction.drift_factor if correction is not None else 1.0,
            corrected_prediction_ms=predicted_ms, measured_ms=measured_ms, where=where,
        )  # fmt: skip
        path = record_observation(obs, observations_path(req.target, req.cache_dir))
        return {"path": str(path), **obs.model_dump()}

    def manifest(self, record: RunRecord) -> LMManifest:
        req, loaded, chosen, built = record.request, record.loaded, record.chosen, record.built
        assert isinstance(loaded, LMLoaded) and isinstance(chosen, LMChosen) and isinstance(built, LMBuilt)
        target, lm, table = req.target, lm_budget(req.target), loaded.table
        choice, latency, spec = chosen.selection.selection.choice, chosen.latency, built.artifact.spec
        ttft, per_token = latency.ttft(choice.config), latency.ms_per_token(choice.config)
        metric, tokenizer, ckpt = loaded.task.metric, loaded.tokenizer, loaded.ckpt
        fits = {k: v.model_dump() for k, v in table.calibration.families.items()} if table.calibration else {}
        assert ckpt.spec is not None
        return LMManifest(
            target=target.name, device=target.device.name, backend=target.backend, precision=target.precision,
            model=req.variant, model_spec=ckpt.spec.model_dump(mode="json", exclude={"path"}),
            subnet=SubnetRecord(id=choice.config.id, config=choice.config.to_json(), params=choice.params),
            checkpoint_sha256=ckpt.sha256,
            artifact=LMArtifactRecord(
                dir=ARTIFACT_DIR, sha256=built.artifact.sha256(), backend=spec.backend, cache=spec.cache,
                prompt_buckets=list(spec.prompt_buckets), max_context=spec.max_context, kv_shape=list(spec.kv_shape),
                files=dict(spec.files), inspection=built.inspection,
            ),
            tokenizer=TokenizerRecord(
                file=tok.FILE, sha256=tokenizer.sha256, vocab=tokenizer.vocab, kind=tokenizer.kind
            ),
            latency=LMLatencyRecord(
                ttft_prompt=lm.ttft_prompt, predicted_ttft_ms=ttft.ms, predicted_ttft_std_ms=ttft.std_ms,
                decode_context=lm.decode_context, predicted_ms_per_token=per_token.ms,
                predicted_ms_per_token_std=per_token.std_ms, predicted_tokens_per_s=1000 / per_token.ms,
                budgets={"ttft_ms": lm.ttft_ms, "ms_per_token": lm.ms_per_token, "max_artifact_mb": lm.max_artifact_mb},
                margins_pct=chosen.selection.margins_pct, method=table.provenance.method, measured=record.measured,
                not_measured_reason=record.not_measured, corrections=latency.corrections,
                reselected_from=None if record.retry is None else record.retry.first.get("subnet"),
                table={
                    "provenance": table.provenance.model_dump(mode="json"),
                    "fits": fits,
                    "validations": {k: v.model_dump() for k, v in table.validations.items()},
                },
            ),
            accuracy=LMMetricRecord(
                name=metric.name, direction=metric.direction, val=choice.accuracy, test=built.test_metric,
                artifact_test=built.artifact_ppl, torch_windows=built.torch_ppl,
                artifact_windows=PERPLEXITY_WINDOWS if built.artifact_ppl else None,
                next_token_accuracy=built.next_token_accuracy, task=loaded.task.describe(),
            ),
            parity=built.parity, not_run_reason=built.not_run_reason, selection=chosen.selection.to_json(),
            versions={**toolchain_versions(), "python": platform.python_version()}, created=now_iso(),
            drift=record.settled,
        )  # fmt: skip

    def package(self, record: RunRecord, manifest: LMManifest | Any, staging: Path) -> list[str]:
        write_report(staging, manifest)
        return [f"{ARTIFACT_DIR}/", "manifest.json", "report.md"]

    def reselect_failed(self, request: DeployRequest, retry: Reselect, second: Exception) -> DeployError:
        name = request.target.name
        return MeasuredOverBudgetError(
            f"{name}: {retry.first['message']}; re-selected with that correction: "
            f"{second if isinstance(second, MeasuredOverBudgetError) else 'no slice fits'}. Nothing was written; "
            f"rebuild the table on this device (elastic-deploy tables build --target {name} --rebuild) "
            f"or raise the lm budgets in targets/{name}.yaml"
        )
