"""Selector: exhaustive and evolutionary search under latency, margin and parameter constraints."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest

from deploy.errors import NoFeasibleSubnetError, UnknownNameError
from deploy.models import build
from deploy.search.select import (
    Candidate,
    Constraints,
    EvolutionParams,
    Selection,
    pareto_front,
    select,
)
from deploy.search.space import SearchSpace, SubnetConfig


@pytest.fixture(scope="module")
def tiny_space() -> SearchSpace:
    return build("matformer_vit_tiny").space()


@pytest.fixture(scope="module")
def mnist_space() -> SearchSpace:
    return build("matformer_vit_mnist").space()


def _min_width(config: SubnetConfig) -> int:
    # Both variants' smallest width is ffn_max/8; the tiny one is 8, the mnist one 128.
    return 8 if max(config["ffn"]) <= 64 else 128  # type: ignore[type-var]


def latency_fn(config: SubnetConfig) -> tuple[float, float]:
    """Linear in width and depth: wide layers cost more than they give back (see accuracy_fn)."""
    wmin = _min_width(config)
    ms = 0.05 + sum(0.02 + 0.01 * w / wmin for w in config["ffn"])  # type: ignore[union-attr]
    return ms, 0.05 * ms


def accuracy_fn(config: SubnetConfig) -> float:
    """Monotone in width and depth with diminishing returns; later layers count a little more."""
    wmin = _min_width(config)
    layers, ffn = config["layers"], config["ffn"]
    capacity = sum(
        (1 + 0.13 * i) * math.log2(1 + w / wmin)
        for i, w in zip(layers, ffn, strict=True)  # type: ignore[arg-type]
    )
    return 1 - 0.5 * math.exp(-capacity / 4)


def params_fn(config: SubnetConfig) -> int:
    return 1000 + sum(100 * w for w in config["ffn"])  # type: ignore[union-attr]


def brute_force(space: SearchSpace, budget_ms: float, max_params: int | None = None) -> SubnetConfig:
    best = None
    for config in space.enumerate():
        ms, _ = latency_fn(config)
        if ms > budget_ms or (max_params is not None and params_fn(config) > max_params):
            continue
        key = (-accuracy_fn(config), ms, config.id)
        if best is None or key < best[0]:
            best = (key, config)
    assert best is not None
    return best[1]


def counting(fn: Callable[[SubnetConfig], tuple[float, float]]) -> tuple[Callable, list[int]]:
    calls = [0]

    def wrapped(config: SubnetConfig) -> tuple[float, float]:
        calls[0] += 1
        return fn(config)

    return wrapped, calls


def _budgets(space: SearchSpace) -> list[float]:
    lat = [latency_fn(c)[0] for c in space.enumerate()]
    lo, hi = min(lat), max(lat)
    return [lo + (hi - lo) * f for f in (0.05, 0.2, 0.4, 0.6, 0.9)]


def test_exhaustive_matches_brute_force_optimum(tiny_space: SearchSpace) -> None:
    for budget in _budgets(tiny_space):
        sel = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget), method="exhaustive")
        assert sel.choice.config == brute_force(tiny_space, budget)
        assert sel.choice.latency_ms <= budget
        assert sel.evaluated == sel.space_size == tiny_space.size() == 124


def test_auto_picks_exhaustive_when_space_small_and_evolutionary_when_not(tiny_space: SearchSpace) -> None:
    budget = _budgets(tiny_space)[2]
    small = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget))
    large = select(
        tiny_space,
        latency_fn,
        accuracy_fn,
        Constraints(budget),
        exhaustive_limit=100,
        evolution=EvolutionParams(population=8, generations=3, parents=2),
    )
    assert small.method == "exhaustive"
    assert large.method == "evolutionary"
    assert large.evaluated < small.evaluated


def test_evolutionary_equals_exhaustive_on_small_space(tiny_space: SearchSpace) -> None:
    params = EvolutionParams(population=16, generations=10, parents=4, seed=3)
    for budget in _budgets(tiny_space):
        exact = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget), method="exhaustive")
        evo = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget), method="evolutionary", evolution=params)
        assert evo.choice.config == exact.choice.config


def test_evolutionary_within_small_gap_of_exhaustive_on_mnist_space(mnist_space: SearchSpace) -> None:
    for budget in _budgets(mnist_space)[1:4]:
        exact = select(mnist_space, latency_fn, accuracy_fn, Constraints(budget), method="exhaustive")
        evo = select(mnist_space, latency_fn, accuracy_fn, Constraints(budget), method="evolutionary")
        assert exact.evaluated == 15_624
        assert evo.evaluated < 2000
        assert evo.choice.latency_ms <= budget
        assert exact.choice.accuracy - evo.choice.accuracy < 0.005  # under half a percentage point


def test_evolutionary_is_deterministic_per_seed(mnist_space: SearchSpace) -> None:
    budget = _budgets(mnist_space)[2]
    params = EvolutionParams(population=24, generations=6, parents=6, seed=11)

    def run(p: EvolutionParams) -> Selection:
        return select(mnist_space, latency_fn, accuracy_fn, Constraints(budget), method="evolutionary", evolution=p)

    a, b = run(params), run(params)
    other = run(EvolutionParams(population=24, generations=6, parents=6, seed=12))
    assert a.choice == b.choice
    assert a.seen == b.seen and a.front == b.front
    assert {c.config for c in a.seen} != {c.config for c in other.seen}


def test_evolutionary_scores_at_most_the_generation_bound(mnist_space: SearchSpace) -> None:
    budget = _budgets(mnist_space)[2]
    for params in (
        EvolutionParams(population=20, generations=0, parents=5),
        EvolutionParams(population=20, generations=5, parents=5),
    ):
        latency, calls = counting(latency_fn)
        sel = select(mnist_space, latency, accuracy_fn, Constraints(budget), method="evolutionary", evolution=params)
        assert calls[0] == sel.evaluated <= params.max_evaluations()
        if params.generations:
            assert sel.evaluated > params.population  # later generations did add new configs


def test_margin_shrinks_effective_budget_and_flips_choice(tiny_space: SearchSpace) -> None:
    budget = _budgets(tiny_space)[2]
    loose = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget))
    constraints = Constraints(budget, margin_pct=20)
    tight = select(tiny_space, latency_fn, accuracy_fn, constraints)
    assert constraints.effective_budget_ms == pytest.approx(budget * 0.8)
    assert loose.choice.latency_ms > constraints.effective_budget_ms  # the margin excludes it
    assert tight.choice.latency_ms <= constraints.effective_budget_ms
    assert tight.choice.config == brute_force(tiny_space, budget * 0.8)
    assert tight.choice.accuracy < loose.choice.accuracy


def test_max_params_excludes_larger_subnets(tiny_space: SearchSpace) -> None:
    budget = _budgets(tiny_space)[4]
    free = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget), params=params_fn)
    cap = free.choice.params - 1  # type: ignore[operator]
    capped = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget, max_params=cap), params=params_fn)
    assert capped.choice.params is not None and capped.choice.params <= cap
    assert capped.choice.config == brute_force(tiny_space, budget, max_params=cap)
    assert capped.choice.accuracy < free.choice.accuracy


def test_max_params_without_params_function_raises(tiny_space: SearchSpace) -> None:
    with pytest.raises(ValueError, match="params function"):
        select(tiny_space, latency_fn, accuracy_fn, Constraints(1.0, max_params=10))


def test_infeasible_budget_raises_naming_fastest_latency(tiny_space: SearchSpace) -> None:
    fastest = min(tiny_space.enumerate(), key=lambda c: latency_fn(c)[0])
    ms = latency_fn(fastest)[0]
    for method in ("exhaustive", "evolutionary"):
        with pytest.raises(NoFeasibleSubnetError) as err:
            select(
                tiny_space,
                latency_fn,
                accuracy_fn,
                Constraints(ms * 0.9, margin_pct=10),
                method=method,
                evolution=EvolutionParams(population=40, generations=10, parents=8),
            )
        message = str(err.value)
        assert f"{ms:.4g} ms" in message
        assert fastest.id in message
        assert "10% margin" in message and "raise the budget" in message
        assert "\n" not in message


def test_infeasible_params_cap_names_smallest_subnet(tiny_space: SearchSpace) -> None:
    with pytest.raises(NoFeasibleSubnetError, match="raise max_params") as err:
        select(tiny_space, latency_fn, accuracy_fn, Constraints(10.0, max_params=100), params=params_fn)
    assert "1800 params" in str(err.value)  # one kept layer of width 8: 1000 + 100 * 8


def test_finalists_rescored_with_exact_accuracy_change_choice(tiny_space: SearchSpace) -> None:
    budget = _budgets(tiny_space)[2]
    surrogate = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget))
    misleading = surrogate.choice.config

    def exact(config: SubnetConfig) -> float:
        # The surrogate's favourite is really poor; every other config is as the surrogate says.
        return 0.1 if config == misleading else accuracy_fn(config)

    calls = [0]

    def counted_exact(config: SubnetConfig) -> float:
        calls[0] += 1
        return exact(config)

    sel = select(tiny_space, latency_fn, accuracy_fn, Constraints(budget), exact_accuracy=counted_exact, finalists=4)
    assert calls[0] == 4
    assert sel.choice.config != misleading
    assert sel.choice.accuracy_source == "exact"
    assert sel.choice.accuracy == pytest.approx(exact(sel.choice.config))
    feasible = [c for c in tiny_space.enumerate() if latency_fn(c)[0] <= budget and c != misleading]
    assert sel.choice.accuracy == pytest.approx(max(accuracy_fn(c) for c in feasible))
    assert surrogate.choice.accuracy_source == "surrogate"


def test_pareto_front_is_non_dominated_and_covers_seen(tiny_space: SearchSpace) -> None:
    sel = select(tiny_space, latency_fn, accuracy_fn, Constraints(_budgets(tiny_space)[2]))
    front = sel.front
    assert [c.latency_ms for c in front] == sorted(c.latency_ms for c in front)
    for a in front:
        for b in front:
            assert not (b is not a and b.latency_ms <= a.latency_ms and b.accuracy >= a.accuracy)
    for c in sel.seen:  # everything seen is matched or beaten by a front member
        assert any(f.latency_ms <= c.latency_ms and f.accuracy >= c.accuracy for f in front)


def test_pareto_front_drops_dominated_candidates() -> None:
    def cand(i: int, ms: float, acc: float) -> Candidate:
        config = SubnetConfig.make("toy", {"i": i})
        return Candidate(config, ms, 0.0, acc, "surrogate", None)

    a, b, c, d = cand(0, 1.0, 0.5), cand(1, 2.0, 0.7), cand(2, 2.5, 0.6), cand(3, 3.0, 0.7)
    assert pareto_front([d, c, b, a]) == (a, b)


def test_selection_json_round_trips(tiny_space: SearchSpace) -> None:
    sel = select(
        tiny_space,
        latency_fn,
        accuracy_fn,
        Constraints(_budgets(tiny_space)[2], margin_pct=5),
        params=params_fn,
    )
    data = json.loads(json.dumps(sel.to_json()))
    assert data["choice"]["id"] == sel.choice.config.id
    assert SubnetConfig.from_json(data["choice"]["config"]) == sel.choice.config
    assert data["constraints"]["effective_budget_ms"] == pytest.approx(sel.constraints.effective_budget_ms)
    assert len(data["seen"]) == sel.evaluated == 124
    assert data["feasible"] == sel.feasible > 0


def test_unknown_method_raises_listing_known(tiny_space: SearchSpace) -> None:
    with pytest.raises(UnknownNameError, match="exhaustive"):
        select(tiny_space, latency_fn, accuracy_fn, Constraints(1.0), method="random")


def test_seen_sample_keeps_every_finalist_when_space_is_large(mnist_space: SearchSpace) -> None:
    lo, hi = latency_fn(build("matformer_vit_mnist").smallest())[0], 4.0
    sel = select(
        mnist_space,
        latency_fn,
        accuracy_fn,
        Constraints(budget_ms=(lo + hi) / 2),
        exact_accuracy=lambda c: accuracy_fn(c) - 0.001,
        finalists=8,
    )
    exact = [c for c in sel.seen if c.accuracy_source == "exact"]
    assert len(sel.seen) <= 2000 < sel.evaluated
    assert sel.rescoring is not None and len(exact) == sel.rescoring.evaluated >= 8 and sel.choice in exact


def _overrated(space: SearchSpace, budget: float, n: int) -> tuple[list[SubnetConfig], SubnetConfig]:
    """The n feasible configs a misled surrogate ranks first (really poor), and the real best feasible one."""
    feasible = sorted(
        (c for c in space.enumerate() if latency_fn(c)[0] <= budget), key=lambda c: (-accuracy_fn(c), c.id)
    )
    return feasible[1 : n + 1], feasible[0]


def test_known_real_accuracy_is_never_beaten_by_an_unevaluated_guess(tiny_space: SearchSpace) -> None:
    budget = _budgets(tiny_space)[4]
    bad, best = _overrated(tiny_space, budget, 40)
    boosted = {c.id for c in bad}

    def surrogate(config: SubnetConfig) -> float:
        return 2.0 if config.id in boosted else accuracy_fn(config) - 0.5  # the best one is underrated

    def exact(config: SubnetConfig) -> float:
        return 0.2 if config.id in boosted else accuracy_fn(config)

    known = {best.id: accuracy_fn(best)}
    sel = select(
        tiny_space, latency_fn, surrogate, Constraints(budget), exact_accuracy=exact,
        known_accuracy=lambda c: known.get(c.id), finalists=8, max_finalists=8,
    )  # fmt: skip
    assert sel.choice.config == best and sel.choice.accuracy_source == "exact"
    assert sel.rescoring is not None and sel.rescoring.known_exact == 1 and not sel.rescoring.stable


def test_rescoring_widens_until_the_best_real_candidate_is_stable(tiny_space: SearchSpace) -> None:
    budget = _budgets(tiny_space)[4]
    bad, best = _overrated(tiny_space, budget, 20)
    boosted = {c.id for c in bad}
    evaluated: list[str] = []

    def surrogate(config: SubnetConfig) -> float:
        return accuracy_fn(config) + (1.0 if config.id in boosted else 0.0)

    def exact(config: SubnetConfig) -> float:
        evaluated.append(config.id)
        return 0.2 if config.id in boosted else accuracy_fn(config)

    sel = select(tiny_space, latency_fn, surrogate, Constraints(budget), exact_accuracy=exact, finalists=8)
    assert sel.choice.config == best, "the 21st guess is the real best: 8, 16 then 32 are evaluated"
    assert sel.rescoring is not None and sel.rescoring.stable and sel.rescoring.rounds == 3
    assert len(evaluated) == len(set(evaluated)) == 32
    assert sel.to_json()["rescoring"]["evaluated"] == 32


def test_rescoring_stops_at_its_bound_and_says_so(tiny_space: SearchSpace) -> None:
    budget = _budgets(tiny_space)[4]
    bad, _ = _overrated(tiny_space, budget, 40)
    boosted = {c.id for c in bad}
    calls = [0]

    def exact(config: SubnetConfig) -> float:
        calls[0] += 1
        return 0.2 if config.id in boosted else accuracy_fn(config)

    sel = select(
        tiny_space, latency_fn, lambda c: accuracy_fn(c) + (1.0 if c.id in boosted else 0.0), Constraints(budget),
        exact_accuracy=exact, finalists=8, max_finalists=16,
    )  # fmt: skip
    assert calls[0] == 16 and sel.rescoring is not None and not sel.rescoring.stable
    assert sel.rescoring.front_exact_share < 1, "guesses the bound left unevaluated are still on the front"
