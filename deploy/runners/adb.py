"""The adb runner: pushes .tflite artifacts to an Android phone and times them with TFLite's benchmark_model.

Every call runs the real `adb` client with argument lists. Artifacts go to
`/data/local/tmp/elastic-deploy/<sha256 prefix>.tflite` (pushed once per file per runner), then every
round runs `benchmark_model` once per item, round-robin, pinned with `taskset` when runner.cpu_mask is set.

benchmark_model prints no per-run times, only count/min/max/avg/std (and, in newer builds,
p5/median/p95) per invocation. So one invocation is one round, and its figure is the round's median
where the tool printed one, else its mean: LatencyStats.median_ms is the median of those round figures,
round_medians_ms are the figures themselves (means on older binaries), mean_ms and std_ms are exact over
all runs (pooled from each round's count, avg and std), and p90_ms is the 90th percentile of the round
figures, not of single runs.

ExecuTorch .pte files are timed with ExecuTorch's own `executor_runner` (examples/portable/executor_runner,
built for arm64 with XNNPACK, docs/backends.md, "On a phone"): one invocation per round runs the program
`--num_executions` = warm-up + runs times with `--cpu_threads`. Since ExecuTorch 1.3 it logs every
execution ("Iteration i of N: X ms"), so the first warm-up executions are dropped and the round's figure
is the true median of its timed runs; older runners log only the total ("Model executed successfully N
time(s) in X ms."), whose mean (warm-up included) is then the round's figure. The Android build logs to
logcat (tag ExecuTorch) rather than stdout, so a round whose output holds no timings reads
`adb logcat -d --pid=<the runner's pid> -s ExecuTorch:I` instead (a build with
-DEXECUTORCH_PAL_DEFAULT=posix prints the same lines on stderr).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from deploy.backends.base import Artifact, Backend
from deploy.errors import MeasurementError, RunnerError, UnsupportedOpError
from deploy.latency.stats import (
    LatencyStats,
    MeasureProtocol,
    outlier_fence,
    relative_standard_error,
    stats_from_rounds,
)
from deploy.models.checkpoint import sha256_file
from deploy.runners.base import Progress, SingleFromMany
from deploy.runners.specs import AdbSpec
from deploy.runners.ssh import _last_line

log = logging.getLogger(__name__)

REMOTE_DIR = PurePosixPath("/data/local/tmp/elastic-deploy")
DEFAULT_BINARY = "/data/local/tmp/benchmark_model"
DEFAULT_ET_BINARY = "/data/local/tmp/executor_runner"
RUNNABLE = {"tflite": ".tflite", "executorch": ".pte"}  # artifact backend -> suffix on the phone
PID_MARK = "elastic-deploy-pid="
SHA_PREFIX = 16
ADB_TIMEOUT_S = 60.0
PUSH_TIMEOUT_S = 600.0
BENCH_TIMEOUT_S = 600.0  # benchmark_model's own --max_secs defaults to 150 s per phase
US_PER_MS = 1000.0
INSTALL_ADB = (
    "adb not found: sudo apt-get install adb (or Android platform-tools), then connect the phone with "
    "USB debugging on and check `adb devices`"
)
CHECK_DEVICES = "then check that `adb devices` lists it as 'device'"
_COUNT = re.compile(r"(?:^|\s|:\s)count=(\d+)((?:\s+\w+=[-+\w.]+)*)")
_FIELD = re.compile(r"(\w+)=([-+\d.eE]+)")
_HEADER = re.compile(r"Running benchmark for at least")
_SUMMARY = re.compile(
    r"Inference timings in us: Init: ([-+\d.eE]+), First inference: ([-+\d.eE]+), "
    r"Warmup \(avg\): ([-+\d.eE]+), Inference \(avg\): ([-+\d.eE]+)"
)
_MEMORY = re.compile(
    r"Memory footprint delta from the start of the tool \(MB\): init=([-+\d.eE]+) overall=([-+\d.eE]+)"
)
# executor_runner's ET_LOG lines (examples/portable/executor_runner/executor_runner.cpp); the prefix is the
# PAL's: "I 00:00:00.071498 executorch:executor_runner.cpp:291] " (posix) or logcat's (android).
_ET_ITERATION = re.compile(r"Iteration (\d+) of (\d+): ([-+\d.eE]+) ms")
_ET_TOTAL = re.compile(r"Model executed successfully (\d+) time\(s\) in ([-+\d.eE]+) ms")
_ET_LOADED = re.compile(r"Model loaded in ([-+\d.eE]+) ms")
_ET_IDENTIFIER = re.compile(r"Program identifier '(\w*)' != expected '(\w*)'")
_ET_MISSING_OP = re.compile(r"Missing operator: \[\d+\] ([\w:.]+)")
_ET_NO_BACKEND = re.compile(r"Backend (\w+) is not registered")
_PID = re.compile(re.escape(PID_MARK) + r"(\d+)")


@dataclasses.dataclass(frozen=True)
class Timings:
    """One `count=... avg=...` line of benchmark_model, in milliseconds (the tool prints microseconds)."""

    count: int
    avg_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    first_ms: float | None = None
    median_ms: float | None = None  # p5/median/p95 appear in newer builds only
    p5_ms: float | None = None
    p95_ms: float | None = None

    @property
    def figure_ms(self) -> float:
        """The round's statistic: its median where the tool printed one, else its mean."""
        return self.median_ms if self.median_ms is not None else self.avg_ms


