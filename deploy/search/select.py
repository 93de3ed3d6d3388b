"""Search under constraints: the most accurate subnet whose predicted latency fits the budget.

Pure: the caller passes the space, a latency predictor, an accuracy function and the constraints;
nothing here reads files or measures. Small spaces are scored exhaustively; large ones by a bounded,
seeded evolutionary search over gene vectors. An optional exact accuracy re-scores a few finalists,
so a cheap surrogate only has to rank, not to be right.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deploy.errors import NoFeasibleSubnetError, UnknownNameError
from deploy.search.space import Genes, SearchSpace, SubnetConfig

log = logging.getLogger(__name__)

LatencyFn = Callable[[SubnetConfig], tuple[float, float]]  # (predicted ms, std ms)
AccuracyFn = Callable[[SubnetConfig], float]
KnownFn = Callable[[SubnetConfig], float | None]  # a real accuracy already known (cached), else None
ParamsFn = Callable[[SubnetConfig], int]

METHODS = ("auto", "exhaustive", "evolutionary")
ACCURACY_SOURCES = ("exact", "surrogate")
MAX_FINALISTS = 128  # re-scoring widens 8, 16, 32, … up to this many real evaluations
MAX_SEEN = 2000  # candidates kept in Selection.seen: enough for a scatter plot, small in a manifest
# Bounded retries for a child that is not new: revisiting known genes wastes a generation's slot.
NOVELTY_TRIES = 8
SWAP_SHARE = 0.5  # of mutations that first swap two same-option genes


@dataclass(frozen=True)
class Constraints:
    budget_ms: float
    margin_pct: float = 0.0  # derived by the caller from the latency table's validation error
    max_params: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget_ms) and self.budget_ms > 0):
            raise ValueError(f"budget_ms must be a positive number of milliseconds, got {self.budget_ms}")
        if not 0 <= self.margin_pct < 100:
            raise ValueError(f"margin_pct must be in [0, 100), got {self.margin_pct}")
        if self.max_params is not None and self.max_params <= 0:
            raise ValueError(f"max_params must be positive or None, got {self.max_params}")

    @property
    def effective_budget_ms(self) -> float:
        return self.budget_ms * (1 - self.margin_pct / 100)

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_ms": self.budget_ms,
            "margin_pct": self.margin_pct,
            "effective_budget_ms": self.effective_budget_ms,
            "max_params": self.max_params,
        }


@dataclass(frozen=True)
class Limit:
    """A constraint beside the primary latency (a language model's ms per token beside its TTFT): a value per
    config that must not exceed `budget` (already less its margin). `label` says it in messages."""

    name: str  # e.g. "ms_per_token@128"
    value: Callable[[SubnetConfig], float]
    budget: float
    label: str = ""  # e.g. "ms per token at 128 tokens of context"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"limit {self.name} needs a positive budget, got {self.budget}")


@dataclass(frozen=True)
class Candidate:
    config: SubnetConfig
    latency_ms: float
    latency_std_ms: float
    accuracy: float
    accuracy_source: str  # "exact" | "surrogate"
    params: int | None
    limits: tuple[tuple[str, float], ...] = ()  # the value of each Limit, by name

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.config.id,
            "config": self.config.to_json(),
            "latency_ms": self.latency_ms,
            "latency_std_ms": self.latency_std_ms,
            "accuracy": self.accuracy,
            "accuracy_source": self.accuracy_source,
            "params": self.params,
            **({"limits": dict(self.limits)} if self.limits else {}),
        }


@dataclass(frozen=True)
class EvolutionParams:
    population: int = 64
    generations: int = 30
    parents: int = 16
    mutation_prob: float = 0.2
    crossover_share: float = 0.5  # share of each generation's children made by crossover
    seed: int = 0

    def __post_init__(self) -> None:
        if self.population < 2 or not 1 <= self.parents < self.population:
            raise ValueError(
                f"evolution needs population >= 2 and 1 <= parents < population, "
                f"got population={self.population} parents={self.parents}"
            )
        if self.generations < 0:
            raise ValueError(f"generations must be >= 0, got {self.generations}")
        if not (0 <= self.mutation_prob <= 1 and 0 <= self.crossover_share <= 1):
            raise ValueError("mutation_prob and crossover_share must be in [0, 1]")

    def max_evaluations(self) -> int:
        """Upper bound on distinct configs one run scores."""
        return self.population + self.generations * (self.population - self.parents)


@dataclass(frozen=True)
class Rescoring:
    """How the choice was confirmed with real accuracies: surrogate guesses re-scored in widening rounds."""

    known_exact: int  # feasible candidates whose real accuracy was already known (the cache)
    evaluated: int  # surrogate-ranked finalists evaluated for real
    rounds: int
    stable: bool  # no guess left claims more than the choice's real accuracy, or a widening kept the choice
    front_exact_share: float  # share of the feasible Pareto front whose accuracy is real, not a guess

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Selection:
    choice: Candidate
    front: tuple[Candidate, ...]  # Pareto front of everything seen (low latency, high accuracy)
    seen: tuple[Candidate, ...]  # a bounded sample of what was scored, for plotting
    method: str
    space_size: int
    evaluated: int
    feasible: int
    elapsed_s: float
    constraints: Constraints
    rescoring: Rescoring | None = None
    direction: str = "higher"  # of the metric in `accuracy` (the task's): "lower" for perplexity or loss

    def to_json(self) -> dict[str, Any]:
        return {
            "choice": self.choice.to_json(),
            "method": self.method,
            "space_size": self.space_size,
            "evaluated": self.evaluated,
            "feasible": self.feasible,
            "elapsed_s": self.elapsed_s,
            "constraints": self.constraints.to_json(),
            "rescoring": None if self.rescoring is None else self.rescoring.to_json(),
            "direction": self.direction,
            "front": [c.to_json() for c in self.front],
            "seen": [c.to_json() for c in self.seen],
        }


def pareto_front(candidates: Iterable[Candidate], sign: float = 1.0) -> tuple[Candidate, ...]:
    """Candidates no other beats on both latency (lower) and the metric (higher; lower where sign is −1),
    sorted by latency."""
    ordered = sorted(candidates, key=lambda c: (c.latency_ms, -sign * c.accuracy, c.config.id))
    front: list[Candidate] = []
    for cand in ordered:
        if not front or sign * cand.accuracy > sign * front[-1].accuracy:
            front.append(cand)
    return tuple(front)


class _Scorer:
    """Scores configs once each (memoised by config) and judges them against the constraints."""

    def __init__(
        self,
        latency: LatencyFn,
        accuracy: AccuracyFn,
        params: ParamsFn | None,
        constraints: Constraints,
        accuracy_source: str,
        known: KnownFn | None = None,
        sign: float = 1.0,
        limits: Sequence[Limit] = (),
    ) -> None:
        self.sign = sign
        self.limits = tuple(limits)
        self.latency, self.accuracy, self.params = latency, accuracy, params
        self.constraints = constraints
        self.source = accuracy_source
        self.known = known
        self.cache: dict[SubnetConfig, Candidate] = {}

    def __call__(self, config: SubnetConfig) -> Candidate:
        cand = self.cache.get(config)
        if cand is None:
            ms, std = self.latency(config)
            real = self.known(config) if self.known is not None else None
            cand = Candidate(
                config=config,
                latency_ms=float(ms),
                latency_std_ms=float(std),
                accuracy=float(self.accuracy(config) if real is None else real),
                accuracy_source=self.source if real is None else "exact",
                params=None if self.params is None else int(self.params(config)),
                limits=tuple((lim.name, float(lim.value(config))) for lim in self.limits),
            )
            self.cache[config] = cand
        return cand

    def violation(self, cand: Candidate) -> float:
        """Relative amount by which a candidate breaks the constraints; 0 when feasible."""
        c = self.constraints
        excess = max(0.0, cand.latency_ms / c.effective_budget_ms - 1)
        if c.max_params is not None and cand.params is not None:
            excess += max(0.0, cand.params / c.max_params - 1)
        values = dict(cand.limits)
        for lim in self.limits:
            excess += max(0.0, values[lim.name] / lim.budget - 1)
        return excess

    def feasible(self, cand: Candidate) -> bool:
        return self.violation(cand) == 0.0


def _rank_key(cand: Candidate, sign: float = 1.0) -> tuple[float, float, str]:
    # Best metric first (sign −1: lowest first); a tie goes to the faster subnet; the id makes ties deterministic.
    return (-sign * cand.accuracy, cand.latency_ms, cand.config.id)


def _exhaustive(space: SearchSpace, score: _Scorer) -> None:
    for config in space.enumerate():
        score(config)


def _swap(space: SearchSpace, genes: Genes, rng: np.random.Generator) -> Genes:
    """Exchange the values of two genes that share their options (e.g. which layer is skipped).

    Per-gene mutation rarely makes such a two-gene move, yet it is often what crosses a budget ridge.
    """
    i, j = (int(k) for k in rng.choice(len(genes), size=2, replace=False))
    if space.genes[i].options != space.genes[j].options or genes[i] == genes[j]:
        return genes
    child = list(genes)
    child[i], child[j] = child[j], child[i]
    swapped = tuple(child)
    return swapped if space.is_valid(swapped) else genes


def _mutate(space: SearchSpace, genes: Genes, rng: np.random.Generator, prob: float) -> Genes:
    if len(genes) > 1 and rng.random() < SWAP_SHARE:
        genes = _swap(space, genes, rng)
    return space.mutate(genes, rng, prob)


def _evolutionary(space: SearchSpace, score: _Scorer, params: EvolutionParams) -> None:
    rng = np.random.default_rng(params.seed)
    known: dict[Genes, Candidate] = {}

    def evaluate(genes: Genes) -> Candidate:
        if genes not in known:
            known[genes] = score(space.decode(genes))
        return known[genes]

    def fitness(genes: Genes) -> tuple[int, float, float, str]:
        # Feasible ones rank above every infeasible one (by accuracy); among the infeasible a
        # smaller violation ranks higher, so the search walks back towards the budget.
        cand = evaluate(genes)
        v = score.violation(cand)
        if v == 0.0:
            return (0, -score.sign * cand.accuracy, cand.latency_ms, cand.config.id)
        return (1, v, cand.latency_ms, cand.config.id)

    def novel(make: Callable[[], Genes], taken: set[Genes]) -> Genes:
        child = make()
        for _ in range(NOVELTY_TRIES):
            if child not in known and child not in taken:
                break
            child = make()
        return child

    population: list[Genes] = []
    for _ in range(params.population):
        population.append(novel(lambda: space.sample_genes(rng), set(population)))

    n_children = params.population - params.parents
    n_cross = round(params.crossover_share * n_children)
    for _ in range(params.generations):
        ranked = sorted(dict.fromkeys(population), key=fitness)  # dedupe, keep order
        parents = ranked[: params.parents]
        nxt: list[Genes] = list(parents)
        taken = set(nxt)
        for i in range(n_children):
            if i < n_cross and len(parents) > 1:
                a, b = rng.choice(len(parents), size=2, replace=False)
                child = novel(lambda a=parents[a], b=parents[b]: space.crossover(a, b, rng), taken)
            else:
                p = parents[int(rng.integers(len(parents)))]
                child = novel(lambda p=p: _mutate(space, p, rng, params.mutation_prob), taken)
            nxt.append(child)
            taken.add(child)
        population = nxt
    for genes in population:
        evaluate(genes)


def _sample(cands: Sequence[Candidate], limit: int, seed: int) -> list[Candidate]:
    if len(cands) <= limit:
        return list(cands)
    idx = np.sort(np.random.default_rng(seed).choice(len(cands), size=limit, replace=False))
    return [cands[int(i)] for i in idx]


def _infeasible_message(space: SearchSpace, score: _Scorer, cands: Sequence[Candidate]) -> str:
    c = score.constraints
    budget = f"{c.effective_budget_ms:.4g} ms (budget {c.budget_ms:.4g} ms less {c.margin_pct:.3g}% margin)"
    fastest = min(cands, key=lambda x: (x.latency_ms, x.config.id))
    if fastest.latency_ms <= c.effective_budget_ms and c.max_params is not None:
        # Latency is not what binds: the parameter cap is.
        fits = [x for x in cands if x.latency_ms <= c.effective_budget_ms and x.params is not None]
        small = min(fits, key=lambda x: (x.params, x.config.id))
        return (
            f"no {space.family} subnet has <= {c.max_params} params within {budget}: the smallest that "
            f"fits the latency, {small.config.id} {small.config}, has {small.params} params; "
            "raise max_params or the budget, or pick a smaller model"
        )
    if score.limits:  # several budgets: name the fastest seen in each of them
        values = dict(fastest.limits)
        over = [f"{lim.label or lim.name} {values[lim.name]:.4g} (budget {lim.budget:.4g})" for lim in score.limits]
        return (
            f"no {space.family} subnet fits {budget} and {', '.join(lim.label or lim.name for lim in score.limits)}: "
            f"the fastest seen, {fastest.config.id} {fastest.config}, is predicted at {fastest.latency_ms:.4g} ms "
            f"and {'; '.join(over)}; raise the budgets or pick a faster target or a smaller model"
        )
    return (
        f"no {space.family} subnet fits {budget}: the fastest seen, {fastest.config.id} "
        f"{fastest.config}, is predicted at {fastest.latency_ms:.4g} ms; "
        "raise the budget or pick a faster target or a smaller model"
    )


def _rescore(
    feasible: Sequence[Candidate], exact: AccuracyFn, first: int, limit: int, sign: float = 1.0
) -> tuple[Candidate, dict[SubnetConfig, Candidate], Rescoring]:
    """The best feasible candidate by real accuracy, evaluating surrogate guesses in widening rounds.

    A real accuracy already known always competes (a guess can never beat it unevaluated); guesses are
    evaluated best first, 8, then 16, 32, … in all, until none left unevaluated claims more than the best
    real one, or a widening keeps the same choice (the surrogate ranks well there), or `limit` is reached.
    """
    guesses = [c for c in feasible if c.accuracy_source != "exact"]  # feasible is sorted best first
    known = [c for c in feasible if c.accuracy_source == "exact"]
    rescored: dict[SubnetConfig, Candidate] = {}
    previous: Candidate | None = None
    width, rounds, stable = first, 0, False
    rank = functools.partial(_rank_key, sign=sign)
    choice = min(known, key=rank) if known else None
    for _ in range(max(1, math.ceil(math.log2(max(limit / first, 1))) + 1)):  # bounded: doubling up to limit
        rounds += 1
        for c in guesses[:width]:
            if c.config not in rescored:
                real = float(exact(c.config))
                rescored[c.config] = dataclasses.replace(c, accuracy=real, accuracy_source="exact")
        choice = min([*known, *rescored.values()], key=rank)
        left = [c for c in guesses if c.config not in rescored]
        if not left or sign * left[0].accuracy <= sign * choice.accuracy or previous == choice:
            stable = True
            break
        if width >= limit:
            break
        previous, width = choice, min(2 * width, limit)
    assert choice is not None
    final = {c.config: rescored.get(c.config, c) for c in feasible}
    front = pareto_front(final.values(), sign)
    share = sum(c.accuracy_source == "exact" for c in front) / len(front)
    info = Rescoring(len(known), len(rescored), rounds, stable, share)
    return choice, rescored, info


# Over ~80 lines: the search's three phases (enumerate or evolve, rescore, front) share its bounded budget counters.
def select(
    space: SearchSpace,
    latency: LatencyFn,
    accuracy: AccuracyFn,
    constraints: Constraints,
    *,
    params: ParamsFn | None = None,
    exact_accuracy: AccuracyFn | None = None,
    known_accuracy: KnownFn | None = None,
    accuracy_source: str = "surrogate",
    finalists: int = 8,
    max_finalists: int = MAX_FINALISTS,
    direction: str = "higher",
    method: str = "auto",
    evolution: EvolutionParams | None = None,
    exhaustive_limit: int = 50_000,
    limits: Sequence[Limit] = (),
) -> Selection:
    """The most accurate config of `space` whose predicted latency fits `constraints`.

    `accuracy` is the task's metric; `direction` says whether higher (accuracy) or lower (perplexity,
    loss) is better. `accuracy_source` labels what `accuracy` returns ("surrogate" or "exact").
    `known_accuracy` gives the real accuracy of configs already evaluated (a cache): those compete with
    their real figure, never a guess. With `exact_accuracy` the choice is always a really evaluated
    config: the top `finalists` feasible guesses are evaluated, and the re-scoring widens (doubling, up
    to `max_finalists`) until no remaining guess claims more than the best real accuracy or a widening
    keeps the same choice
    (`Selection.rescoring` says which, and how much of the feasible front is real). Raises
    NoFeasibleSubnetError, naming the fastest config seen, when nothing fits.
    """
    if method not in METHODS:
        raise UnknownNameError(f"unknown search method '{method}'; known: {', '.join(METHODS)}")
    if accuracy_source not in ACCURACY_SOURCES:
        raise ValueError(f"accuracy_source must be one of {ACCURACY_SOURCES}, got {accuracy_source!r}")
    if constraints.max_params is not None and params is None:
        raise ValueError("constraints.max_params is set but no params function was given")
    if finalists < 1:
        raise ValueError(f"finalists must be >= 1, got {finalists}")
    evolution = evolution or EvolutionParams()

    start = time.perf_counter()
    size = space.size()
    if method == "auto":
        method = "exhaustive" if size <= exhaustive_limit else "evolutionary"
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower' (the task metric's), got {direction!r}")
    sign = 1.0 if direction == "higher" else -1.0
    score = _Scorer(latency, accuracy, params, constraints, accuracy_source, known_accuracy, sign, limits)
    if method == "exhaustive":
        _exhaustive(space, score)
    else:
        _evolutionary(space, score, evolution)

    cands = list(score.cache.values())
    feasible = sorted((c for c in cands if score.feasible(c)), key=functools.partial(_rank_key, sign=sign))
    if not feasible:
        raise NoFeasibleSubnetError(_infeasible_message(space, score, cands))

    choice = feasible[0]
    finalist_ids: set[str] = set()
    rescoring = None
    if exact_accuracy is not None:
        choice, rescored, rescoring = _rescore(
            feasible, exact_accuracy, finalists, max(finalists, max_finalists), sign
        )
        cands = [rescored.get(c.config, c) for c in cands]
        finalist_ids = {c.id for c in rescored}

    # The sample for plots always holds the finalists (exactly evaluated) and the choice.
    exact = [c for c in cands if c.config.id in finalist_ids and c is not choice]
    rest = [c for c in cands if c.config.id not in finalist_ids and c is not choice]
    seen = _sample(rest, max(MAX_SEEN - len(exact) - 1, 0), evolution.seed) + exact + [choice]
    selection = Selection(
        choice=choice,
        front=pareto_front(cands, sign),
        seen=tuple(seen),
        method=method,
        space_size=size,
        evaluated=len(score.cache),
        feasible=len(feasible),
        elapsed_s=time.perf_counter() - start,
        constraints=constraints,
        rescoring=rescoring,
        direction=direction,
    )
    log.info(
        "%s search: %d of %d configs scored, %d feasible within %.4g ms; chose %s (%.4g ms, metric %.4f %s, %s "
        "is better)",
        method,
        selection.evaluated,
        size,
        selection.feasible,
        constraints.effective_budget_ms,
        choice.config.id,
        choice.latency_ms,
        choice.accuracy,
        choice.accuracy_source,
        direction,
    )
    return selection
