"""Targets are data: one YAML per device under targets/, validated here."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    model_validator,
)

from deploy import workspace
from deploy.errors import ConfigFileError, InvalidTargetNameError, UnknownTargetError
from deploy.io import pydantic_error_line, read_yaml
from deploy.latency.stats import MeasureProtocol
from deploy.runners.specs import LocalSpec, RunnerSpecBase, parse_runner

NAME_RE = re.compile(r"^[a-z0-9-]+$")
MAX_THREADS = 256  # more than any device this tool measures has cores: a larger number is a typo


def _number(value: Any) -> Any:
    """YAML reads `true` as a bool and pydantic would take it as 1: a number field wants a number."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {str(value).lower()} (a YAML boolean)")
    return value


# Numbers of a target file. Floats stay lax otherwise: PyYAML reads `1e9` (no dot) as a string.
Int = Annotated[int, BeforeValidator(_number), Field(strict=True)]
Float = Annotated[float, BeforeValidator(_number), Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceInfo(_Strict):
    name: str
    cpu: str = ""
    notes: str = ""


DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]*$")


Runner = Annotated[SerializeAsAny[RunnerSpecBase], BeforeValidator(parse_runner)]


class DeviceSpec(_Strict):
    """One physical unit of the target's device model (a phone on a USB hub, a board, a host).

    `ray_resources` pins its measuring actor to the Ray node that declares them (`ray start
    --resources '{"pixel7-a": 1}'` on the host the phone is plugged into): a local runner measures
    wherever its actor runs, an adb runner needs the host that sees the phone.
    """

    id: str = Field(pattern=DEVICE_ID_RE.pattern)  # recorded in the table entries it measures
    runner: Runner = LocalSpec()
    ray_resources: dict[str, Float] = Field(default_factory=dict)


def default_device_id(runner: RunnerSpecBase) -> str:
    """The id of a target's only device when it gives `runner:` rather than `devices:`."""
    where = runner.where()
    # A host such as fe80::1%eth0 is a valid address but not a valid id: other characters become '_'.
    return re.sub(r"[^A-Za-z0-9_.:@-]", "_", f"{runner.kind}:{where}" if where else runner.kind)


class MeasurementSpec(_Strict):
    warmup_runs: Int = Field(20, ge=0)
    min_runs: Int = Field(20, ge=1)
    min_time_s: Float = Field(0.02, ge=0)
    rounds: Int = Field(20, ge=1)
    cv_max: Float = Field(0.02, gt=0)  # gate on the median's relative standard error
    max_retries: Int = Field(2, ge=0)
    cooldown_s: Float = Field(0.0, ge=0)
    calibration_subnets: Int = Field(16, ge=2)  # per model served: each family gets its own fit

    def protocol(self) -> MeasureProtocol:
        return MeasureProtocol(
            warmup_runs=self.warmup_runs,
            min_runs=self.min_runs,
            min_time_s=self.min_time_s,
            rounds=self.rounds,
            cv_max=self.cv_max,
            max_retries=self.max_retries,
            cooldown_s=self.cooldown_s,
        )


class AnchorSpec(_Strict):
    """A published latency of a model we can rebuild (deploy/latency/anchors.py) and measure on the source."""

    model: str  # name in deploy.latency.anchors.ANCHORS
    device: str
    device_ms: Float = Field(gt=0)  # at the target's first precision
    device_ms_by_precision: dict[str, Float] = Field(default_factory=dict)  # other precisions' published figures
    source: str  # where the figure was published (repository @ commit, file)


class EstimateSpec(_Strict):
    """How this target's ESTIMATED table is made: a measured table scaled by one factor.

    factor = anchor.device_ms / (anchor measured on the source target) × correction, or `factor`
    given directly (with its derivation) where no anchor was published for the device.
    """

    source_target: str  # a target whose table is measured (same block keys)
    anchor: AnchorSpec | None = None
    correction: Float = Field(1.0, gt=0)  # e.g. a newer chip than the anchor's device
    factor: Float | None = Field(None, gt=0)  # used when there is no anchor
    derivation: str  # the reasoning behind correction / factor, in words
    expected_error_pct: Float = Field(gt=0)
    expected_error: str  # what the expected error rests on


