"""The latency table of one target: measured (or estimated) block latencies, with their provenance.

Keyed by BlockKey, so one table serves every search space whose blocks have those shapes. The
calibration (fitted on whole-subnet measurements) and the out-of-sample validation figures live in
the same file, so a prediction and its expected error travel together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deploy.errors import ConfigFileError, TableNotFoundError
from deploy.families.base import BlockKey
from deploy.io import atomic_write_text, pydantic_error_line, read_json
from deploy.latency.stats import LatencyStats
from deploy.latency.transfer_record import TransferRecord

SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Protocol(_Strict):
    warmup_runs: int
    min_runs: int
    min_time_s: float
    rounds: int
    cv_max: float
    max_retries: int
    cooldown_s: float = 0.0
    statistic: str = "median of all timed runs; cv = spread of round medians"
    interleaved: bool = True


class Provenance(_Strict):
    target: str
    device: str
    host: str
    backend: str
    backend_version: str
    precision: str
    threads: int
    runner: str
    date: str
    protocol: Protocol
    method: Literal["measured", "estimated", "transferred"]
    estimation: str | None = None  # for estimated tables: how
    estimate: dict | None = None  # for estimated tables: source table, anchor figures, factor, expected error
    transfer: TransferRecord | None = None  # for transferred tables: sources, N, chosen model, held-out error
    versions: dict[str, str] = Field(default_factory=dict)


class Entry(_Strict):
    kind: str
    shape: dict[str, int]
    median_ms: float = Field(ge=0)
    p90_ms: float = Field(ge=0)
    mean_ms: float = Field(ge=0)
    std_ms: float = Field(ge=0)
    n_runs: int = Field(ge=0)
    cv: float = Field(0.0, ge=0)
    round_medians_ms: list[float] = Field(default_factory=list)
    measured_at: str = ""
    fingerprint: str = ""  # backend/version/threads/protocol it was measured with; stale if it differs
    device: str | None = None  # id of the target's device that measured it (None: tables from before devices)

    @property
    def key(self) -> BlockKey:
        return BlockKey.of(self.kind, **self.shape)

    @classmethod
    def from_stats(cls, key: BlockKey, stats: LatencyStats, fingerprint: str, device: str | None = None) -> Entry:
        return cls(
            kind=key.kind,
            shape=dict(key.shape),
            median_ms=stats.median_ms,
            p90_ms=stats.p90_ms,
            mean_ms=stats.mean_ms,
            std_ms=stats.std_ms,
            n_runs=stats.n_runs,
            cv=stats.cv,
            round_medians_ms=list(stats.round_medians_ms),
            measured_at=now_iso(),
            fingerprint=fingerprint,
            device=device,
        )


class CalibrationSample(_Strict):
    subnet_id: str
    config: dict
    block_sum_ms: float
    n_blocks: int
    measured_ms: float
    cv: float = 0.0


class FamilyFit(_Strict):
    """One family's own fit: how a runtime fuses across block boundaries differs from family to family."""

    slope: float
    per_block_ms: float
    quad_per_ms: float = 0.0
    residual_pct: float
    n_subnets: int

    def apply(self, block_sum_ms: float, n_blocks: int) -> float:
        return self.slope * block_sum_ms + self.per_block_ms * n_blocks + self.quad_per_ms * block_sum_ms**2


class Calibration(_Strict):
    """measured ≈ slope · Σ + per_block_ms · n_blocks + quad_per_ms · Σ² + intercept_ms, Σ the net block sum.

    Net of the runtime's per-call cost: each block timed alone paid one call (session.run, input and
    output copies: `call_overhead_ms`, a null model measured in the calibration window), the whole
    subnet pays one, so Σ = Σ blocks − (n − 1) · overhead. That cost is the machine's, not the model's:
    it differs between hosts far more than the blocks do (docs/targets-and-tables.md, "How a table is
    calibrated").

    Fitted on relative error. The Σ² term is how much slower a whole subnet runs than its blocks did
    alone as it grows (its working set outgrows the caches each block had to itself; the ratio whole / Σ
    rises with the subnet's size, same section). A table serving several families also holds one fit
    per family (`families`); the union fit above is for the others.
    """

    model: Literal["affine", "quadratic"] = "quadratic"
    slope: float
    per_block_ms: float
    quad_per_ms: float = 0.0
    intercept_ms: float
    residual_pct: float  # in-sample RMS relative error of the fit
    n_subnets: int
    fitted_at: str
    samples: list[CalibrationSample] = Field(default_factory=list)
    families: dict[str, FamilyFit] = Field(default_factory=dict)
    call_overhead_ms: float = 0.0  # tables fitted before it was measured hold 0: raw block sums

    def net_sum(self, block_sum_ms: float, n_blocks: int, call_overhead_ms: float | None = None) -> float:
        """The block sum less the calls a whole subnet does not make (overhead: this table's, or one re-measured)."""
        overhead = self.call_overhead_ms if call_overhead_ms is None else call_overhead_ms
        return block_sum_ms - max(n_blocks - 1, 0) * overhead

    def apply(
        self, block_sum_ms: float, n_blocks: int, family: str | None = None, call_overhead_ms: float | None = None
    ) -> float:
        net = self.net_sum(block_sum_ms, n_blocks, call_overhead_ms)
        fit = self.families.get(family or "")
        if fit is not None:
            return fit.apply(net, n_blocks)
        return self.slope * net + self.per_block_ms * n_blocks + self.quad_per_ms * net**2 + self.intercept_ms

    def residual_for(self, family: str | None = None) -> float:
        fit = self.families.get(family or "")
        return fit.residual_pct if fit is not None else self.residual_pct