@dataclasses.dataclass(frozen=True)
class ParsedRun:
    steady: Timings  # the timed runs
    warmup: Timings | None = None
    init_ms: float | None = None
    first_inference_ms: float | None = None
    memory_init_mb: float | None = None
    memory_overall_mb: float | None = None


def _timings(count: int, fields: str) -> Timings:
    us = {k: float(v) for k, v in _FIELD.findall(fields)}
    ms = {k: round(v / US_PER_MS, 9) for k, v in us.items()}  # 9 places: exact for the printed µs
    curr = ms.get("curr", ms.get("avg", 0.0))  # a single run prints only `count=1 curr=...`
    avg = ms.get("avg", curr)
    return Timings(
        count,
        avg,
        ms.get("min", avg),
        ms.get("max", avg),
        ms.get("std", 0.0),
        ms.get("first"),
        ms.get("median"),
        ms.get("p5"),
        ms.get("p95"),
    )


def parse_benchmark_output(text: str) -> ParsedRun:
    """Timings of one benchmark_model invocation (classic TFLite and LiteRT builds, with or without op profiling).

    The count line after the first "Running benchmark for at least" header is the warm-up, the one after
    the last header the timed runs; output without headers falls back to its last count line with an avg
    (e.g. "Timings (microseconds): count=50 ... avg=... std=...").
    """
    phases: list[Timings] = []
    loose: list[Timings] = []
    after_header = False
    for line in text.splitlines():
        if _HEADER.search(line):
            after_header = True
            continue
        match = _COUNT.search(line)
        if match is None:
            continue
        timings = _timings(int(match.group(1)), match.group(2))
        if after_header:
            phases.append(timings)
            after_header = False
        elif "avg=" in match.group(2):
            loose.append(timings)
    if len(phases) >= 2:
        warmup, steady = phases[0], phases[-1]
    elif phases or loose:
        warmup, steady = None, (phases or loose)[-1]
    else:
        raise MeasurementError(f"benchmark_model printed no timings (last line: {_last_line(text) or 'no output'!r})")
    summary, memory = _SUMMARY.search(text), _MEMORY.search(text)
    return ParsedRun(
        steady=steady,
        warmup=warmup,
        init_ms=float(summary.group(1)) / US_PER_MS if summary else None,
        first_inference_ms=float(summary.group(2)) / US_PER_MS if summary else None,
        memory_init_mb=float(memory.group(1)) if memory else None,
        memory_overall_mb=float(memory.group(2)) if memory else None,
    )


