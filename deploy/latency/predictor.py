"""One generic latency predictor: sum the table's blocks, then apply the table's calibration."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from deploy.errors import TableIncompleteError
from deploy.families.base import BlockKey
from deploy.latency.table import LatencyTable


@dataclass(frozen=True)
class Prediction:
    ms: float
    std_ms: float  # expected error: the table's validated (or fitted) relative error times ms
    block_sum_ms: float
    method: str  # "measured", "estimated" or "transferred", from the table's provenance
    table_ms: float | None = None  # the table's own prediction; ms = table_ms × correction
    correction: float = 1.0  # drift correction measured on the device (deploy/latency/drift.py); 1: none


class LatencyPredictor:
    def __init__(self, table: LatencyTable, correction: float = 1.0) -> None:
        """`correction` rescales every prediction (the device's speed moved since the table; deploy/latency/drift.py).
        It is carried on each Prediction, never written into the table."""
        self.table = table
        self._index = table.index()
        self.correction = correction

    @property
    def method(self) -> str:
        return self.table.provenance.method

    def relative_error(self, family: str | None = None) -> float:
        """Expected relative error of a prediction: validated if known, else the calibration fit's."""
        validation = self.table.validation_for(family)
        if validation is not None:
            return validation.median_abs_pct_error / 100
        if self.table.calibration is not None:
            return self.table.calibration.residual_for(family) / 100
        return 0.25  # an uncalibrated block sum is far off (docs/targets-and-tables.md, "What limits the predictions")

    def missing(self, blocks: Sequence[BlockKey]) -> list[BlockKey]:
        return sorted({b for b in blocks if b not in self._index})

    def require(self, blocks: Sequence[BlockKey]) -> None:
        missing = self.missing(blocks)
        prov = self.table.provenance
        source = (prov.estimate or {}).get("source_target") if prov.method == "estimated" else None
        if missing and source:
            raise TableIncompleteError(
                f"ESTIMATED latency table of '{prov.target}' lacks {len(missing)} block(s), e.g. {missing[0]}; it "
                f"scales {source}'s table: add the model to `models:` in targets/{source}.yaml, run "
                f"`make latency-tables TARGET={source}`, then `make estimate-tables TARGET={prov.target}`"
            )
        if missing and prov.method == "transferred":
            raise TableIncompleteError(
                f"TRANSFERRED latency table of '{prov.target}' lacks {len(missing)} block(s), e.g. {missing[0]}: it "
                f"covers the models it was transferred for; transfer again with this model: `elastic-deploy tables "
                f"transfer --target {prov.target} --from SOURCE --model MODEL` (or measure it on the device)"
            )
        if missing:
            target = prov.target
            raise TableIncompleteError(
                f"latency table of '{target}' lacks {len(missing)} block(s), e.g. {missing[0]}; "
                f"measure them with `make latency-tables TARGET={target}` (for a model the target does not list "
                f"yet, add it to `models:` in targets/{target}.yaml first, or pass MODEL=…)"
            )

    def block_sum(self, blocks: Sequence[BlockKey]) -> float:
        self.require(blocks)
        return sum(self._index[b].median_ms for b in blocks)

    def predict(self, blocks: Sequence[BlockKey], family: str | None = None) -> Prediction:
        """Calibrated sum of `blocks`; `family` picks that family's own calibration and error, if the table has them."""
        total = self.block_sum(blocks)
        cal = self.table.calibration
        table_ms = cal.apply(total, len(blocks), family) if cal is not None else total
        ms = table_ms * self.correction
        return Prediction(
            ms=ms,
            std_ms=ms * self.relative_error(family),
            block_sum_ms=total,
            method=self.method,
            table_ms=table_ms,
            correction=self.correction,
        )


def table_error_pct(table: LatencyTable, family: str | None = None) -> float:
    """The error of the table's shape at the device's current speed, in %: the same-window error of its
    validation (blocks re-timed beside the subnets), else the error a prediction is expected to have.

    Not the validation's overall median: one taken while the device ran at another speed holds that drift, and
    as the threshold of the drift check it would hide the very drift the check is for (docs/targets-and-tables.md,
    "What limits the predictions")."""
    validation = table.validation_for(family)
    if validation is not None and validation.same_window_median_abs_pct_error > 0:
        return validation.same_window_median_abs_pct_error
    return LatencyPredictor(table).relative_error(family) * 100
