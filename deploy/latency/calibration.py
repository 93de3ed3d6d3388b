"""The calibration of a latency table: whole subnets ≈ f(their blocks' sum), fitted on relative error.

Pure numpy over the samples a build (deploy/latency/build.py), a transfer or a language model's table
measured: which terms the fit keeps is chosen by leave-one-out error, per family where a family has enough
subnets of its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deploy.latency.table import Calibration, CalibrationSample, FamilyFit, now_iso

MIN_FAMILY_SUBNETS = 4  # fewer cannot separate slope from per-block cost: such a family uses the union fit


# Terms of the calibration, each tried in and out; "sum" is always in.
_TERMS = (("sum",), ("sum", "count"), ("sum", "square"), ("sum", "count", "square"))


def _lstsq(design: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Coefficients minimising the relative error (each row divided by its measurement)."""
    coef, *_ = np.linalg.lstsq(design / measured[:, None], np.ones_like(measured), rcond=None)
    return coef


def _loo_rms(design: np.ndarray, measured: np.ndarray) -> float:
    """Leave-one-out RMS relative error: how the fit does on a subnet it was not fitted on."""
    n = len(measured)
    errors = []
    for i in range(n):
        keep = np.arange(n) != i
        coef = _lstsq(design[keep], measured[keep])
        errors.append((design[i] @ coef - measured[i]) / measured[i])
    return float(np.sqrt(np.mean(np.square(errors))))


def _fit(samples: Sequence[CalibrationSample], overhead_ms: float = 0.0) -> tuple[float, float, float, float]:
    """(slope, per_block_ms, quad_per_ms, in-sample RMS relative residual %) of the chosen fit.

    measured ≈ slope · Σ + per_block · n + quad · Σ², fitted on relative error for every subset of the
    optional terms (4 fits). Fits with a negative coefficient are out (they extrapolate to negative
    costs); of the rest, the lowest leave-one-out error wins, so a term that only fits the noise of a dozen
    subnets is left out: in-sample error always prefers more terms (docs/targets-and-tables.md, "How a table
    is calibrated", has the figures that decided it).
    """
    sums = np.array([s.block_sum_ms - max(s.n_blocks - 1, 0) * overhead_ms for s in samples])
    columns = {
        "sum": sums,
        "count": np.array([s.n_blocks for s in samples], dtype=float),
        "square": sums**2,
    }
    measured = np.array([s.measured_ms for s in samples])
    best: tuple[float, dict[str, float]] | None = None
    for terms in _TERMS:
        if len(samples) < len(terms) + 3:  # leave-one-out needs spare subnets, or it picks a wild fit
            continue
        design = np.stack([columns[t] for t in terms], axis=1)
        coef = _lstsq(design, measured)
        if (coef < 0).any():
            continue
        loo = _loo_rms(design, measured)
        if best is None or loo < best[0]:
            best = (loo, dict(zip(terms, map(float, coef), strict=True)))
    coef = {"sum": float(np.median(measured / sums))} if best is None else best[1]  # else: the median ratio
    fitted = coef["sum"] * sums + coef.get("count", 0.0) * columns["count"] + coef.get("square", 0.0) * sums**2
    residual = float(np.sqrt(np.mean(((fitted - measured) / measured) ** 2)) * 100)
    return coef["sum"], coef.get("count", 0.0), coef.get("square", 0.0), residual


def fit_calibration(samples: list[CalibrationSample], call_overhead_ms: float = 0.0) -> Calibration:
    """The table's calibration: one fit over all samples and, with several families, one per family.

    Relative error, so a small subnet counts as much as a large one; no free intercept, because a
    negative one predicted negative latencies for the smallest subnets when the machine was noisy.
    Per family because one line over two families fits worse than each family's own
    (docs/targets-and-tables.md, "How a table is calibrated"; `_fit` for the terms). Sums are net of
    `call_overhead_ms` per extra block.
    """
    slope, per_block, quad, residual = _fit(samples, call_overhead_ms)
    by_family: dict[str, list[CalibrationSample]] = {}
    for sample in samples:
        by_family.setdefault(str(sample.config.get("family", "")), []).append(sample)
    families = {}
    if len(by_family) > 1:
        for family, group in sorted(by_family.items()):
            if len(group) >= MIN_FAMILY_SUBNETS:
                f_slope, f_per_block, f_quad, f_residual = _fit(group, call_overhead_ms)
                families[family] = FamilyFit(
                    slope=f_slope,
                    per_block_ms=f_per_block,
                    quad_per_ms=f_quad,
                    residual_pct=f_residual,
                    n_subnets=len(group),
                )
    return Calibration(
        slope=slope,
        per_block_ms=per_block,
        quad_per_ms=quad,
        intercept_ms=0.0,
        residual_pct=residual,
        n_subnets=len(samples),
        fitted_at=now_iso(),
        samples=samples,
        families=families,
        call_overhead_ms=call_overhead_ms,
    )
