"""bench(target): measure the deployed artifact again on its target and gate on budget, prediction and baseline.

Reads dist/<target>/manifest.json and the artifact beside it (sha256 checked), measures it on the target's
runner with a seeded random input of the model's input shape, and writes bench/<target>.json and
bench/<target>.md. Three checks gate the result (BenchGateError, after everything is written):

- budget: the measured median must not exceed the target's budget_ms;
- prediction: |measured − predicted| / predicted must be within the tolerance (default 15%, or the
  target's bench_tolerance_pct);
- baseline: the measured median must not regress more than 10% against bench/baselines/<target>.json
  (written only with update_baseline; a missing baseline is reported, not a failure).
"""

from __future__ import annotations

import glob
import logging
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from deploy import workspace
from deploy.backends import Artifact, Backend, get_backend
from deploy.errors import BenchGateError, ConfigFileError, DeployError, InvalidArgumentError
from deploy.executors.base import Executor
from deploy.executors.local import LocalExecutor
from deploy.flows.bench_drift import bench_drift
from deploy.io import atomic_write_json, atomic_write_text, read_json
from deploy.latency.lock import measuring
from deploy.latency.stats import INPUT_SEED, LatencyStats, MeasureProtocol, seeded_inputs
from deploy.latency.table import now_iso
from deploy.models.checkpoint import sha256_tree
from deploy.packaging.manifest import ImageManifest, inside
from deploy.runners.local import cpu_model, usable_cores
from deploy.targets import Target, load_target

log = logging.getLogger(__name__)

MAX_SUSTAINED_S = 86_400.0  # a day: longer is a typo (and inf would never end)

DEFAULT_TOLERANCE_PCT = 15.0
REGRESSION_PCT = 10.0
GOVERNOR_PATH = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
THERMAL_GLOB = "/sys/class/thermal/thermal_zone*"


@dataclass(frozen=True)
class Check:
    """One gate: passed is None where it could not be evaluated (e.g. no baseline yet)."""

    name: str
    passed: bool | None
    measured_ms: float
    reference_ms: float | None
    limit: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "measured_ms": self.measured_ms,
            "reference_ms": self.reference_ms,
            "limit": self.limit,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class BenchResult:
    target: str
    json_path: Path
    md_path: Path
    measured: LatencyStats
    predicted_ms: float
    budget_ms: float
    checks: tuple[Check, ...]
    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)


def bench_dir() -> Path:
    return workspace.root() / "bench"


def baseline_path(target_name: str) -> Path:
    return bench_dir() / "baselines" / f"{target_name}.json"


def _load_manifest(target_name: str, folder: Path) -> ImageManifest:
    path = folder / "manifest.json"
    if not path.exists():
        raise DeployError(
            f"no deployed artifact for {target_name}: {path} does not exist; "
            f"run `make deploy TARGET={target_name}` first"
        )
    manifest = ImageManifest.load(path)
    if manifest.target != target_name:
        raise ConfigFileError(
            f"{path}: a manifest of target {manifest.target}, not {target_name}; run `make deploy TARGET={target_name}`"
        )
    return manifest


def load_artifact(manifest: ImageManifest, folder: Path) -> tuple[Artifact, dict[str, np.ndarray]]:
    """The Artifact beside the manifest (sha256 checked) and a seeded input of its inputs' shapes (random
    floats; zeros for integer inputs such as token ids, always a valid id)."""
    target = manifest.target
    entry = manifest.artifact
    # the artifact is read beside the manifest whatever folder it was written to (dist folders move)
    path = inside(folder, Path(entry.path).name, named_by=folder / "manifest.json", field="artifact.path")
    if not path.exists():
        raise DeployError(
            f"artifact {path} named by {folder / 'manifest.json'} is missing; run `make deploy TARGET={target}`"
        )
    digest = sha256_tree(path)
    if digest != entry.sha256:
        raise DeployError(
            f"artifact {path} has sha256 {digest[:12]}… but the manifest says {entry.sha256[:12]}…; "
            f"it was changed after deploying: run `make deploy TARGET={target}` again"
        )
    if entry.status == "deferred":
        raise DeployError(
            f"{target}'s artifact was not compiled here ({path.name} is the ONNX to build on the device); "
            f"bench it on the device after `elastic-deploy compile --target {target} {path}`"
        )
    specs = {i.name: (tuple(i.shape), np.dtype(i.dtype)) for i in entry.inputs}
    inputs = seeded_inputs(specs)
    artifact = Artifact(
        path=path,
        backend=entry.backend,
        precision=manifest.precision,
        input_names=tuple(specs),
        output_names=tuple(entry.output_names),
        options=dict(entry.options),
    )
    return artifact, inputs


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def thermal_readings() -> list[dict[str, Any]] | None:
    readings = []
    for zone in sorted(glob.glob(THERMAL_GLOB)):
        raw = _read(Path(zone) / "temp")
        if raw is None or not raw.lstrip("-").isdigit():
            continue
        readings.append({"zone": Path(zone).name, "type": _read(Path(zone) / "type"), "temp_c": int(raw) / 1000})
    return readings or None


