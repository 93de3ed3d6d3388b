"""After a deploy measured its artifact: record it, refit where it disagrees, never ship over budget silently.

A deploy whose measured artifact exceeds the budget re-selects once with the correction the measurement
implies (measured / table prediction), or stops with MeasuredOverBudgetError giving both numbers. Never a
loop, never a silent ship. A measurement made under a drift correction judges that correction, so it refits
nothing (deploy/latency/observations.py); docs/targets-and-tables.md, "What limits the predictions", says why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from deploy.errors import MeasuredOverBudgetError
from deploy.flows.workload import Reselect
from deploy.latency.drift import Correction
from deploy.latency.observations import observation_of, observations_path, observed_scale, record_observation
from deploy.latency.predictor import LatencyPredictor, table_error_pct
from deploy.latency.table import LatencyTable

if TYPE_CHECKING:
    from deploy.families.base import Supernet
    from deploy.latency.stats import LatencyStats
    from deploy.search.select import Candidate
    from deploy.targets import Target

log = logging.getLogger(__name__)


def settle_measurement(
    *,
    target: Target,
    table: LatencyTable,
    supernet: Supernet,
    model: str,
    choice: Candidate,
    correction: Correction | None,
    corrections: Mapping[str, Correction],
    measured: LatencyStats | None,
    not_measured: str | None,
    artifact_sha256: str,
    retry: Reselect | None,
    cache_dir: Path | None = None,
    say: Callable[[str], None] = log.info,
    source: Literal["deploy", "bench"] = "deploy",
) -> dict[str, Any]:
    """Record the measurement, refit on it where it disagrees, and refuse to ship over budget.

    Returns the manifest's "drift" block; raises Reselect (first time) or MeasuredOverBudgetError."""
    correction = correction or Correction(skipped="no correction computed")
    table_ms = LatencyPredictor(table).predict(supernet.blocks(choice.config), supernet.family).ms
    block: dict[str, Any] = {
        "table_prediction_ms": table_ms,
        "drift_factor": correction.drift_factor,
        "correction_factor": correction.factor,
        "corrected_prediction_ms": choice.latency_ms,
        "measured_ms": None if measured is None else measured.median_ms,
        "correction": correction.to_json(),
        "reselected": None if retry is None else {k: v for k, v in retry.first.items() if k != "message"},
        "observation": None,
        "refit": None,
        "not_measured_reason": not_measured,
    }
    if measured is None:
        return block
    obs = observation_of(
        target,
        table,
        measured,
        source=source,
        model=model,
        family=supernet.family,
        subnet_id=choice.config.id,
        artifact_sha256=artifact_sha256,
        table_prediction_ms=table_ms,
        drift_factor=correction.drift_factor,
        corrected_prediction_ms=choice.latency_ms,
    )
    path = record_observation(obs, observations_path(target, cache_dir))
    block["observation"] = {"path": str(path), **obs.model_dump()}
    block["refit"] = _judge(
        target, table, supernet.family, choice, correction, measured, table_ms, path, cache_dir, say
    )
    if measured.median_ms > target.budget_ms:
        _reselect_or_stop(target, choice, correction, corrections, measured, table_ms, retry, say)
    return block


def _judge(
    target: Target,
    table: LatencyTable,
    family: str | None,
    choice: Candidate,
    correction: Correction,
    measured: LatencyStats,
    table_ms: float,
    path: Path,
    cache_dir: Path | None,
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    """Say where the measurement disagrees with the prediction beyond the table's error; refit on it (the
    manifest's "refit", else None) unless it was made under a drift correction, which it then judges."""
    error = table_error_pct(table, family)
    off = (measured.median_ms - choice.latency_ms) / choice.latency_ms * 100
    if abs(off) <= error:
        return None
    if correction.drift_factor != 1.0:  # judges that correction: no refit (deploy/latency/observations.py)
        table_off = (measured.median_ms - table_ms) / table_ms * 100
        source = "the first artifact's measurement" if correction.measured_factor is not None else "the drift check"
        say(
            f"measured {measured.median_ms:.3f} ms vs predicted {choice.latency_ms:.3f} ms ({off:+.1f}%): the "
            f"×{correction.factor:.3f} from {source} did not hold for this artifact (the table alone predicted "
            f"{table_ms:.3f} ms, {table_off:+.1f}%); recorded in {path}; made under a drift correction, it refits "
            f"nothing"
        )
        return None
    refit = observed_scale(target, table, family, cache_dir=cache_dir)
    if refit is None:
        return None
    say(
        f"measured {measured.median_ms:.3f} ms vs predicted {choice.latency_ms:.3f} ms ({off:+.1f}%, beyond "
        f"the table's {error:.1f}%): recorded in {path}; the calibration's scale refitted on "
        f"{refit.n_observations} recent observation(s) is ×{refit.scale:.3f}, which the next deploys of "
        f"{target.name} apply (`tables build --target {target.name} --recalibrate` fixes the table itself)"
    )
    return refit.to_json()


def _reselect_or_stop(
    target: Target,
    choice: Candidate,
    correction: Correction,
    corrections: Mapping[str, Correction],
    measured: LatencyStats,
    table_ms: float,
    retry: Reselect | None,
    say: Callable[[str], None],
) -> NoReturn:
    """Over budget: Reselect with the correction the measurement implies, or (re-selected already) stop."""
    implied = measured.median_ms / table_ms
    both = (
        f"{target.name}: the artifact of subnet {choice.config.id} measured {measured.median_ms:.3f} ms on "
        f"{measured.where}, over the budget of {target.budget_ms} ms (predicted {choice.latency_ms:.3f} ms)"
    )
    if retry is not None:
        raise MeasuredOverBudgetError(
            f"{both}, after re-selecting once with the correction the first measurement implied "
            f"({retry.first['subnet']} measured {retry.first['measured_ms']:.3f} ms); nothing was written: measure "
            f"the table again in a quiet window (`make latency-tables TARGET={target.name}`) or raise budget_ms"
        )
    say(f"{both}: re-selecting once with the correction this measurement implies (×{implied:.3f} the table)")
    corrected = dict(corrections)
    corrected[target.precision] = Correction(
        drift=correction.drift, skipped=correction.skipped, observed=correction.observed, measured_factor=implied
    )
    raise Reselect(
        corrected,
        {
            "message": both,
            "subnet": choice.config.id,
            "measured_ms": measured.median_ms,
            "predicted_ms": choice.latency_ms,
            "table_prediction_ms": table_ms,
            "correction": implied,
        },
    )


def reselect_failed(retry: Reselect, exc: Exception, budget_ms: float) -> MeasuredOverBudgetError:
    """The one-line error when re-selecting with the measured correction finds nothing that fits."""
    f = retry.first
    return MeasuredOverBudgetError(
        f"{f['message']}; re-selecting with the correction it implies (×{f['correction']:.3f} the table) "
        f"found nothing under {budget_ms} ms ({str(exc).rstrip('.')}); nothing was written"
    )