class LMBudget(_Strict):
    """A language-model target: the prompt and context lengths its latency table is measured at, and its budgets.

    Time to first token (prefill of a prompt of `ttft_prompt` tokens) and the time per generated token with
    `decode_context` tokens of context; at least one budget. Static-shape backends (LiteRT, Core ML) pad a
    prompt to the smallest of `prompt_buckets` and hold a cache of the model's max_context."""

    prompt_buckets: tuple[Int, ...] = (16, 32, 64, 128)  # prefill timed at these prompt lengths
    kv_lengths: tuple[Int, ...] = (32, 64, 128, 256)  # decode timed at these context lengths (dynamic cache)
    ttft_ms: Float | None = Field(None, gt=0)
    ttft_prompt: Int = Field(64, ge=1)
    ms_per_token: Float | None = Field(None, gt=0)
    decode_context: Int = Field(128, ge=1)
    max_artifact_mb: Float | None = Field(None, gt=0)
    generate_tokens: Int = Field(32, ge=2)  # tokens of each generation loop `tables validate` and deploys time
    calibration_prompts: Int = Field(8, ge=4)  # whole-slice graphs per regime in a table's calibration window

    @model_validator(mode="after")
    def _consistent(self) -> LMBudget:
        if self.ttft_ms is None and self.ms_per_token is None:
            raise ValueError("an lm target needs ttft_ms or ms_per_token (or both)")
        for name, values in (("prompt_buckets", self.prompt_buckets), ("kv_lengths", self.kv_lengths)):
            if not values or list(values) != sorted(set(values)) or values[0] < 1:
                raise ValueError(f"{name} must be increasing positive lengths, got {list(values)}")
        if self.ttft_prompt > self.prompt_buckets[-1]:
            raise ValueError(f"ttft_prompt {self.ttft_prompt} is longer than the largest prompt bucket")
        if not self.kv_lengths[0] <= self.decode_context <= self.kv_lengths[-1]:
            raise ValueError(f"decode_context {self.decode_context} must lie within kv_lengths {list(self.kv_lengths)}")
        return self


