"""ESTIMATED latency tables, for devices nobody has attached yet: a measured table scaled by one factor.

The factor comes from an anchor model whose latency on the device is published: the same architecture
(deploy/latency/anchors.py) is measured here through the source target's backend and runner, and
factor = published device ms / source ms × correction (a newer chip than the anchor's device). Where
no figure was published for the device, the target gives the factor and its derivation in words.

How good can one factor be? benchmarks/estimate_transfer.py measures it on NAS-Bench-201 cells timed on
many devices (its figures: benchmarks/results/estimate_transfer.md, docs/targets-and-tables.md#estimated-tables).
Each target states the total error it expects; the table carries it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from deploy.latency.table import Calibration, LatencyTable, Provenance, now_iso
from deploy.targets import Target, load_target

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EstimateResult:
    path: Path
    factor: float
    anchor_source_ms: float | None
    entries: int
    precision: str = "fp32"
    where: str = ""


def measure_anchor(source: Target, anchor: str, cache_dir: Path | None = None) -> tuple[float, str]:
    """Median latency (ms) of the anchor model on the source target's backend and runner, and where."""
    from deploy.latency.anchors import build_anchor
    from deploy.latency.session import MeasureSession

    session = MeasureSession.open(source, cache_dir)
    module, example = build_anchor(anchor)
    item = session.compile(module, example, {"anchor": anchor})
    stats = session.measure([item])[0]
    return stats.median_ms, stats.where


def estimation_text(target: Target, factor: float, anchor_source_ms: float | None, where: str) -> str:
    spec = target.estimate
    assert spec is not None
    if spec.anchor is not None:
        a = spec.anchor
        device_ms = a.device_ms_by_precision.get(target.precision, a.device_ms)
        own = target.precision == target.search_precisions[0] or target.precision in a.device_ms_by_precision
        how = (
            f"{target.precision} block latencies of the measured {spec.source_target} table × {factor:.4g} = "
            f"{a.model} published {device_ms} ms on {a.device} ({a.source}) / {anchor_source_ms:.3f} ms measured on "
            f"{spec.source_target} ({where}) × correction {spec.correction} ({spec.derivation})"
            + ("" if own else f"; no published {target.precision} figure, so the first precision's factor is reused")
        )
    else:
        how = f"block latencies of the measured {spec.source_target} table × {factor:.4g} ({spec.derivation})"
    return f"{how}. Expected error ±{spec.expected_error_pct:.0f}%: {spec.expected_error}"


def estimate_tables(target: Target, *, cache_dir: Path | None = None) -> list[EstimateResult]:
    """One ESTIMATED table per precision the target lists. A precision with its own published anchor
    figure gets its own factor; the others reuse the first precision's (the device/host speed ratio)."""
    results: list[EstimateResult] = []
    for p in target.search_precisions:
        first = results[0] if results else None
        results.append(estimate_table(target.at_precision(p), cache_dir=cache_dir, fallback=first))
    return results


# Over ~80 lines: one table's provenance record is assembled field by field from the anchor and its source.
def estimate_table(
    target: Target,
    *,
    cache_dir: Path | None = None,
    path: Path | None = None,
    fallback: EstimateResult | None = None,
) -> EstimateResult:
    """Write the target's ESTIMATED table (at target.precision) from its source target's measured table
    at the same precision (atomically)."""
    from deploy.errors import ConfigFileError

    spec = target.estimate
    if spec is None:
        raise ConfigFileError(
            f"target {target.name} has no 'estimate' section; measure its table on the device with "
            f"`make latency-tables TARGET={target.name}` instead"
        )
    source = load_target(spec.source_target)
    if target.precision in source.search_precisions:  # same precision where the source measured it
        source = source.at_precision(target.precision)
    table = LatencyTable.load(source.table_path, source.name)
    if table.provenance.method != "measured":
        raise ConfigFileError(
            f"{source.table_path} is {table.provenance.method}; an estimate must start from a measured table"
        )
    anchor_ms, where = None, table.provenance.host
    primary = target.precision == target.search_precisions[0]
    if spec.anchor is not None and (primary or target.precision in spec.anchor.device_ms_by_precision):
        device_ms = spec.anchor.device_ms if primary else spec.anchor.device_ms_by_precision[target.precision]
        anchor_ms, where = measure_anchor(source, spec.anchor.model, cache_dir)
        factor = device_ms / anchor_ms * spec.correction
    elif spec.anchor is not None and fallback is not None:
        factor, anchor_ms, where = fallback.factor, fallback.anchor_source_ms, fallback.where
    elif spec.factor is not None:
        factor = spec.factor * spec.correction
    else:
        raise ConfigFileError(f"targets/{target.name}.yaml: estimate needs an 'anchor' or a 'factor'")

    entries = []
    for e in table.entries:
        scaled = {k: getattr(e, k) * factor for k in ("median_ms", "p90_ms", "mean_ms", "std_ms")}
        entries.append(
            e.model_copy(
                update={
                    **scaled,
                    "round_medians_ms": [m * factor for m in e.round_medians_ms],
                    "fingerprint": f"estimated:{source.name}:{factor:.6g}",
                }
            )
        )
    calibration = None
    if table.calibration is not None:
        c = table.calibration
        calibration = Calibration(
            model=c.model,
            slope=c.slope,
            per_block_ms=c.per_block_ms * factor,
            quad_per_ms=c.quad_per_ms / factor,  # quad · Σ² scales by factor when Σ does
            intercept_ms=c.intercept_ms * factor,
            call_overhead_ms=c.call_overhead_ms * factor,
            residual_pct=c.residual_pct,
            n_subnets=c.n_subnets,
            fitted_at=c.fitted_at,
            families={
                name: f.model_copy(
                    update={"per_block_ms": f.per_block_ms * factor, "quad_per_ms": f.quad_per_ms / factor}
                )
                for name, f in c.families.items()
            },
        )
    source_p90 = table.validation.p90_abs_pct_error if table.validation is not None else None
    prov = table.provenance
    estimated = LatencyTable(
        provenance=Provenance(
            target=target.name,
            device=target.device.name,
            host=f"estimated from {source.name} ({prov.host})",
            backend=target.backend,
            backend_version="not measured",
            precision=target.precision,
            threads=target.threads,
            runner="none (estimated)",
            date=now_iso(),
            protocol=prov.protocol,
            method="estimated",
            estimation=estimation_text(target, factor, anchor_ms, where)
            + ("" if source.precision == target.precision else f" (source measured at {source.precision})"),
            estimate={
                "source_target": source.name,
                "source_table_date": prov.date,
                "source_validation_p90_pct": source_p90,
                "anchor": None if spec.anchor is None else spec.anchor.model_dump(),
                "anchor_source_ms": anchor_ms,
                "anchor_measured_on": where if spec.anchor is not None else None,
                "correction": spec.correction,
                "factor": factor,
                "expected_error_pct": spec.expected_error_pct,
                "expected_error": spec.expected_error,
            },
            versions=prov.versions,
        ),
        entries=entries,
        calibration=calibration,
    )
    out = path or target.table_write_path
    estimated.save(out)
    log.info("wrote ESTIMATED %s (factor %.4g on %s)", out, factor, source.name)
    return EstimateResult(out, factor, anchor_ms, len(entries), target.precision, where)
