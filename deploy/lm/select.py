"""Selection under language-model budgets: the best slice by the task's metric (perplexity: lowest) whose
predicted time to first token and ms per generated token both fit, each less its own safety margin.

The primary latency of the search (Selection.latency_ms, the Pareto front's axis) is the TTFT at the
target's `ttft_prompt` (the per-token time where the target states no TTFT budget); the other budget, and an
optional artifact size, are `Limit`s beside it (deploy/search/select.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from deploy.errors import NoFeasibleSubnetError
from deploy.latency.table import safety_margin_pct
from deploy.lm.latency import LMLatency, lm_budget, regime_key
from deploy.search.select import Constraints, Limit, Selection, select

if TYPE_CHECKING:
    from deploy.accuracy.model import AccuracyModel
    from deploy.families.base import Supernet
    from deploy.search.space import SubnetConfig
    from deploy.targets import Target

FP32_BYTES = 4


@dataclass(frozen=True)
class LMSelection:
    selection: Selection
    primary: str  # "ttft" or "ms_per_token": what Selection.latency_ms holds
    margins_pct: dict[str, float]  # per regime

    def to_json(self) -> dict[str, Any]:
        return {"primary": self.primary, "margins_pct": self.margins_pct, **self.selection.to_json()}


def artifact_mb(supernet: Supernet, config: SubnetConfig) -> float:
    """fp32 weights of the slice (the graphs hold little else)."""
    return supernet.param_count(config) * FP32_BYTES / 1e6


def _fastest_message(target: Target, supernet: Supernet, latency: LMLatency, margins: dict[str, float]) -> str:
    lm = lm_budget(target)
    fastest = supernet.smallest()  # the fewest layers at the narrowest FFN: fastest in both regimes
    ttft, per_token = latency.ttft(fastest), latency.ms_per_token(fastest)
    wanted = []
    if lm.ttft_ms is not None:
        wanted.append(f"TTFT <= {lm.ttft_ms:g} ms at {lm.ttft_prompt} tokens (less {margins['prefill']:.3g}% margin)")
    if lm.ms_per_token is not None:
        wanted.append(
            f"<= {lm.ms_per_token:g} ms/token at {lm.decode_context} tokens of context "
            f"(less {margins['decode']:.3g}% margin)"
        )
    return (
        f"no {supernet.family} slice of {supernet.variant} meets {' and '.join(wanted)}: the fastest, "
        f"{fastest.id} {fastest}, is predicted at TTFT {ttft.ms:.3g} ms and {per_token.ms:.3g} ms/token; raise "
        f"lm.ttft_ms / lm.ms_per_token in targets/{target.name}.yaml or pick a faster target"
    )


def select_lm(target: Target, supernet: Supernet, accuracy: AccuracyModel, latency: LMLatency) -> LMSelection:
    lm = lm_budget(target)
    table = latency.table
    margins = {r: safety_margin_pct(table, regime_key(supernet.family, r)) for r in ("prefill", "decode")}
    ttft_limit = per_token_limit = None
    if lm.ttft_ms is not None:
        ttft_limit = Limit(
            "ttft_ms", lambda c: latency.ttft(c).ms, lm.ttft_ms * (1 - margins["prefill"] / 100),
            f"TTFT at {lm.ttft_prompt} tokens (ms)",
        )  # fmt: skip
    if lm.ms_per_token is not None:
        per_token_limit = Limit(
            "ms_per_token", lambda c: latency.ms_per_token(c).ms, lm.ms_per_token * (1 - margins["decode"] / 100),
            f"ms/token at {lm.decode_context} tokens of context",
        )  # fmt: skip
    if ttft_limit is not None:
        primary, regime, budget = "ttft", "prefill", lm.ttft_ms

        def primary_fn(c: SubnetConfig) -> tuple[float, float]:
            p = latency.ttft(c)
            return p.ms, p.std_ms
    else:
        primary, regime, budget = "ms_per_token", "decode", lm.ms_per_token

        def primary_fn(c: SubnetConfig) -> tuple[float, float]:
            p = latency.ms_per_token(c)
            return p.ms, p.std_ms

    limits = [per_token_limit] if ttft_limit is not None and per_token_limit is not None else []
    if lm.max_artifact_mb is not None:
        limits.append(Limit("artifact_mb", lambda c: artifact_mb(supernet, c), lm.max_artifact_mb, "size (MB)"))
    assert budget is not None
    constraints = Constraints(budget_ms=budget, margin_pct=margins[regime], max_params=target.max_params)
    try:
        selection = select(
            supernet.space(), primary_fn, accuracy.surrogate, constraints, params=supernet.param_count,
            exact_accuracy=accuracy.exact, known_accuracy=accuracy.known,
            direction=accuracy.oracle.task.metric.direction, limits=limits,
        )  # fmt: skip
    except NoFeasibleSubnetError:
        raise NoFeasibleSubnetError(_fastest_message(target, supernet, latency, margins)) from None
    return LMSelection(selection, primary, margins)