class Target(_Strict):
    name: str
    description: str = ""
    device: DeviceInfo
    backend: str
    runner: Runner = LocalSpec()
    # Several units of the same device model: `tables build --executor ray` spreads blocks across them.
    # None: the one device `runner` describes.
    devices: tuple[DeviceSpec, ...] | None = None
    precision: Literal["fp32", "fp16", "int8_dynamic", "int8"] = "fp32"  # int8 = full integer
    # Precisions the selector may choose among (elastic precision); the first is `precision`, whose
    # table is <name>.json; the others' are <name>.<precision>.json. None: `precision` only.
    precisions: tuple[Literal["fp32", "fp16", "int8_dynamic", "int8"], ...] | None = None
    max_accuracy_drop_pp: Float = Field(1.0, ge=0)  # a precision losing more val accuracy is rejected
    threads: Int = Field(1, ge=1, le=MAX_THREADS)
    budget_ms: Float = Field(gt=0)  # no budget at all: a large number, e.g. 1e9
    max_params: Int | None = Field(None, gt=0)
    model: str  # the default model of `make deploy TARGET=…`
    # Every model this target serves (MODEL=… may pick any); its table holds the union of their blocks,
    # and blocks with the same key are shared across families. None: `model` only.
    models: tuple[str, ...] | None = None
    parity_atol: Float = Field(1e-4, gt=0)
    measurement: MeasurementSpec = MeasurementSpec()
    bench_tolerance_pct: Float | None = Field(None, gt=0)  # `bench` gate on |measured - predicted|; default 15
    # The backend's own options, checked against its declared schema (backend.options_model) on load.
    backend_options: dict[str, Any] = Field(default_factory=dict)
    estimate: EstimateSpec | None = None  # present when no device is at hand to measure the table
    # A language-model target (deploy/lm): prefill/decode latency tables and TTFT / per-token budgets. Its
    # budget_ms, when not given, is the TTFT budget (else the per-token one).
    lm: LMBudget | None = None

    @model_validator(mode="before")
    @classmethod
    def _lm_budget_ms(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("lm"), dict) and "budget_ms" not in data:
            budget = data["lm"].get("ttft_ms") or data["lm"].get("ms_per_token")
            if budget is None:
                raise ValueError("an lm target needs lm.ttft_ms or lm.ms_per_token (or both)")
            data = {**data, "budget_ms": budget}
        return data

    @model_validator(mode="after")
    def _primary_precision_first(self) -> Target:
        if self.precisions is not None and (not self.precisions or self.precisions[0] != self.precision):
            raise ValueError(f"precisions must start with precision ({self.precision}), got {list(self.precisions)}")
        return self

    @model_validator(mode="after")
    def _devices_well_formed(self) -> Target:
        if self.devices is None:
            return self
        if not self.devices:
            raise ValueError("devices is empty: list at least one (id and runner), or remove it to use runner")
        ids = [d.id for d in self.devices]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"device id(s) {', '.join(twice)} appear more than once; give each device its own id")
        if "runner" in self.model_fields_set and self.runner != self.devices[0].runner:
            raise ValueError("give either runner (one device) or devices (several, each with its runner), not both")
        # Whatever measures on one device (deploy, bench, the local executor) uses the first one.
        object.__setattr__(self, "runner", self.devices[0].runner)
        return self

    @model_validator(mode="after")
    def _threads_fit_this_machine(self) -> Target:
        """A local runner measures here: more threads than this machine's CPUs would time contention."""
        if self.estimate is not None:  # threads describe the estimated device, which is not this machine
            return self
        cpus = os.cpu_count() or 1
        # A device pinned by ray_resources measures on the Ray node that declares them, not necessarily here.
        here = any(d.runner.measures_in_process and not d.ray_resources for d in self.device_list)
        if here and self.threads > cpus:
            raise ValueError(
                f"threads: {self.threads} is more than the {cpus} CPUs of this machine, where the local runner "
                f"measures; give at most {cpus}, or measure on a larger machine through an ssh runner"
            )
        return self

    @model_validator(mode="after")
    def _backend_and_runners_fit(self) -> Target:
        """The backend exists and accepts `backend_options`; every device's runner can run its artifacts."""
        from deploy.backends import BACKENDS
        from deploy.runners import RUNNERS

        backend = BACKENDS.load(self.backend)  # an unknown name lists the known ones
        try:
            backend.options_model.model_validate(self.backend_options)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ()))
            raise ValueError(f"backend_options.{field} for backend {self.backend}: {first.get('msg')}") from None
        for device in self.device_list:
            runner = RUNNERS.load(device.runner.kind)
            if runner.backends is not None and self.backend not in runner.backends:
                raise ValueError(
                    f"runner {device.runner.kind} runs {', '.join(runner.backends)} artifacts, not {self.backend}: "
                    "change the backend or the runner"
                )
        return self

    @property
    def device_list(self) -> tuple[DeviceSpec, ...]:
        """The units that measure for this target: `devices`, or the one that `runner` describes."""
        if self.devices is not None:
            return self.devices
        return (DeviceSpec(id=default_device_id(self.runner), runner=self.runner),)

    def on_device(self, device: DeviceSpec) -> Target:
        """This target measured on one of its devices only (its runner is that device's)."""
        return self.model_copy(update={"runner": device.runner, "devices": None})

    @property
    def served_models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.model, *(self.models or ()))))

    @property
    def search_precisions(self) -> tuple[str, ...]:
        return tuple(self.precisions or (self.precision,))

    def at_precision(self, precision: str) -> Target:
        """This target compiled and measured at another of its precisions (its own table path)."""
        if precision not in self.search_precisions:
            from deploy.errors import UnsupportedPrecisionError

            raise UnsupportedPrecisionError(
                f"target {self.name} does not list precision {precision}; it has {', '.join(self.search_precisions)} "
                f"(add it to precisions in targets/{self.name}.yaml)"
            )
        return self.model_copy(update={"precision": precision})

    @property
    def table_file(self) -> str:
        primary = self.search_precisions[0]
        suffix = "" if self.precision == primary else f".{self.precision}"
        return f"{self.name}{suffix}.json"

    @property
    def table_path(self) -> Path:
        """The table in force: the workspace's, else the shipped one (else where the workspace's would be)."""
        return workspace.resolve("latency_tables", self.table_file)

    @property
    def table_write_path(self) -> Path:
        """Where builds, estimates and validations write this table: always the workspace, never the package."""
        return workspace.tables_dir() / self.table_file


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidTargetNameError(
            f"target name '{name}' is invalid: use lower-case letters, digits and '-' only (e.g. host-cpu-ort)"
        )
    return name


def known_targets(directory: Path | None = None) -> list[str]:
    """The workspace's targets and the shipped ones (or those of `directory` alone)."""
    if directory is not None:
        return sorted(p.stem for p in directory.glob("*.yaml"))
    return workspace.names("targets", ".yaml")


def load_target(name: str, directory: Path | None = None) -> Target:
    """targets/<name>.yaml of the workspace, else the shipped one (or of `directory` alone)."""
    check_name(name)
    path = directory / f"{name}.yaml" if directory is not None else workspace.resolve("targets", f"{name}.yaml")
    if not path.exists():
        known = ", ".join(known_targets(directory)) or "(none)"
        where = directory or " and ".join(str(d) for d in workspace.search_dirs("targets"))
        raise UnknownTargetError(f"unknown target '{name}'; known targets: {known} (files in {where})")
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: expected a mapping of fields, got {type(data).__name__}")
    try:
        target = Target.model_validate(data)
    except ValidationError as exc:
        raise ConfigFileError(pydantic_error_line(path, exc)) from None
    if target.name != name:
        raise ConfigFileError(f"{path}: field 'name' is '{target.name}' but the file is {name}.yaml")
    return target
