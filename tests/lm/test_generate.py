"""Generation loops timed under a target's measurement protocol and its precision gate."""

from __future__ import annotations

import time

import numpy as np

from deploy.latency.stats import MeasureProtocol
from deploy.lm.generate import time_loops_gated

VOCAB = 8


class _Session:
    """An LMSession whose decode step takes `step_s()` seconds: steady, or alternating slow and fast per loop."""

    def __init__(self, step_s) -> None:
        self.step_s, self.loop = step_s, 0

    def prefill(self, prompt: np.ndarray):
        self.loop += 1
        return np.eye(VOCAB)[1], 0

    def decode(self, token: int, state: int):
        time.sleep(self.step_s(self.loop))
        return np.eye(VOCAB)[1], state + 1


def _timed(session: _Session, protocol: MeasureProtocol):
    return time_loops_gated(session, [1, 2], 4, protocol, vocab=VOCAB, max_context=16, longest=8, loops=4)


def test_steady_generation_passes_the_gate_after_one_batch_of_loops():
    protocol = MeasureProtocol(cv_max=0.2, max_retries=2)
    figures, how = _timed(_Session(lambda loop: 0.002), protocol)
    assert how["within_gate"] and how["loops"] == 4
    assert 1.5 < figures["ms_per_token"] < 20 and figures["tokens_per_s"] == 1000 / figures["ms_per_token"]


def test_noisy_generation_takes_more_batches_then_says_it_stayed_noisy():
    protocol = MeasureProtocol(cv_max=0.001, max_retries=2)
    _, how = _timed(_Session(lambda loop: 0.001 if loop % 2 else 0.006), protocol)
    assert not how["within_gate"] and how["loops"] == 4 * 3 and how["rse"] > 0.001