def environment(backend: Backend, artifact: Artifact, manifest: ImageManifest) -> dict[str, Any]:
    """Where the numbers were taken (this host: the local runner measures here)."""
    return {
        "runtime": {backend.name: backend.version(), "python": platform.python_version(), "numpy": np.__version__},
        "deployed_with": manifest.versions,
        "threads": artifact.options.get("intra_op_num_threads"),
        "cpu_model": cpu_model(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "scaling_governor": _read(GOVERNOR_PATH),
        "thermal": thermal_readings(),
    }


def sustained_run(measure_round: Callable[[], LatencyStats], seconds: float, first: LatencyStats) -> dict[str, Any]:
    """Keep measuring one round at a time for `seconds`; drift = last-quarter vs first-quarter median."""
    medians = list(first.round_medians_ms)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        medians.extend(measure_round().round_medians_ms)
    elapsed = time.monotonic() - start
    q = len(medians) // 4
    first_q = float(np.median(medians[:q])) if q else None
    last_q = float(np.median(medians[-q:])) if q else None
    drift = None if not q or not first_q else round((last_q - first_q) / first_q * 100, 3)
    return {
        "seconds": round(elapsed, 3),
        "rounds": len(medians),
        "first_quarter_median_ms": first_q,
        "last_quarter_median_ms": last_q,
        "drift_pct": drift,
        "round_medians_ms": medians,
    }


def _pct(a: float, b: float) -> float:
    return (a - b) / b * 100


def evaluate(
    measured_ms: float,
    *,
    target: Target,
    predicted_ms: float,
    tolerance_pct: float,
    baseline: dict[str, Any] | None,
    baseline_file: Path,
    artifact_sha256: str = "",
    corrected_ms: float | None = None,
) -> tuple[Check, ...]:
    """The three gates. `corrected_ms`: the prediction rescaled by the drift check made just before (bench_drift.py);
    the prediction gate then compares with it, and says both."""
    name = target.name
    budget = Check(
        "budget",
        measured_ms <= target.budget_ms,
        measured_ms,
        target.budget_ms,
        f"measured median <= budget {target.budget_ms} ms",
        f"measured median {measured_ms:.3f} ms vs budget {target.budget_ms:.3f} ms",
    )
    reference = predicted_ms if corrected_ms is None else corrected_ms
    err = _pct(measured_ms, reference)
    now = "" if corrected_ms is None else f", {corrected_ms:.3f} ms drift-corrected now"
    prediction = Check(
        "prediction",
        abs(err) <= tolerance_pct,
        measured_ms,
        reference,
        f"|measured - predicted| / predicted <= {tolerance_pct:g}%",
        f"measured {measured_ms:.3f} ms vs predicted {predicted_ms:.3f} ms{now} "
        f"({err:+.1f}%, tolerance ±{tolerance_pct:g}%)",
    )
    if baseline is None:
        base = Check(
            "baseline",
            None,
            measured_ms,
            None,
            f"regression <= {REGRESSION_PCT:g}%",
            f"no baseline at {baseline_file}; record one with `elastic-deploy bench --target {name} --update-baseline`",
        )
    else:
        ref = float(baseline["measured"]["median_ms"])
        change = _pct(measured_ms, ref)
        same = baseline.get("artifact_sha256") == artifact_sha256
        base = Check(
            "baseline",
            change <= REGRESSION_PCT,
            measured_ms,
            ref,
            f"regression <= {REGRESSION_PCT:g}%",
            f"measured {measured_ms:.3f} ms vs baseline {ref:.3f} ms ({change:+.1f}%, "
            f"baseline of {baseline.get('created', '?')}{'' if same else ', another artifact'})",
        )
    return budget, prediction, base


def _gate_message(name: str, failed: list[Check], md_path: Path) -> str:
    fixes = {
        "budget": "pick a smaller subnet (re-deploy) or raise budget_ms",
        "prediction": f"re-measure the table (`make latency-tables TARGET={name}`) or set bench_tolerance_pct",
        "baseline": f"find the slowdown, or accept it with `elastic-deploy bench --target {name} --update-baseline`",
    }
    parts = "; ".join(f"{c.name} check failed: {c.detail}, {fixes[c.name]}" for c in failed)
    return f"bench {name}: {parts} (details in {md_path})"


def _drift_row(drift: dict[str, Any] | None) -> list[str]:
    """The drift check made before measuring (deploy/latency/drift.py)."""
    if drift is None:
        return []
    check = drift["correction"]["drift_check"]
    how = (
        f"reference blocks {check['drift_pct']:+.1f}% vs the table (threshold {check['threshold_pct']:.1f}%)"
        if check
        else f"no drift check ({drift['correction']['drift_check_skipped']})"
    )
    return [
        f"| drift-corrected | table {drift['table_prediction_ms']:.3f} ms × {drift['drift_factor']:.3f} = "
        f"{drift['corrected_prediction_ms']:.3f} ms; {how} |"
    ]


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    m, env, sus = report["measured"], report["environment"], report["sustained"]
    thermal = env["thermal"]
    thermal_text = ", ".join(f"{t['zone']} ({t['type']}) {t['temp_c']:.1f} °C" for t in thermal) if thermal else "n/a"
    mark = {True: "pass", False: "**FAIL**", None: "not evaluated"}
    lines = [
        f"# bench {report['target']}: subnet {report['subnet']} ({report['created']})",
        "",
        "| | |",
        "|---|---|",
        f"| artifact | `{report['artifact']['path']}` (sha256 {report['artifact']['sha256'][:12]}…) |",
        f"| measured | median {m['median_ms']:.3f} ms, p90 {m['p90_ms']:.3f} ms, round CV {m['cv']:.1%}, "
        f"{m['n_runs']} runs in {len(m['round_medians_ms'])} rounds on {m['where']} |",
        f"| predicted | {report['predicted_ms']:.3f} ms (manifest) |",
        *_drift_row(report.get("drift")),
        f"| budget | {report['budget_ms']} ms |",
        f"| runtime | {', '.join(f'{k} {v}' for k, v in env['runtime'].items())}; {env['threads']} threads |",
        f"| CPU | {env['cpu_model']} ({env['usable_cores']} usable cores), "
        f"governor {env['scaling_governor'] or 'n/a'} |",
        f"| thermal | {thermal_text} |",
    ]
    if sus is not None:
        drift = "n/a (fewer than 4 rounds)" if sus["drift_pct"] is None else f"{sus['drift_pct']:+.1f}%"
        lines.append(
            f"| sustained | {sus['rounds']} rounds over {sus['seconds']:.1f} s; last vs first quarter median: {drift} |"
        )
    lines += ["", "| check | result | detail |", "|---|---|---|"]
    lines += [f"| {c['name']} | {mark[c['passed']]} | {c['detail']} |" for c in report["checks"]]
    atomic_write_text(path, "\n".join([*lines, ""]))


# Over ~80 lines: one bench reads top to bottom (load, drift, measure, sustained run, gates, write);
# its parts are the helpers above.
def bench(
    target_name: str,
    *,
    dist_dir: Path | None = None,
    update_baseline: bool = False,
    sustained_s: float = 0.0,
    tolerance_pct: float | None = None,
    say: Callable[[str], None] = log.info,
    executor: Executor | None = None,
    drift: bool = True,
) -> BenchResult:
    """Measure dist/<target>/ (or dist_dir, the folder holding manifest.json) and gate the result.

    On the target's first device; with the Ray executor, in that device's actor on the cluster."""
    if not (math.isfinite(sustained_s) and 0 <= sustained_s <= MAX_SUSTAINED_S):
        raise InvalidArgumentError(
            f"sustained run of {sustained_s} s: give a number of seconds from 0 to {MAX_SUSTAINED_S:.0f} (one day)"
        )
    target = load_target(target_name)
    folder = Path(dist_dir) if dist_dir is not None else workspace.dist_dir() / target.name
    manifest = _load_manifest(target.name, folder)
    artifact, inputs = load_artifact(manifest, folder)
    backend = get_backend(manifest.backend)
    runner = (executor or LocalExecutor()).runner(target)
    protocol: MeasureProtocol = target.measurement.protocol()
    # drift (deploy/flows/bench_drift.py): reference blocks first; the prediction gate uses the prediction corrected now
    session_for = (executor or LocalExecutor()).session
    checked = bench_drift(target, manifest, session_for=session_for, say=say) if drift else None
    with measuring(runner, f"bench {target.name}"):  # one device, one measurement at a time
        measured = runner.benchmark(backend, artifact, inputs, protocol)
        sustained = None
        if sustained_s > 0:
            one_round = replace(protocol, warmup_runs=0, rounds=1, max_retries=0)
            sustained = sustained_run(
                lambda: runner.benchmark(backend, artifact, inputs, one_round), sustained_s, measured
            )

    tolerance = tolerance_pct if tolerance_pct is not None else (target.bench_tolerance_pct or DEFAULT_TOLERANCE_PCT)
    base_file = baseline_path(target.name)
    baseline = read_json(base_file) if base_file.exists() else None
    predicted = float(manifest.latency.predicted_ms)
    checks = evaluate(
        measured.median_ms,
        target=target,
        predicted_ms=predicted,
        tolerance_pct=tolerance,
        baseline=baseline,
        baseline_file=base_file,
        artifact_sha256=manifest.artifact.sha256,
        corrected_ms=None if checked is None else checked.corrected_ms,
    )
    if checked is not None:  # an observation, with its provenance, for the deploys' refit (observations.py)
        checked.observe(measured, manifest.artifact.sha256)
    failed = [c for c in checks if c.passed is False]
    report: dict[str, Any] = {
        "target": target.name,
        "subnet": manifest.subnet.id,
        "artifact": {"path": str(artifact.path), "sha256": manifest.artifact.sha256},
        "artifact_sha256": manifest.artifact.sha256,
        "measured": measured.to_json(),
        "predicted_ms": predicted,
        "prediction_error_pct": round(_pct(measured.median_ms, predicted), 3),
        "budget_ms": target.budget_ms,
        "tolerance_pct": tolerance,
        "regression_pct": REGRESSION_PCT,
        "protocol": protocol.to_json(),
        "input": f"seeded random normal (seed {INPUT_SEED}) of the ONNX input shape",
        "sustained": sustained,
        "environment": environment(backend, artifact, manifest),
        "checks": [c.to_json() for c in checks],
        "passed": not failed,
        "baseline": str(base_file) if baseline is not None else None,
        "created": now_iso(),
        "drift": None if checked is None else checked.to_json(),
    }
    out = bench_dir()
    json_path, md_path = out / f"{target.name}.json", out / f"{target.name}.md"
    atomic_write_json(json_path, report)
    write_markdown(md_path, report)
    if update_baseline:
        if failed:
            say(f"baseline {base_file} NOT updated: this run failed its gate")
        else:
            atomic_write_json(base_file, report)
            say(f"baseline {base_file} updated: {measured.median_ms:.3f} ms")
    say(
        f"measured {measured.median_ms:.3f} ms (p90 {measured.p90_ms:.3f}, cv {measured.cv:.1%}, {measured.n_runs} "
        f"runs on {measured.where}); predicted {predicted:.3f} ms; budget {target.budget_ms} ms"
        + (
            ""
            if sustained is None or sustained["drift_pct"] is None
            else f"; sustained {sustained['seconds']:.0f} s drift {sustained['drift_pct']:+.1f}%"
        )
    )
    for c in checks:
        say(f"{c.name}: {'pass' if c.passed else 'FAIL' if c.passed is False else 'not evaluated'} — {c.detail}")
    say(f"wrote {json_path} and {md_path}")
    result = BenchResult(target.name, json_path, md_path, measured, predicted, target.budget_ms, checks, report)
    if failed:
        raise BenchGateError(_gate_message(target.name, failed, md_path))
    return result
