"""The drift guard of a long `tables build`: notice the device's speed moving between its blocks.

Every BUILD_CHECK_EVERY blocks, a few reference blocks are timed again; if they moved beyond twice their
repeatability (at least BUILD_MIN_DRIFT_PCT), the blocks measured since the last good check are measured
again, at most BUILD_MAX_REDO times; then the new speed is accepted. How the figures below were chosen:
docs/targets-and-tables.md, "How a table is measured".
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.latency.table import now_iso

if TYPE_CHECKING:
    from deploy.families.base import BlockKey
    from deploy.latency.session import MeasureSession
    from deploy.latency.stats import LatencyStats

log = logging.getLogger(__name__)

BUILD_CHECK_EVERY = 12  # blocks between two checks of a build
BUILD_REFERENCE_BLOCKS = 3
BUILD_MIN_DRIFT_PCT = 3.0  # a build check never calls a move below this "drift": round noise can reach it
BUILD_MAX_REDO = 1  # a segment is measured again at most this often; then the new speed is accepted


@dataclass
class BuildDriftGuard:
    """Re-time reference blocks between the blocks of a build; re-measure a segment measured while they moved.

    `measure(keys)` measures the keys interleaved, each twice (2·len(keys) stats, in that order);
    `remeasure(key)` measures one block again the way the build does. `after(key)` is called once per
    block measured and returns the re-measured blocks (key → stats) the build must store.
    """

    refs: Sequence[BlockKey]
    measure: Callable[[Sequence[BlockKey]], list[LatencyStats]]
    remeasure: Callable[[BlockKey], LatencyStats]
    every: int = BUILD_CHECK_EVERY
    say: Callable[[str], None] = log.warning
    baseline: list[float] | None = None
    baseline_repeat_pct: float = 0.0
    since: list[BlockKey] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def _time(self) -> tuple[list[float], float]:
        stats = self.measure(self.refs)
        n = len(self.refs)
        pairs = list(zip(stats[:n], stats[n:], strict=True))
        medians = [(a.median_ms + b.median_ms) / 2 for a, b in pairs]
        repeat = float(
            np.median([abs(a.median_ms - b.median_ms) / m for (a, b), m in zip(pairs, medians, strict=True)])
        )
        return medians, repeat * 100

    def _moved(self) -> tuple[float, float]:
        """(move %, threshold %) of the reference blocks now against the baseline."""
        assert self.baseline is not None
        medians, repeat = self._time()
        move = (float(np.median(np.array(medians) / np.array(self.baseline))) - 1) * 100
        threshold = max(2 * max(repeat, self.baseline_repeat_pct), BUILD_MIN_DRIFT_PCT)
        self.history.append({"date": now_iso(), "move_pct": move, "threshold_pct": threshold, "medians_ms": medians})
        return move, threshold

    def after(self, key: BlockKey) -> dict[BlockKey, LatencyStats]:
        if self.baseline is None:
            self.baseline, self.baseline_repeat_pct = self._time()
        self.since.append(key)
        if len(self.since) < self.every:
            return {}
        redone: dict[BlockKey, LatencyStats] = {}
        move, threshold = self._moved()
        for attempt in range(BUILD_MAX_REDO + 1):
            if abs(move) <= threshold:
                break
            if attempt == BUILD_MAX_REDO:
                self.say(
                    f"reference blocks still {move:+.1f}% off their start after re-measuring {len(self.since)} "
                    f"blocks: the device's speed changed and stayed (throttling?); keeping the new figures "
                    f"(the calibration window re-measures every block beside the subnets anyway)"
                )
                self.baseline = self._time()[0]
                break
            self.say(
                f"reference blocks moved {move:+.1f}% (beyond {threshold:.1f}%, twice their repeatability) "
                f"while {len(self.since)} blocks were measured: measuring those again"
            )
            redone.update({k: self.remeasure(k) for k in self.since})
            move, threshold = self._moved()
        self.since = []
        return redone


def build_drift_guard(
    executor_name: str,
    session: MeasureSession,
    blocks: Sequence[BlockKey],
    todo: Sequence[BlockKey],
    compile_block: Callable[[BlockKey], Any],
    every: int | None = None,
) -> BuildDriftGuard | None:
    """The guard of a local build with more than `every` blocks to measure (None otherwise: a Ray executor
    spreads blocks over devices, which one set of reference blocks on one device cannot vouch for)."""
    every = every or BUILD_CHECK_EVERY
    if executor_name != "local" or len(todo) <= every:
        return None
    ordered = sorted(blocks)
    picks = np.linspace(0, len(ordered) - 1, min(BUILD_REFERENCE_BLOCKS, len(ordered))).round().astype(int)
    refs = [ordered[i] for i in dict.fromkeys(int(i) for i in picks)]
    items = {k: compile_block(k) for k in refs}

    def measure(keys: Sequence[BlockKey]) -> list[LatencyStats]:
        return session.measure([items[k] for k in keys] * 2)

    def remeasure(key: BlockKey) -> LatencyStats:
        return session.measure([compile_block(key)])[0]

    return BuildDriftGuard(refs, measure, remeasure, every)