def _timings_of(ms: Sequence[float]) -> Timings:
    """Timings of individual runs (executor_runner logs each), in the same shape as benchmark_model's."""
    values = np.asarray(ms, dtype=float)
    p5, median, p95 = (round(float(v), 9) for v in np.percentile(values, [5, 50, 95]))
    return Timings(
        count=len(values),
        avg_ms=round(float(values.mean()), 9),
        min_ms=float(values.min()),
        max_ms=float(values.max()),
        std_ms=round(float(values.std()), 9),
        first_ms=float(values[0]),
        median_ms=median,
        p5_ms=p5,
        p95_ms=p95,
    )


def parse_executor_runner_output(text: str, warmup_runs: int = 0) -> ParsedRun:
    """Timings of one executor_runner invocation of `--num_executions` = warmup_runs + timed runs.

    Per-execution lines (ExecuTorch >= 1.3): the first `warmup_runs` are the warm-up, the rest the timed
    runs. Only the total line (older runners): one figure, the mean over all executions, warm-up included.
    Raises MeasurementError (last line quoted) when it printed neither."""
    iterations = [float(m.group(3)) for m in _ET_ITERATION.finditer(text)]
    loaded = _ET_LOADED.search(text)
    init_ms = float(loaded.group(1)) if loaded else None
    if iterations:
        if len(iterations) <= warmup_runs:
            raise MeasurementError(
                f"executor_runner logged {len(iterations)} execution(s), no more than the {warmup_runs} warm-up runs"
            )
        warmup = _timings_of(iterations[:warmup_runs]) if warmup_runs else None
        steady = _timings_of(iterations[warmup_runs:])
        return ParsedRun(steady=steady, warmup=warmup, init_ms=init_ms, first_inference_ms=iterations[0])
    total = _ET_TOTAL.search(text)
    if total is None:
        raise MeasurementError(f"executor_runner printed no timings (last line: {_last_line(text) or 'no output'!r})")
    count, total_ms = int(total.group(1)), float(total.group(2))
    mean = round(total_ms / count, 9)
    return ParsedRun(steady=Timings(count, mean, mean, mean, 0.0), init_ms=init_ms)


def stats_from_runs(runs: Sequence[ParsedRun], where: str = "") -> LatencyStats:
    """LatencyStats of one item's rounds (one benchmark_model invocation each); see the module docstring.

    Median, p90, CV and the outlier rule (a round above Q3 + 3·IQR of the rounds is dropped, with its runs)
    come from stats_from_rounds over the round figures; mean and std are pooled over the kept rounds' runs.
    """
    steady = [run.steady for run in runs]
    figures = np.array([t.figure_ms for t in steady])
    base = stats_from_rounds([[f] for f in figures], where)
    kept = [t for t in steady if t.figure_ms <= outlier_fence(figures)]
    n_all, n_kept = sum(t.count for t in steady), sum(t.count for t in kept)
    mean = sum(t.count * t.avg_ms for t in kept) / n_kept
    var = sum(t.count * (t.std_ms**2 + (t.avg_ms - mean) ** 2) for t in kept) / n_kept
    return dataclasses.replace(
        base, mean_ms=round(mean, 6), std_ms=round(var**0.5, 6), n_runs=n_all, trimmed=n_all - n_kept
    )