class Validation(_Strict):
    """Out-of-sample check of the predictor against whole subnets measured end to end."""

    date: str
    n_samples: int
    seed: int
    median_abs_pct_error: float
    within_5pct: float
    within_10pct: float
    p90_abs_pct_error: float
    worst_pct_error: float
    same_window_median_abs_pct_error: float  # blocks re-measured beside the subnets: model error alone
    repeatability_pct: float  # median |a−b|/mean of the same subnet measured twice: the floor
    drift_pct: float = 0.0  # blocks now vs the table's figures: the machine's speed moved this much
    block_sum_median_pct_error: float | None = None  # raw block sum vs measured, before calibration (signed)
    host: str
    # Drift (deploy/latency/drift.py): the figures above are for the predictions a deploy makes, i.e. rescaled
    # by the drift check when the device's speed moved beyond the table's error; the table's own beside them.
    correction_factor: float = 1.0
    uncorrected_median_abs_pct_error: float | None = None
    uncorrected_p90_abs_pct_error: float | None = None
    # "tables validate" (subnets measured end to end), or "transfer cross-validation" (held-out folds of
    # the N subnets a transfer was fitted on; replaced by the next `tables validate`)
    # "lm generation loops": a language model's TTFT or ms/token, timed in whole generation loops
    # (deploy/lm/validate.py; no blocks are re-timed beside them, so same-window equals the table's own figure)
    source: Literal["tables validate", "transfer cross-validation", "lm generation loops"] = "tables validate"


class BuildState(_Strict):
    """Present only in a build's `<table>.partial.json`: what a rerun resumes."""

    rebuild: bool = False  # measuring every block again: the old table's entries are not reused
    started: str


class LatencyTable(_Strict):
    schema_version: int = SCHEMA_VERSION
    provenance: Provenance
    build: BuildState | None = None
    entries: list[Entry] = Field(default_factory=list)
    calibration: Calibration | None = None
    validation: Validation | None = None  # of the target's default model
    validations: dict[str, Validation] = Field(default_factory=dict)  # per family validated on this table

    def validation_for(self, family: str | None = None) -> Validation | None:
        """The family's own out-of-sample figures, else the default model's."""
        return self.validations.get(family or "", self.validation)

    def require_calibration(self) -> Calibration:
        """The calibration, or a one-line error with the command that fits it (an interrupted build leaves none)."""
        if self.calibration is not None:
            return self.calibration
        from deploy.errors import TableUncalibratedError

        name = self.provenance.target
        fix = {
            "estimated": f"`elastic-deploy tables estimate --target {name}`",
            "transferred": f"`elastic-deploy tables transfer --target {name} --from SOURCE`",
        }.get(self.provenance.method, f"`elastic-deploy tables build --target {name} --recalibrate`")
        raise TableUncalibratedError(
            f"the latency table of {name} has no calibration (an interrupted build?), so its block sums would be "
            f"15-50% off whole subnets; calibrate it with {fix}"
        )

    def index(self) -> dict[BlockKey, Entry]:
        return {e.key: e for e in self.entries}

    def upsert(self, entry: Entry) -> None:
        self.entries = [e for e in self.entries if e.key != entry.key] + [entry]
        self.entries.sort(key=lambda e: e.key)

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: Path, target: str | None = None) -> LatencyTable:
        """The table in `path`; given `target`, it must be that target's own (its provenance names it)."""
        if not Path(path).exists():
            name = target or Path(path).stem
            raise TableNotFoundError(f"no latency table at {path}; build it with `make latency-tables TARGET={name}`")
        data = read_json(path)
        try:
            table = cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigFileError(
                pydantic_error_line(path, exc) + "; regenerate it with `make latency-tables`"
            ) from None
        if table.schema_version != SCHEMA_VERSION:
            raise ConfigFileError(
                f"{path}: schema_version {table.schema_version}, this tool reads {SCHEMA_VERSION}; "
                "regenerate it with `make latency-tables`"
            )
        if target is not None and table.provenance.target != target:
            # Its blocks were timed on another device or runtime, so its predictions are not this target's. An
            # estimated or transferred table names its own target here and its source in estimate/transfer.
            raise ConfigFileError(
                f"{path}: the latency table of target {table.provenance.target}, not of {target}: remove it and "
                f"rebuild with `elastic-deploy tables build --target {target}`, or copy {target}'s own table there"
            )
        return table


def safety_margin_pct(table: LatencyTable, family: str | None = None) -> float:
    """Budget margin from the table's out-of-sample error (p90, the family's own if validated), or the
    calibration fit's if unvalidated."""
    validation = table.validation_for(family)
    if validation is not None:
        return validation.p90_abs_pct_error
    source_p90 = (table.provenance.estimate or {}).get("source_validation_p90_pct")
    if source_p90 is not None:  # estimated: the source's own error; the device factor's error is systematic
        return float(source_p90)
    if table.calibration is not None:
        return 2 * table.calibration.residual_for(family)
    return 25.0
