"""deploy for a language-model target (`lm:` in its YAML): select a slice under its TTFT and per-token budgets,
extract it, compile its KV-cache artifact, check greedy parity and the artifact's own perplexity, time
generation loops, and package dist/<target>/: lm/ (graphs, tokenizer.json, lm.json), manifest.json, report.md.

Everything a wrong input can break is checked before any file is written: the backend's LM support, the
output folder, the checkpoint, its tokenizer (against the sha256 training recorded), the table and its blocks.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploy import workspace
from deploy.accuracy.model import build_accuracy_model
from deploy.accuracy.oracle import EvalOracle, user_cache_path
from deploy.errors import MeasuredOverBudgetError, NoFeasibleSubnetError, TokenizerError
from deploy.export.hub import toolchain_versions
from deploy.export.parity import check_extraction
from deploy.families.base import Supernet
from deploy.latency.table import LatencyTable, now_iso
from deploy.lm import tokenizer as tok
from deploy.lm.artifact import LMArtifact, get_lm_backend
from deploy.lm.generate import TorchSession, teacher_forced_nll, time_loops
from deploy.lm.latency import LMLatency, lm_budget
from deploy.lm.manifest import (
    ARTIFACT_DIR,
    GenerationTiming,
    LMArtifactRecord,
    LMLatencyRecord,
    LMManifest,
    LMMetricRecord,
    TokenizerRecord,
)
from deploy.lm.parity import greedy_parity, parity_prompts
from deploy.lm.select import LMSelection, select_lm
from deploy.models.checkpoint import CheckpointInfo, task_for
from deploy.models.checkpoint import load as load_checkpoint
from deploy.packaging.manifest import SubnetRecord
from deploy.packaging.output import check_output_dir, staged_dir
from deploy.targets import Target
from deploy.tasks.base import predictor

log = logging.getLogger(__name__)

PERPLEXITY_WINDOWS = 16  # test windows scored through the artifact's KV-cache path
TIMED_LOOPS = 10


@dataclass(frozen=True)
class LMDeployResult:
    out_dir: Path
    manifest: LMManifest
    selection: LMSelection


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


class _OverBudget(Exception):  # control flow inside deploy_lm, never shown to a user
    def __init__(self, config_id: str, corrections: dict[str, float], summary: str) -> None:
        super().__init__(summary)
        self.config_id, self.corrections, self.summary = config_id, corrections, summary


def deploy_lm(
    target: Target,
    model: str | None = None,
    *,
    out_dir: Path | None = None,
    measure: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = log.info,
) -> LMDeployResult:
    """Select, compile, check, time and package. A slice measured over a budget is never shipped: the deploy
    selects once more with its predictions rescaled by what that measurement showed, or stops."""
    options: dict[str, Any] = dict(out_dir=out_dir, measure=measure, cache_dir=cache_dir, progress=progress, say=say)
    try:
        return _deploy_lm_once(target, model, **options)
    except _OverBudget as first:
        factors = ", ".join(f"{r} x{f:.2f}" for r, f in first.corrections.items())
        say(f"{first.summary}: selecting once more with the predictions rescaled by that measurement ({factors})")
        try:
            return _deploy_lm_once(target, model, **options, retry=first)
        except (_OverBudget, NoFeasibleSubnetError) as second:
            raise MeasuredOverBudgetError(
                f"{target.name}: {first.summary}; re-selected with that correction: "
                f"{second.summary if isinstance(second, _OverBudget) else 'no slice fits'}. Nothing was written; "
                f"rebuild the table on this device (elastic-deploy tables build --target {target.name} --rebuild) "
                f"or raise the lm budgets in targets/{target.name}.yaml"
            ) from None


def _why_not_timed(target: Target, measure: bool, reason: str | None) -> str:
    if reason is not None:
        return reason
    if not measure:
        return "--no-measure"
    return (
        f"generation loops are timed where the artifact runs in this process; {target.name}'s runner is "
        f"{target.runner.kind}, so only parity ran here (on this machine's {target.backend} runtime)"
    )


def _over_budget(
    target: Target, config_id: str, timing: GenerationTiming, ttft_ms: float, per_token_ms: float,
    generation_ms: float, corrections: dict[str, float],
) -> _OverBudget | None:  # fmt: skip
    """The measured loop against the budgets: TTFT directly (it is timed at the budget's prompt length), the
    per-token time through the ratio of measured to predicted decode over the timed generation."""
    lm = lm_budget(target)
    ratios = {"prefill": timing.ttft_ms / ttft_ms, "decode": timing.ms_per_token / generation_ms}
    over = []
    if lm.ttft_ms is not None and timing.ttft_ms > lm.ttft_ms:
        over.append(f"TTFT {timing.ttft_ms:.3f} ms (predicted {ttft_ms:.3f}) > {lm.ttft_ms:g} ms budget")
    implied = per_token_ms * ratios["decode"]
    if lm.ms_per_token is not None and implied > lm.ms_per_token:
        over.append(
            f"{implied:.3f} ms/token at {lm.decode_context} of context (from {timing.ms_per_token:.3f} measured "
            f"vs {generation_ms:.3f} predicted over the loop) > {lm.ms_per_token:g} ms/token budget"
        )
    if not over:
        return None
    factors = {r: corrections.get(r, 1.0) * ratios[r] for r in ratios}
    return _OverBudget(config_id, factors, f"slice {config_id} measured {' and '.join(over)}")


def _deploy_lm_once(
    target: Target,
    model: str | None = None,
    *,
    out_dir: Path | None = None,
    measure: bool = True,
    cache_dir: Path | None = None,
    progress: bool = True,
    say: Callable[[str], None] = log.info,
    retry: _OverBudget | None = None,
) -> LMDeployResult:
    lm = lm_budget(target)
    backend = get_lm_backend(target.backend)  # a backend without LM support fails before anything else
    variant = model or target.model
    out_dir = check_output_dir(out_dir or workspace.dist_dir() / target.name)
    supernet, ckpt = load_checkpoint(variant)
    supernet.eval()
    tokenizer = checkpoint_tokenizer(ckpt, supernet)
    task = task_for(ckpt)
    table = LatencyTable.load(target.table_path, target.name)
    if table.provenance.method != "measured" and retry is None:
        say(f"{table.provenance.method.upper()} latency table for {target.name}: {table.provenance.estimation or ''}")
    table.require_calibration()
    corrections = retry.corrections if retry else {}
    latency = LMLatency(table, supernet, target, corrections)
    accuracy = build_accuracy_model(supernet, ckpt, progress=progress)
    chosen = select_lm(target, supernet, accuracy, latency)
    choice = chosen.selection.choice
    config, metric = choice.config, task.metric
    ttft, per_token = latency.ttft(config), latency.ms_per_token(config)
    say(
        f"selected {config.id} {config}: predicted TTFT {ttft.ms:.3f} ms at {lm.ttft_prompt} tokens, "
        f"{per_token.ms:.3f} ms/token at {lm.decode_context} of context ({1000 / per_token.ms:.0f} tokens/s); "
        f"val {metric.name} {metric.format(choice.accuracy)}"
    )
    check_extraction(supernet, config)
    decoder = supernet.extract(config)
    test_metric = EvalOracle(supernet, task, "test", user_cache_path(variant, ckpt.sha256, "test"), ckpt.sha256)(config)
    next_token = task.extra_metrics(predictor(supernet, supernet.input_names(), config=config), "val")
    with staged_dir(out_dir) as staging:
        artifact = backend.compile_lm(
            decoder, target, staging / ARTIFACT_DIR, buckets=lm.prompt_buckets, tokenizer=tokenizer
        )
        reason = backend.runs_here()
        parity = artifact_ppl = torch_ppl = timing = None
        if reason is None:
            session = backend.open(artifact)
            prompts = parity_prompts(task.split("test").inputs["tokens"], artifact.spec.longest_prompt)
            report, _ = greedy_parity(TorchSession(decoder), session, artifact, prompts, backend.parity_atol)
            report.raise_if_failed(f"{target.backend} LM artifact of {config.id}")
            parity = report.to_json()
            say(f"parity: {report.summary()}")
            windows = _windows(task, PERPLEXITY_WINDOWS)
            artifact_ppl = _windows_perplexity(session, windows)
            torch_ppl = _windows_perplexity(TorchSession(decoder), windows)
            say(f"test {metric.name} on {len(windows)} windows through the KV cache: artifact "
                f"{metric.format(artifact_ppl)}, torch slice {metric.format(torch_ppl)}; whole test split "
                f"(torch slice): {metric.format(test_metric)}")  # fmt: skip
            if measure and target.runner.kind == "local":
                spec = artifact.spec
                prompt = [i % spec.vocab for i in range(lm.ttft_prompt)]
                figures = time_loops(session, prompt, lm.generate_tokens, TIMED_LOOPS, vocab=spec.vocab,
                                     max_context=spec.max_context, longest=spec.longest_prompt)  # fmt: skip
                timing = GenerationTiming(**figures, prompt_tokens=len(prompt), generated_tokens=lm.generate_tokens,
                                          loops=TIMED_LOOPS, where=f"local ({platform.node()})")  # fmt: skip
                generation_ms = latency.generation_ms_per_token(config, len(prompt), lm.generate_tokens)
                say(f"measured TTFT {timing.ttft_ms:.3f} ms (predicted {ttft.ms:.3f}), {timing.ms_per_token:.3f} "
                    f"ms/token over the loop (predicted {generation_ms:.3f}), "
                    f"{timing.tokens_per_s:.0f} tokens/s")  # fmt: skip
                over = _over_budget(target, config.id, timing, ttft.ms, per_token.ms, generation_ms, corrections)
                if over is not None:
                    raise over  # nothing is written: the staging folder is dropped
            elif measure:
                say(f"not timed: {_why_not_timed(target, measure, None)}")
        else:
            say(f"not run here: {reason}")
        manifest = _manifest(
            target, variant, ckpt, supernet, artifact, backend.inspect(artifact), tokenizer, chosen, latency,
            timing, None if timing else _why_not_timed(target, measure, reason), table,
            metric_record=LMMetricRecord(
                name=metric.name, direction=metric.direction, val=choice.accuracy, test=test_metric,
                artifact_test=artifact_ppl, torch_windows=torch_ppl,
                artifact_windows=PERPLEXITY_WINDOWS if artifact_ppl else None,
                next_token_accuracy=next_token.get("next_token_accuracy"), task=task.describe(),
            ),
            parity=parity, not_run_reason=reason, reselected_from=retry.config_id if retry else None,
        )  # fmt: skip
        manifest.save(staging)
        (staging / "report.md").write_text(report_md(manifest))
    say(f"wrote {out_dir}/ ({ARTIFACT_DIR}/, manifest.json, report.md)")
    return LMDeployResult(out_dir, manifest, chosen)


def _manifest(
    target: Target, variant: str, ckpt: CheckpointInfo, supernet: Supernet, artifact: LMArtifact,
    inspection: dict[str, Any], tokenizer: tok.ByteTokenizer, chosen: LMSelection, latency: LMLatency,
    timing: GenerationTiming | None, not_measured: str | None, table: LatencyTable, *, metric_record: LMMetricRecord,
    parity: dict[str, Any] | None, not_run_reason: str | None, reselected_from: str | None = None,
) -> LMManifest:  # fmt: skip
    lm, choice = lm_budget(target), chosen.selection.choice
    ttft, per_token = latency.ttft(choice.config), latency.ms_per_token(choice.config)
    spec = artifact.spec
    assert ckpt.spec is not None
    return LMManifest(
        target=target.name, device=target.device.name, backend=target.backend, precision=target.precision,
        model=variant, model_spec=ckpt.spec.model_dump(mode="json", exclude={"path"}),
        subnet=SubnetRecord(id=choice.config.id, config=choice.config.to_json(), params=choice.params),
        checkpoint_sha256=ckpt.sha256,
        artifact=LMArtifactRecord(
            dir=ARTIFACT_DIR, sha256=artifact.sha256(), backend=spec.backend, cache=spec.cache,
            prompt_buckets=list(spec.prompt_buckets), max_context=spec.max_context, kv_shape=list(spec.kv_shape),
            files=dict(spec.files), inspection=inspection,
        ),
        tokenizer=TokenizerRecord(file=tok.FILE, sha256=tokenizer.sha256, vocab=tokenizer.vocab, kind=tokenizer.kind),
        latency=LMLatencyRecord(
            ttft_prompt=lm.ttft_prompt, predicted_ttft_ms=ttft.ms, predicted_ttft_std_ms=ttft.std_ms,
            decode_context=lm.decode_context, predicted_ms_per_token=per_token.ms,
            predicted_ms_per_token_std=per_token.std_ms, predicted_tokens_per_s=1000 / per_token.ms,
            budgets={"ttft_ms": lm.ttft_ms, "ms_per_token": lm.ms_per_token, "max_artifact_mb": lm.max_artifact_mb},
            margins_pct=chosen.margins_pct, method=table.provenance.method, measured=timing,
            not_measured_reason=not_measured, corrections=latency.corrections, reselected_from=reselected_from,
            table={
                "provenance": table.provenance.model_dump(mode="json"),
                "fits": {k: v.model_dump() for k, v in table.calibration.families.items()} if table.calibration else {},
                "validations": {k: v.model_dump() for k, v in table.validations.items()},
            },
        ),
        accuracy=metric_record, parity=parity, not_run_reason=not_run_reason, selection=chosen.to_json(),
        versions={**toolchain_versions(), "python": platform.python_version()}, created=now_iso(),
    )  # fmt: skip


def report_md(m: LMManifest) -> str:
    lat, acc = m.latency, m.accuracy
    measured = (
        f"{lat.measured.ttft_ms:.3f} ms TTFT, {lat.measured.ms_per_token:.3f} ms/token, "
        f"{lat.measured.tokens_per_s:.0f} tokens/s ({lat.measured.loops} loops on {lat.measured.where})"
        if lat.measured
        else f"not measured ({lat.not_measured_reason})"
    )
    rows = [
        f"# {m.model} on {m.target}: slice {m.subnet.id}",
        "",
        "| | |",
        "|---|---|",
        f"| slice | {m.subnet.config['choices']} ({m.subnet.params} params) |",
        f"| artifact | `{m.artifact.dir}/` ({m.backend}, {m.artifact.cache} KV cache, max context "
        f"{m.artifact.max_context}, prompt buckets {m.artifact.prompt_buckets}) |",
        f"| predicted ({lat.method} table) | TTFT {lat.predicted_ttft_ms:.3f} ± {lat.predicted_ttft_std_ms:.3f} ms at "
        f"{lat.ttft_prompt} tokens; {lat.predicted_ms_per_token:.3f} ms/token at {lat.decode_context} of context |",
        f"| budgets | {lat.budgets} (margins {lat.margins_pct}) |",
        *(
            [f"| re-selected | {lat.reselected_from} measured over a budget; predictions rescaled {lat.corrections} |"]
            if lat.reselected_from
            else []
        ),
        f"| measured | {measured} |",
        f"| {acc.name} ({acc.direction} is better) | torch slice: val {acc.val:.4g}, test {acc.test:.4g}; on "
        f"{acc.artifact_windows or 'no'} test windows through the KV cache: artifact "
        f"{'n/a' if acc.artifact_test is None else f'{acc.artifact_test:.4g}'}, torch slice "
        f"{'n/a' if acc.torch_windows is None else f'{acc.torch_windows:.4g}'}; next-token accuracy "
        f"{'n/a' if acc.next_token_accuracy is None else f'{acc.next_token_accuracy:.1%}'} |",
        f"| parity | {m.parity['identical'] if m.parity else 'n/a'} of {m.parity['prompts'] if m.parity else 'n/a'} "
        f"prompts identical, max logit diff {m.parity['max_abs_logit_diff'] if m.parity else 'n/a'} |",
        "",
        f'Run it: `elastic-deploy generate --dist dist/{m.target} "def main("`',
    ]
    return "\n".join(rows) + "\n"