class AdbRunner(SingleFromMany):
    name = "adb"
    spec_model = AdbSpec
    backends = ("tflite", "executorch")  # benchmark_model runs .tflite files, executor_runner .pte programs

    def __init__(self, spec: AdbSpec) -> None:
        self.spec = spec
        self.serial = spec.serial
        self.binary = spec.benchmark_binary or DEFAULT_BINARY
        self.cpu_mask = spec.cpu_mask
        self._model: str | None = None
        self._pushed: dict[str, PurePosixPath] = {}  # sha256 -> remote path, pushed by this runner
        self._binary_checked: set[str] = set()

    def binary_for(self, kind: str) -> str:
        """The benchmark program for artifacts of backend `kind` (runner.benchmark_binary, else the default)."""
        if self.spec.benchmark_binary:
            return self.spec.benchmark_binary
        return DEFAULT_ET_BINARY if kind == "executorch" else DEFAULT_BINARY

    @property
    def where(self) -> str:
        return f"adb:{self.serial}"

    def _adb(self, *args: str, timeout: float = ADB_TIMEOUT_S, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `adb [-s SERIAL] ARGS` (the one place adb is called); check=True raises on a non-zero exit."""
        argv = ["adb", *(["-s", self.serial] if self.serial else []), *args]
        log.debug("adb: %s", shlex.join(argv))
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout, check=False
            )
        except FileNotFoundError:
            raise RunnerError(INSTALL_ADB) from None
        except subprocess.TimeoutExpired:
            raise RunnerError(
                f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s: check the phone is awake and "
                f"connected, {CHECK_DEVICES}"
            ) from None
        if check and proc.returncode != 0:
            detail = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit {proc.returncode}"
            raise RunnerError(f"`{shlex.join(argv)}` failed ({detail}); {CHECK_DEVICES}")
        return proc

    def _connect(self) -> str:
        """The serial to use, after checking that `adb devices` shows it ready ('device' state)."""
        listed = {}
        for line in self._adb("devices", timeout=ADB_TIMEOUT_S).stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2:
                listed[parts[0]] = parts[1]
        usb = "connect the phone by USB with USB debugging on (Settings > Developer options)"
        if self.serial is None:
            ready = [s for s, state in listed.items() if state == "device"]
            if len(ready) > 1:
                raise RunnerError(
                    f"{len(ready)} phones are connected ({', '.join(ready)}): set runner.serial in the "
                    "target to one of them"
                )
            if not ready:
                seen = f" (adb sees {', '.join(f'{s} {st}' for s, st in listed.items())})" if listed else ""
                raise RunnerError(
                    f"no Android phone is ready for adb{seen}: {usb}, accept the RSA key prompt on "
                    f"the phone, {CHECK_DEVICES}"
                )
            self.serial = ready[0]
        state = listed.get(self.serial)
        if state is None:
            known = ", ".join(listed) or "none"
            raise RunnerError(
                f"phone {self.serial} is not connected (adb devices lists: {known}): {usb}, "
                f"{CHECK_DEVICES}, or fix runner.serial in the target"
            )
        if state == "unauthorized":
            raise RunnerError(
                f"phone {self.serial} is unauthorized: unlock it and accept the 'Allow USB "
                f"debugging?' RSA key prompt on the phone, {CHECK_DEVICES}"
            )
        if state != "device":
            raise RunnerError(
                f"phone {self.serial} is {state}: reconnect the USB cable (or `adb kill-server`), {CHECK_DEVICES}"
            )
        return self.serial

    def device_key(self) -> str:
        return f"adb:{self.serial or 'default'}"

    def describe(self) -> str:
        if self._model is None:
            self._connect()
            self._model = self._adb("shell", "getprop", "ro.product.model").stdout.strip() or "unknown model"
        return f"{self.where} ({self._model}, cores {self.cpu_mask or 'all'})"

    def _check_binary(self, kind: str = "tflite") -> None:
        binary = self.binary_for(kind)
        if binary in self._binary_checked:
            return
        proc = self._adb("shell", "ls", binary, check=False)
        if proc.returncode != 0 or "No such file" in proc.stdout + proc.stderr:
            parent = PurePosixPath(binary).parent
            if kind == "executorch":
                raise RunnerError(
                    f"executor_runner is not at {binary} on {self.where}: build ExecuTorch's executor_runner for "
                    "arm64 with XNNPACK from the release installed here (docs/backends.md, 'On a phone': cmake "
                    "--preset android-arm64-v8a -DEXECUTORCH_BUILD_EXECUTOR_RUNNER=ON -DEXECUTORCH_BUILD_XNNPACK=ON "
                    "...; or devtools/scripts/benchmark_android.sh of pytorch/executorch builds it), then "
                    f"`adb push executor_runner {parent} && adb shell chmod +x {binary}` "
                    "(or set runner.benchmark_binary in the target)"
                )
            raise RunnerError(
                f"benchmark_model is not at {binary} on {self.where}: download TFLite's prebuilt "
                "android_aarch64_benchmark_model nightly binary (LiteRT/TensorFlow docs page 'TFLite Model "
                "Benchmark Tool') or `bazel build -c opt --config=android_arm64 "
                "//tensorflow/lite/tools/benchmark:benchmark_model`, then "
                f"`adb push benchmark_model {parent} && adb shell chmod +x {binary}` "
                "(or set runner.benchmark_binary in the target)"
            )
        self._binary_checked.add(binary)

    def push(self, artifacts: Sequence[Artifact]) -> list[PurePosixPath]:
        """Remote paths of the artifacts, pushing each distinct file once (named by its sha256, so reusable)."""
        digests = {Path(a.path): sha256_file(Path(a.path)) for a in artifacts}
        suffixes = {Path(a.path): RUNNABLE.get(a.backend, Path(a.path).suffix) for a in artifacts}
        if any(d not in self._pushed for d in digests.values()):
            self._adb("shell", "mkdir", "-p", str(REMOTE_DIR))
        for path, digest in digests.items():
            if digest not in self._pushed:
                remote = REMOTE_DIR / f"{digest[:SHA_PREFIX]}{suffixes[path]}"
                self._adb("push", str(path), str(remote), timeout=PUSH_TIMEOUT_S)
                self._pushed[digest] = remote
        return [self._pushed[digests[Path(a.path)]] for a in artifacts]

    def bench_command(
        self, remote: PurePosixPath, threads: int, protocol: MeasureProtocol, kind: str = "tflite"
    ) -> str:
        """The remote shell command for one round of one artifact."""
        if kind == "executorch":
            argv = [
                *(["taskset", self.cpu_mask] if self.cpu_mask else []),
                self.binary_for(kind),
                f"--model_path={remote}",
                f"--num_executions={protocol.warmup_runs + protocol.min_runs}",
                f"--cpu_threads={threads}",
            ]
            # The pid first: an Android build logs its timings to logcat, read back by that pid.
            return f"echo {PID_MARK}$$; exec {shlex.join(argv)}"
        argv = [
            *(["taskset", self.cpu_mask] if self.cpu_mask else []),
            self.binary_for(kind),
            f"--graph={remote}",
            f"--num_threads={threads}",
            "--use_xnnpack=true",
            f"--warmup_runs={protocol.warmup_runs}",
            f"--num_runs={protocol.min_runs}",
            "--min_secs=0",  # exactly num_runs: rounds, not the tool's 1 s minimum, set the duration
            "--enable_op_profiling=false",
        ]
        return shlex.join(argv)

    def _run_round(self, command: str, kind: str = "tflite", protocol: MeasureProtocol | None = None) -> ParsedRun:
        proc = self._adb("shell", command, timeout=BENCH_TIMEOUT_S, check=False)
        output = proc.stdout + "\n" + proc.stderr
        if proc.returncode != 0 and re.search(r"error: (device|no devices|closed)|device offline", proc.stderr):
            raise RunnerError(f"lost {self.where} while benchmarking ({_last_line(proc.stderr)}); {CHECK_DEVICES}")
        try:
            if kind == "executorch":
                return self._executor_runner_round(output, protocol.warmup_runs if protocol else 0)
            return parse_benchmark_output(output)
        except MeasurementError as exc:
            raise MeasurementError(
                f"{exc} on {self.where} (exit {proc.returncode}); run `adb -s {self.serial} shell {command}` by hand"
            ) from None

    def _executor_runner_round(self, output: str, warmup_runs: int) -> ParsedRun:
        """executor_runner's timings from its own output, else from logcat by its pid (Android builds)."""
        if not (_ET_ITERATION.search(output) or _ET_TOTAL.search(output)):
            pid = _PID.search(output)
            if pid:
                log_args = ("logcat", "-d", f"--pid={pid.group(1)}", "-s", "ExecuTorch:I")
                output += "\n" + self._adb(*log_args, check=False).stdout
        self._raise_for_executor_runner_error(output)
        return parse_executor_runner_output(output, warmup_runs)

    def _raise_for_executor_runner_error(self, output: str) -> None:
        """One-line errors for what executor_runner says when it cannot run the file."""
        rebuild = "build executor_runner from the ExecuTorch release installed here (docs/backends.md, 'On a phone')"
        ident = _ET_IDENTIFIER.search(output)
        if ident:
            raise RunnerError(
                f"the executor_runner on {self.where} reads ExecuTorch program format {ident.group(2)} but the .pte is "
                f"{ident.group(1)}: it was built by another ExecuTorch version; {rebuild}"
            )
        missing = _ET_MISSING_OP.search(output)
        if missing:
            raise UnsupportedOpError(
                f"the executor_runner on {self.where} has no kernel for op '{missing.group(1)}' (backend executorch): "
                f"{rebuild}, with its portable and optimized kernels"
            )
        backend = _ET_NO_BACKEND.search(output)
        if backend:
            raise RunnerError(
                f"the executor_runner on {self.where} was built without {backend.group(1)}: {rebuild} "
                "with -DEXECUTORCH_BUILD_XNNPACK=ON"
            )

    def benchmark_many(
        self,
        backend: Backend,
        items: Sequence[tuple[Artifact, Mapping[str, np.ndarray]]],
        protocol: MeasureProtocol,
        on_progress: Progress | None = None,
        *,
        warn_noisy: bool = True,  # its gate only retries and reports progress: no warning to leave out
    ) -> list[LatencyStats]:
        """Rounds interleaved across items (round r runs item 0, 1, ...), with retries while too noisy."""
        if not items:
            return []
        artifacts = [artifact for artifact, _ in items]
        for artifact in artifacts:
            if artifact.backend not in RUNNABLE:
                raise RunnerError(
                    "the adb runner runs .tflite files with TFLite's benchmark_model and ExecuTorch .pte files "
                    f"(XNNPACK) with executor_runner, but {artifact.path} is a {artifact.backend} artifact: set "
                    "backend: tflite or executorch in the target"
                )
        kinds = [a.backend for a in artifacts]
        progress = on_progress or (lambda _msg: None)
        self._connect()
        for kind in dict.fromkeys(kinds):
            self._check_binary(kind)
        progress(f"pushing {len(artifacts)} artifact(s) to {self.where}")
        commands = [
            self.bench_command(remote, _threads(a), protocol, a.backend)
            for a, remote in zip(artifacts, self.push(artifacts), strict=True)
        ]
        runs: list[list[ParsedRun]] = [[] for _ in items]
        stats: list[LatencyStats] = []
        for attempt in range(protocol.max_retries + 1):
            for r in range(protocol.rounds):
                tag = f" (retry {attempt}/{protocol.max_retries})" if attempt else ""
                for i, command in enumerate(commands):
                    if protocol.cooldown_s > 0 and (attempt or r or i):
                        time.sleep(protocol.cooldown_s)  # let the phone cool: throttling skews later rounds
                    progress(
                        f"round {r + 1}/{protocol.rounds}{tag}: {Path(artifacts[i].path).name} [{i + 1}/{len(items)}]"
                    )
                    runs[i].append(self._run_round(command, kinds[i], protocol))
            stats = [stats_from_runs(item_runs, self.where) for item_runs in runs]
            if all(relative_standard_error(s) <= protocol.cv_max for s in stats):
                break
            if attempt < protocol.max_retries:
                progress(f"some item(s) above the precision gate; measuring all {len(items)} again")
        return stats


def _threads(artifact: Artifact) -> int:
    options = artifact.options  # the tflite and executorch backends record target.threads as "threads"
    return int(options.get("threads", options.get("num_threads", 1)))
