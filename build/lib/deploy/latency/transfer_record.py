"""What a TRANSFERRED table records about how it was made (Provenance.transfer).

A transferred table is a measured source table mapped onto a new device by a model fitted on N whole
subnets measured there (deploy/latency/transfer_table.py). This record keeps everything needed to
judge it: the sources (with their own method, backend and precision), the N measurements, every
candidate model with its cross-validated error, the chosen one, and how closely the table written
reproduces the chosen model on the subnets it was fitted on. Pydantic only: table.py imports it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TransferSource(_Strict):
    target: str
    table: str  # file name of the source table
    method: str  # the source table's own method (a transfer starts only from measured tables)
    backend: str
    precision: str
    threads: int
    host: str
    date: str  # the source table's provenance date


class TransferHeldOut(_Strict):
    """Cross-validated figures: each subnet predicted by the model fitted without it (its fold)."""

    median_abs_pct: float
    mean_abs_pct: float
    p90_abs_pct: float
    worst_pct: float
    within_5pct: float
    within_10pct: float
    folds: int


class TransferCandidate(_Strict):
    model: str
    n_params: int
    heldout: TransferHeldOut | None = None  # None: skipped (too few measurements)
    skipped: str | None = None


class TransferSubnet(_Strict):
    """One whole subnet measured on the new device (twice, interleaved) and what the chosen model says."""

    subnet_id: str
    model: str  # the variant it belongs to
    config: dict
    measured_ms: float  # median of the two measurements
    measured_again_ms: float
    cv: float
    predicted_ms: float  # the chosen model fitted on all N (in-sample)
    heldout_predicted_ms: float  # the chosen model fitted without this subnet's fold
    table_predicted_ms: float  # what the written table predicts (must equal predicted_ms)


class TransferBlock(_Strict):
    """A block measured alone on the new device beside the subnets (per-kind scales)."""

    block: str
    kind: str
    source_ms: float
    measured_ms: float


class TransferRecord(_Strict):
    sources: list[TransferSource]
    n_subnets: int
    seed: int
    model: str  # the chosen candidate
    n_params: int
    heldout: TransferHeldOut
    candidates: list[TransferCandidate]
    scales: dict[str, float] = Field(default_factory=dict)  # "source/kind" -> multiplier of the source entries
    offset_ms: float = 0.0
    unsupported_kinds: list[str] = Field(default_factory=list)  # no measured subnet had them: pooled scale
    repeatability_pct: float  # median |a-b|/mean of each subnet measured twice: the floor
    call_overhead_ms: float  # the null model on the new device, in the same window
    subnets: list[TransferSubnet]
    blocks: list[TransferBlock] = Field(default_factory=list)
    table_reproduces_fit_max_pct: float  # max |table - model| / model over the N subnets
    where: str
    date: str
