"""Parity: does a compiled artifact compute what the torch module computed (the hub's references)?"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deploy.errors import ParityError

HINT = "check the converter version or loosen parity_atol in the target"


@dataclass(frozen=True)
class OutputDiff:
    name: str
    max_abs_diff: float  # inf when shapes differ, an output is missing, or only one side is NaN
    problem: str = ""  # why the diff could not be computed element-wise, if it could not


@dataclass(frozen=True)
class ParityReport:
    outputs: tuple[OutputDiff, ...]
    max_abs_diff: float
    tolerance: float
    ok: bool

    @property
    def per_output(self) -> dict[str, float]:
        return {o.name: o.max_abs_diff for o in self.outputs}

    def summary(self) -> str:
        """Each output's diff against the tolerance, e.g. 'logits max abs diff 3.1e-02 > 1e-04'."""
        parts = []
        for o in self.outputs:
            if o.problem:
                parts.append(f"{o.name} {o.problem}")
            else:
                op = "<=" if o.max_abs_diff <= self.tolerance else ">"
                tol = np.format_float_scientific(self.tolerance, trim="-", exp_digits=2)
                parts.append(f"{o.name} max abs diff {o.max_abs_diff:.1e} {op} {tol}")
        return ", ".join(parts) or "no outputs"

    def raise_if_failed(self, what: str) -> None:
        if not self.ok:
            raise ParityError(f"parity failed for {what}: {self.summary()}; {HINT}")


def _diff(name: str, got: np.ndarray, ref: np.ndarray) -> OutputDiff:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return OutputDiff(name, math.inf, f"shape {got.shape} != reference {ref.shape}")
    if got.size == 0:
        return OutputDiff(name, 0.0)
    a, b = got.astype(np.float64), ref.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # equal infinities and matching NaNs agree
    with np.errstate(invalid="ignore"):  # inf - inf is handled by `same`
        diff = np.where(same, 0.0, np.abs(a - b))
    diff = np.nan_to_num(diff, nan=math.inf)  # a NaN on one side only is a failure, never a pass
    return OutputDiff(name, float(diff.max()))


def check_parity(
    outputs: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    references: Mapping[str, np.ndarray],
    atol: float,
) -> ParityReport:
    """Max abs diff of each output against the reference of the same name (or position, for a sequence)."""
    names = list(references)
    if isinstance(outputs, Mapping):
        got = dict(outputs)
    else:
        got = {names[i] if i < len(names) else f"output{i}": out for i, out in enumerate(outputs)}
    missing = "missing from the artifact"
    diffs = [
        _diff(name, got[name], ref) if name in got else OutputDiff(name, math.inf, missing)
        for name, ref in references.items()
    ]
    diffs += [OutputDiff(name, math.inf, "not in the references") for name in got if name not in references]
    worst = max((d.max_abs_diff for d in diffs), default=0.0)
    ok = bool(diffs) and all(not d.problem and d.max_abs_diff <= atol for d in diffs)
    return ParityReport(tuple(diffs), worst, float(atol), ok)


EXTRACTION_ATOL = 1e-4  # fp32: an extracted subnet is the supernet's own arithmetic, sliced (DESIGN: ≤1e-5 typical)


def check_extraction(supernet: Any, config: Any, seed: int = 1) -> float:
    """The extracted subnet at `config` computes what the supernet computes there (max abs diff of the first
    output on seeded example inputs); ExtractionError naming the family and the difference otherwise."""
    import torch

    from deploy.errors import ExtractionError

    inputs = supernet.example_inputs(seed)
    was_training = supernet.training
    supernet.eval()
    try:
        with torch.inference_mode():
            want = supernet(*inputs, config=config)
            got = supernet.extract(config).eval()(*inputs)
    finally:
        supernet.train(was_training)
    want = want[0] if isinstance(want, tuple | list) else want
    got = got[0] if isinstance(got, tuple | list) else got
    if tuple(want.shape) != tuple(got.shape):
        raise ExtractionError(
            f"{supernet.family}.extract({config.id}) returns shape {tuple(got.shape)}, the supernet "
            f"{tuple(want.shape)} at that config; fix the family's extract"
        )
    diff = float((want.float() - got.float()).abs().max())
    if not diff <= EXTRACTION_ATOL:
        raise ExtractionError(
            f"{supernet.family}.extract({config.id}) differs from the supernet at that config by {diff:.2e} "
            f"(> {EXTRACTION_ATOL:.0e}): the extracted weights are not the supernet's; fix the family's extract"
        )
    return diff
