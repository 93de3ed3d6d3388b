"""The adb runner: benchmark_model output parsing, and the runner against a fake `adb` program on PATH.

The fake is a real executable the runner runs through subprocess: it logs its argv (one JSON list a
line) and answers `devices`, `getprop`, `ls`, `mkdir`, `push` and benchmark_model commands from a JSON
config, printing the real captured output in data/benchmark_model_output.txt with the steady-state avg
rewritten per round. The phone itself is only used by the requires_device test at the end.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from deploy.backends.base import Artifact
from deploy.errors import MeasurementError, RunnerError, UnsupportedOpError
from deploy.latency.stats import MeasureProtocol
from deploy.models.checkpoint import sha256_file
from deploy.runners import adb as adb_module
from deploy.runners import get_runner
from deploy.runners.adb import (
    AdbRunner,
    ParsedRun,
    parse_benchmark_output,
    parse_executor_runner_output,
    stats_from_runs,
)
from deploy.runners.specs import AdbSpec

DATA = Path(__file__).parent / "data"
SERIAL = "R58M1234ABC"
STEADY = "count=876 first=1272 curr=1730 min=810 max=6334 avg=1096.48 std=476"
PROTOCOL = MeasureProtocol(warmup_runs=3, min_runs=7, rounds=3, cv_max=1.0, max_retries=0)
TFLITE = SimpleNamespace(name="tflite")  # the runner does not call the backend: benchmark_model runs the file

# LiteRT/TensorFlow >= 2.16 builds add p5/median/p95 (real lines from the Arm Learning Path "TensorFlow
# Benchmarking" on a GCP Axion VM, github.com/ArmDeveloperEcosystem/arm-learning-paths).
VARIANT_PERCENTILES = """\
INFO: Initialized session in 6.395ms.
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=153 first=2761 curr=2885 min=2605 max=18080 avg=3243.58 std=2165 p5=2630 median=2761 p95=5331

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=337 first=2881 curr=2703 min=2605 max=20356 avg=2942.27 std=1190 p5=2647 median=2781 p95=3169

INFO: Inference timings in us: Init: 6395, First inference: 2761, Warmup (avg): 3243.58, Inference (avg): 2942.27
INFO: Memory footprint delta from the start of the tool (MB): init=39.4531 overall=40.8281
"""
# Older builds without the INFO: prefix and with op profiling, whose summary repeats a "Timings
# (microseconds)" line (real lines from an NXP MCUXpresso benchmark demo readme).
VARIANT_PROFILED = """\
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=6746 first=129 curr=43 min=34 max=1039 avg=39.1513 std=17

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=2254 first=85 curr=60 min=51 max=85 avg=58.311 std=2

Inference timings in us: Init: 2450, First inference: 129, Warmup (avg): 39.1513, Inference (avg): 58.311
Timings (microseconds): count=1 curr=147
Memory (bytes): count=0
Timings (microseconds): count=2254 first=70 curr=47 min=37 max=70 avg=45.5075 std=2
Memory (bytes): count=0
"""
# Only the stat summarizer's line (no phase headers), as in the brief's format.
VARIANT_TIMINGS_ONLY = (
    "Timings (microseconds): count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929\n"
)

FAKE_ADB = """#!{python}
import json, os, pathlib, sys, time
cfg = json.loads(pathlib.Path(os.environ["FAKE_ADB_CONFIG"]).read_text())
args = sys.argv[1:]
with open(cfg["log"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:1] == ["-s"]:
    args = args[2:]
if args == ["devices"]:
    print("List of devices attached")
    for serial, state in cfg["devices"]:
        print(serial + "\\t" + state)
    print()
    sys.exit(0)
if args[0] == "push":
    print(args[1] + ": 1 file pushed, 0 skipped. 12.3 MB/s (4096 bytes in 0.001s)")
    sys.exit(0)
if args[0] == "shell":
    cmd = " ".join(args[1:])
    if cmd == "getprop ro.product.model":
        time.sleep(cfg.get("hang_s", 0))
        print(cfg["model"])
        sys.exit(0)
    if cmd.startswith("ls "):
        if cfg["binary"]:
            print(args[-1])
            sys.exit(0)
        print("ls: " + args[-1] + ": No such file or directory", file=sys.stderr)
        sys.exit(1)
    if cmd.startswith("mkdir "):
        sys.exit(0)
    if "--graph=" in cmd:
        name = cmd.split("--graph=")[1].split()[0].rsplit("/", 1)[-1]
        outputs = cfg["outputs"][name]
        counter = pathlib.Path(cfg["state"]) / name
        n = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(n + 1))
        sys.stdout.write(pathlib.Path(outputs[n % len(outputs)]).read_text())
        sys.exit(cfg.get("bench_exit", 0))
    if "--model_path=" in cmd:  # executor_runner: its pid first, then its log (or, Android build, to logcat)
        name = cmd.split("--model_path=")[1].split()[0].rsplit("/", 1)[-1]
        outputs = cfg["outputs"][name]
        counter = pathlib.Path(cfg["state"]) / name
        n = int(counter.read_text()) if counter.exists() else 0
        counter.write_text(str(n + 1))
        pid = 4000 + n
        print("elastic-deploy-pid=" + str(pid))
        text = pathlib.Path(outputs[n % len(outputs)]).read_text()
        if cfg.get("et_logcat"):
            (pathlib.Path(cfg["state"]) / ("logcat-" + str(pid))).write_text(text)
        else:
            sys.stderr.write(text)  # the posix PAL logs to stderr
        sys.exit(cfg.get("bench_exit", 0))
if args[0] == "logcat":
    pid = [a for a in args if a.startswith("--pid=")][0].split("=")[1]
    buffered = pathlib.Path(cfg["state"]) / ("logcat-" + pid)
    if buffered.exists():
        sys.stdout.write(buffered.read_text())
    sys.exit(0)
print("fake adb: unexpected " + repr(args), file=sys.stderr)
sys.exit(1)
"""


def real_output(name: str = "benchmark_model_output.txt") -> str:
    text = (DATA / name).read_text()
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


def et_log(times_ms: list[float], *, logcat: bool = False, pid: int = 4000, load_ms: float = 12.5) -> str:
    """executor_runner's log of one invocation in ExecuTorch >= 1.3's format.

    No verbatim capture of that version's per-execution lines was found, so this is built from its format
    strings: examples/portable/executor_runner/executor_runner.cpp @74403e2f91 (pytorch/executorch #18802):
    "Model loaded in %f ms.", "Iteration %u of %u: %f ms", "Model executed successfully %u time(s) in %f ms.";
    prefixed as the posix PAL prints them (runtime/platform/default/posix.cpp, "%c %02u:%02u:%02u.%06lu
    executorch:%s:%zu] %s", as in data/executor_runner_output.txt) or as `adb logcat` (threadtime) shows
    the android PAL's (runtime/platform/default/android.cpp: tag "ExecuTorch", the message alone)."""
    n = len(times_ms)
    messages = [
        "Resetting threadpool with num threads = 4",
        "Model file /data/local/tmp/elastic-deploy/x.pte is loaded.",
        "Using method forward",
        f"Model loaded in {load_ms:f} ms.",
        *(f"Iteration {i + 1} of {n}: {t:f} ms" for i, t in enumerate(times_ms)),
        f"Model executed successfully {n} time(s) in {sum(times_ms):f} ms.",
        "1 outputs: ",
    ]
    if logcat:
        lines = [
            f"12-02 10:15:{i // 1000:02d}.{i % 1000:03d}  {pid}  {pid} I ExecuTorch: {m}"
            for i, m in enumerate(messages)
        ]
    else:
        lines = [f"I 00:00:00.{i:06d} executorch:executor_runner.cpp:{500 + i}] {m}" for i, m in enumerate(messages)]
    return "\n".join(lines) + "\nOutputX 0: tensor(sizes=[1, 10], [0.1, 0.2])\n"


class FakeAdb:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "argv.log"
        self.config = {"log": str(self.log), "state": str(root), "devices": [[SERIAL, "device"]],
                       "model": "Pixel 7", "binary": True, "outputs": {}}  # fmt: skip

    def write(self) -> None:
        (self.root / "config.json").write_text(json.dumps(self.config))

    def serve(
        self,
        artifact: Artifact,
        avgs_us: list[float] | None = None,
        text: str | None = None,
        texts: list[str] | None = None,
    ) -> str:
        """Make benchmark runs of this artifact print the real output with these steady-state avgs, in turn
        (or the given texts, in turn)."""
        name = f"{sha256_file(artifact.path)[:16]}{'.pte' if artifact.backend == 'executorch' else '.tflite'}"
        if texts is None:
            texts = [text] if text is not None else [real_output().replace(STEADY, STEADY.replace("1096.48", f"{a}"))
                                                     for a in avgs_us or [1096.48]]  # fmt: skip
        files = []
        for i, body in enumerate(texts):
            path = self.root / f"{name}.{i}.out"
            path.write_text(body)
            files.append(str(path))
        self.config["outputs"][name] = files
        self.write()
        return name

    def calls(self) -> list[list[str]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []


@pytest.fixture
def fake_adb(tmp_path, monkeypatch) -> FakeAdb:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "adb"
    script.write_text(FAKE_ADB.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    fake = FakeAdb(tmp_path)
    monkeypatch.setenv("FAKE_ADB_CONFIG", str(tmp_path / "config.json"))
    fake.write()
    return fake


def make_artifact(tmp_path: Path, name: str, backend: str = "tflite", threads: int = 2) -> Artifact:
    path = tmp_path / name / ("model.pte" if backend.startswith("executorch") else "model.tflite")
    path.parent.mkdir(parents=True)
    path.write_bytes(f"not really a flatbuffer: {name}".encode())
    options = {"threads": threads}  # as the tflite backend records target.threads
    return Artifact(path, backend, "fp32", ("input",), ("logits",), options)


def runner_for(**overrides) -> AdbRunner:
    runner = get_runner(AdbSpec(**{"serial": SERIAL, **overrides}))
    assert isinstance(runner, AdbRunner)
    return runner


# --- parsing -------------------------------------------------------------------------------------------


def test_parse_benchmark_output_reads_steady_and_warmup_in_ms_from_real_output():
    run = parse_benchmark_output(real_output())
    assert (run.steady.count, run.steady.avg_ms, run.steady.min_ms) == (876, 1.09648, 0.81)
    assert (run.steady.max_ms, run.steady.std_ms, run.steady.first_ms) == (6.334, 0.476, 1.272)
    assert run.steady.median_ms is None and run.steady.figure_ms == 1.09648
    assert run.warmup is not None and (run.warmup.count, run.warmup.avg_ms, run.warmup.max_ms) == (
        277,
        1.76078,
        201.009,
    )
    assert (run.init_ms, run.first_inference_ms) == (25.573, 201.009)
    assert (run.memory_init_mb, run.memory_overall_mb) == (15.4688, 43.2852)


def test_parse_benchmark_output_reads_percentiles_when_the_build_prints_them():
    run = parse_benchmark_output(VARIANT_PERCENTILES)
    assert (run.steady.count, run.steady.avg_ms) == (337, 2.94227)
    assert (run.steady.p5_ms, run.steady.median_ms, run.steady.p95_ms) == (2.647, 2.781, 3.169)
    assert run.steady.figure_ms == 2.781, "a round's figure is its median where the tool prints one"
    assert run.warmup is not None and run.warmup.median_ms == 2.761
    assert run.memory_overall_mb == 40.8281


def test_parse_benchmark_output_takes_the_phase_line_not_the_profiler_summary_when_op_profiling_is_on():
    run = parse_benchmark_output(VARIANT_PROFILED)
    assert (run.steady.count, run.steady.avg_ms, run.steady.std_ms) == (2254, 0.058311, 0.002)
    assert run.warmup is not None and run.warmup.count == 6746 and run.memory_init_mb is None


def test_parse_benchmark_output_reads_a_bare_timings_line():
    run = parse_benchmark_output(VARIANT_TIMINGS_ONLY)
    assert (run.steady.count, run.steady.avg_ms, run.steady.std_ms) == (50, 79.732, 1.929)
    assert run.warmup is None and run.init_ms is None


def test_parse_benchmark_output_reads_a_single_run_warmup_and_logcat_prefixes():
    text = (
        "07-08 15:33:56.256 I/tflite  ( 5395): Running benchmark for at least 1 iterations and at least 0.5 seconds\n"
        "07-08 15:33:58.992 I/tflite  ( 5395): count=1 curr=2732148 p5=2732148 median=2732148 p95=2732148\n"
        "07-08 15:33:58.993 I/tflite  ( 5395): Running benchmark for at least 10 iterations and at least 1 seconds\n"
        "07-08 15:34:26.201 I/tflite  ( 5395): count=10 first=2653894 curr=2709263 min=2640862 max=3025403 "
        "avg=2.71985e+06 std=105101 p5=2640862 median=2709263 p95=3025403\n"
    )
    run = parse_benchmark_output(text)
    assert run.warmup is not None and (run.warmup.count, run.warmup.avg_ms, run.warmup.std_ms) == (1, 2732.148, 0.0)
    assert run.steady.avg_ms == pytest.approx(2719.85) and run.steady.median_ms == 2709.263


def test_parse_benchmark_output_raises_measurement_error_quoting_the_last_line_when_garbage():
    text = "INFO: STARTING!\nERROR: Could not open '/data/local/tmp/x.tflite'.\nERROR: Benchmarking failed.\n\n"
    with pytest.raises(MeasurementError, match=r"no timings \(last line: 'ERROR: Benchmarking failed\.'\)"):
        parse_benchmark_output(text)


# --- the runner against the fake adb ---------------------------------------------------------------------


def test_adb_runner_raises_runner_error_naming_apt_get_install_adb_when_adb_is_missing(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(RunnerError, match=r"adb not found: sudo apt-get install adb") as info:
        runner_for().describe()
    assert "`adb devices`" in str(info.value) and "\n" not in str(info.value)


def test_adb_runner_raises_runner_error_mentioning_adb_devices_when_no_phone_is_listed(fake_adb):
    fake_adb.config["devices"] = []
    fake_adb.write()
    with pytest.raises(RunnerError, match=r"not connected \(adb devices lists: none\).*USB debugging.*`adb devices`"):
        runner_for().describe()
    with pytest.raises(RunnerError, match=r"no Android phone is ready for adb.*`adb devices` lists it as 'device'"):
        runner_for(serial=None).describe()


def test_adb_runner_says_to_accept_the_prompt_when_unauthorized(fake_adb):
    fake_adb.config["devices"] = [[SERIAL, "unauthorized"]]
    fake_adb.write()
    with pytest.raises(RunnerError, match=rf"phone {SERIAL} is unauthorized: .*accept the .*RSA key prompt"):
        runner_for().describe()


def test_adb_runner_says_to_reconnect_when_offline(fake_adb):
    fake_adb.config["devices"] = [[SERIAL, "offline"]]
    fake_adb.write()
    with pytest.raises(RunnerError, match=rf"phone {SERIAL} is offline: reconnect"):
        runner_for().describe()


def test_adb_runner_asks_for_a_serial_when_several_phones_are_connected(fake_adb):
    fake_adb.config["devices"] = [["A1", "device"], ["B2", "device"]]
    fake_adb.write()
    with pytest.raises(RunnerError, match=r"2 phones are connected \(A1, B2\): set runner.serial"):
        runner_for(serial=None).describe()


def test_adb_runner_describe_names_serial_model_and_cores_and_caches_getprop(fake_adb):
    runner = runner_for(serial=None, cpu_mask="f0")
    assert runner.describe() == f"adb:{SERIAL} (Pixel 7, cores f0)"
    assert runner.describe() == f"adb:{SERIAL} (Pixel 7, cores f0)" and runner.where == f"adb:{SERIAL}"
    getprops = [c for c in fake_adb.calls() if "getprop" in c]
    assert getprops == [["-s", SERIAL, "shell", "getprop", "ro.product.model"]]


def test_adb_runner_benchmark_many_pushes_once_runs_interleaved_and_returns_parsed_medians(fake_adb, tmp_path):
    a, b = make_artifact(tmp_path, "a"), make_artifact(tmp_path, "b", threads=4)
    name_a = fake_adb.serve(a, [1096.48, 1200.0, 1000.0])
    name_b = fake_adb.serve(b, [2000.0, 2100.0, 1900.0])
    runner = runner_for(cpu_mask="f0")
    progress: list[str] = []
    stats = runner.benchmark_many(TFLITE, [(a, {}), (b, {}), (a, {})], PROTOCOL, on_progress=progress.append)

    calls = fake_adb.calls()
    pushes = [c for c in calls if c[2] == "push"]
    assert pushes == [["-s", SERIAL, "push", str(a.path), f"/data/local/tmp/elastic-deploy/{name_a}"],
                      ["-s", SERIAL, "push", str(b.path), f"/data/local/tmp/elastic-deploy/{name_b}"]]  # fmt: skip
    benches = [c for c in calls if c[2] == "shell" and "--graph=" in c[3]]
    assert benches[0] == ["-s", SERIAL, "shell",
                          f"taskset f0 /data/local/tmp/benchmark_model --graph=/data/local/tmp/elastic-deploy/{name_a} "
                          "--num_threads=2 --use_xnnpack=true --warmup_runs=3 --num_runs=7 --min_secs=0 "
                          "--enable_op_profiling=false"]  # fmt: skip
    assert "--num_threads=4" in benches[1][3]
    order = [re.search(r"--graph=\S+/(\w+)\.tflite", c[3]).group(1) for c in benches]
    assert order == [name_a[:16], name_b[:16], name_a[:16]] * 3, "round-robin: every item once per round"
    assert calls.index(["-s", SERIAL, "shell", "ls", "/data/local/tmp/benchmark_model"]) < calls.index(pushes[0])

    # item 0 and item 2 share artifact a, so they take turns through a's three outputs (6 runs)
    assert [s.where for s in stats] == [f"adb:{SERIAL}"] * 3
    assert stats[1].median_ms == 2.0 and stats[1].round_medians_ms == (2.0, 2.1, 1.9)
    assert stats[1].n_runs == 3 * 876 and stats[1].mean_ms == pytest.approx(2.0)
    assert stats[1].std_ms > 0.476 and stats[1].cv == pytest.approx(0.05) and stats[1].trimmed == 0
    assert stats[0].round_medians_ms == (1.09648, 1.0, 1.2) and stats[2].round_medians_ms == (1.2, 1.09648, 1.0)
    assert stats[0].median_ms == stats[2].median_ms == 1.09648
    assert progress[0].startswith("pushing 3 artifact(s)") and progress[1] == "round 1/3: model.tflite [1/3]"

    runner.benchmark_many(TFLITE, [(b, {})], PROTOCOL)
    assert len([c for c in fake_adb.calls() if c[2] == "push"]) == 2, "a file already pushed is not pushed again"


def test_adb_runner_omits_taskset_and_sleeps_cooldown_between_runs(fake_adb, tmp_path, monkeypatch):
    a, b = make_artifact(tmp_path, "a"), make_artifact(tmp_path, "b")
    fake_adb.serve(a)
    fake_adb.serve(b)
    sleeps: list[float] = []
    monkeypatch.setattr(adb_module, "time", SimpleNamespace(sleep=sleeps.append))  # not subprocess's sleep
    protocol = MeasureProtocol(warmup_runs=1, min_runs=5, rounds=2, cv_max=1.0, max_retries=0, cooldown_s=0.25)
    stats = runner_for().benchmark_many(TFLITE, [(a, {}), (b, {})], protocol)
    benches = [c[3] for c in fake_adb.calls() if c[2] == "shell" and "--graph=" in c[3]]
    assert len(benches) == 4 and all(cmd.startswith("/data/local/tmp/benchmark_model --graph=") for cmd in benches)
    assert sleeps == [0.25] * 3 and stats[0].median_ms == 1.09648


def test_adb_runner_measures_all_items_again_when_a_median_is_too_noisy(fake_adb, tmp_path):
    a, b = make_artifact(tmp_path, "a"), make_artifact(tmp_path, "b")
    fake_adb.serve(a, [1000.0, 1500.0])
    fake_adb.serve(b)
    noisy = MeasureProtocol(warmup_runs=1, min_runs=5, rounds=2, cv_max=0.01, max_retries=1)
    progress: list[str] = []
    stats = runner_for().benchmark_many(TFLITE, [(a, {}), (b, {})], noisy, on_progress=progress.append)
    assert [len(s.round_medians_ms) for s in stats] == [4, 4], "every item gets the extra rounds, pooled"
    assert stats[0].n_runs == 4 * 876 and any("measuring all 2 again" in p for p in progress)
    assert progress[-1] == "round 2/2 (retry 1/1): model.tflite [2/2]"


def test_stats_from_runs_drops_a_throttled_round_with_its_runs_and_pools_mean_and_std():
    def run(avg_us: float, count: int = 100, std_us: float = 10.0) -> ParsedRun:
        return parse_benchmark_output(f"count={count} first=1 curr=1 min=1 max=1 avg={avg_us} std={std_us}\n")

    runs = [run(a) for a in (1000, 1010, 990, 1005, 995, 1000, 1002, 998)] + [run(5000, count=30)]
    stats = stats_from_runs(runs, "adb:x")
    assert stats.n_runs == 830 and stats.trimmed == 30 and len(stats.round_medians_ms) == 8
    assert stats.median_ms == 1.0 and stats.mean_ms == pytest.approx(1.0)
    assert stats.std_ms == pytest.approx((0.01**2 + np.var([1, 1.01, 0.99, 1.005, 0.995, 1, 1.002, 0.998])) ** 0.5)


def test_adb_runner_raises_runner_error_for_a_non_tflite_artifact(fake_adb, tmp_path):
    onnx = make_artifact(tmp_path, "onnx", backend="onnxruntime")
    with pytest.raises(RunnerError, match=r"runs \.tflite files with TFLite's benchmark_model.*onnxruntime artifact"):
        runner_for().benchmark(TFLITE, onnx, {}, PROTOCOL)
    assert fake_adb.calls() == [], "refused before touching the phone"


def test_adb_runner_says_how_to_get_benchmark_model_when_the_binary_is_missing(fake_adb, tmp_path):
    fake_adb.config["binary"] = False
    fake_adb.write()
    with pytest.raises(RunnerError, match=r"benchmark_model is not at /data/local/tmp/benchmark_model") as info:
        runner_for().benchmark(TFLITE, make_artifact(tmp_path, "a"), {}, PROTOCOL)
    message = str(info.value)
    assert "android_aarch64_benchmark_model" in message and "TFLite Model Benchmark Tool" in message
    assert "--config=android_arm64" in message and "chmod +x /data/local/tmp/benchmark_model" in message
    assert not [c for c in fake_adb.calls() if c[2] == "push"]


def test_adb_runner_raises_measurement_error_with_last_line_when_benchmark_model_fails(fake_adb, tmp_path):
    a = make_artifact(tmp_path, "a")
    fake_adb.serve(a, text="INFO: STARTING!\nERROR: Could not open 'model'.\nERROR: Benchmarking failed.\n")
    fake_adb.config["bench_exit"] = 1
    fake_adb.write()
    with pytest.raises(MeasurementError, match=r"'ERROR: Benchmarking failed\.'.* on adb:R58M1234ABC \(exit 1\)"):
        runner_for().benchmark(TFLITE, a, {}, PROTOCOL)


def test_adb_runner_raises_runner_error_naming_the_command_when_adb_times_out(fake_adb, monkeypatch):
    fake_adb.config["hang_s"] = 5
    fake_adb.write()
    monkeypatch.setattr(adb_module, "ADB_TIMEOUT_S", 0.5)
    runner = runner_for()
    runner._connect()
    with pytest.raises(RunnerError, match=rf"`adb -s {SERIAL} shell getprop ro.product.model` did not finish"):
        runner._adb("shell", "getprop", "ro.product.model", timeout=0.5)


# --- ExecuTorch's executor_runner ---------------------------------------------------------------------------


def test_parse_executor_runner_output_reads_the_total_from_real_output_of_an_older_runner():
    run = parse_executor_runner_output(real_output("executor_runner_output.txt"))
    assert (run.steady.count, run.steady.avg_ms, run.steady.figure_ms) == (1, 35.018417, 35.018417)
    assert run.warmup is None and run.init_ms is None and run.steady.median_ms is None


def test_parse_executor_runner_output_drops_warmup_and_takes_the_median_of_the_logged_executions():
    times = [9.0, 5.0, 4.0, 1.0, 1.2, 1.1, 3.0, 1.05]  # 3 warm-up executions, then 5 timed
    for text in (et_log(times), et_log(times, logcat=True)):
        run = parse_executor_runner_output(text, warmup_runs=3)
        assert run.steady.count == 5 and run.steady.median_ms == 1.1 and run.steady.figure_ms == 1.1
        assert (run.steady.min_ms, run.steady.max_ms, run.steady.first_ms) == (1.0, 3.0, 1.0)
        assert run.steady.avg_ms == pytest.approx(1.47) and run.steady.std_ms == pytest.approx(np.std(times[3:]))
        assert run.warmup is not None and run.warmup.count == 3 and run.warmup.max_ms == 9.0
        assert run.init_ms == 12.5 and run.first_inference_ms == 9.0


def test_parse_executor_runner_output_raises_measurement_error_quoting_the_last_line_when_no_timings():
    text = (
        "I 00:00:00.000526 executorch:executor_runner.cpp:82] Model file m.pte is loaded.\n"
        "E 00:00:00.000901 executorch:executor_runner.cpp:700] Execution of method forward failed with status 0x12\n"
    )
    with pytest.raises(MeasurementError, match=r"executor_runner printed no timings .*failed with status 0x12"):
        parse_executor_runner_output(text)
    with pytest.raises(MeasurementError, match=r"logged 2 execution\(s\), no more than the 3 warm-up runs"):
        parse_executor_runner_output(et_log([1.0, 2.0]), warmup_runs=3)


def test_adb_runner_times_a_pte_with_executor_runner_executions_threads_and_taskset(fake_adb, tmp_path):
    pte = make_artifact(tmp_path, "et", backend="executorch", threads=4)
    name = fake_adb.serve(pte, texts=[et_log([5.0] * 3 + [m] * 7) for m in (1.0, 1.2, 0.9)])
    stats = runner_for(cpu_mask="f0").benchmark_many(SimpleNamespace(name="executorch"), [(pte, {})], PROTOCOL)
    calls = fake_adb.calls()
    assert ["-s", SERIAL, "shell", "ls", "/data/local/tmp/executor_runner"] in calls
    assert [c for c in calls if c[2] == "push"] == [
        ["-s", SERIAL, "push", str(pte.path), f"/data/local/tmp/elastic-deploy/{name}"]
    ] and name.endswith(".pte")
    benches = [c[3] for c in calls if c[2] == "shell" and "--model_path=" in c[3]]
    assert benches[0] == (
        "echo elastic-deploy-pid=$$; exec taskset f0 /data/local/tmp/executor_runner "
        f"--model_path=/data/local/tmp/elastic-deploy/{name} --num_executions=10 --cpu_threads=4"
    )
    assert len(benches) == 3 and not [c for c in calls if c[2] == "logcat"], "stderr had the timings"
    (s,) = stats
    assert s.round_medians_ms == (1.0, 1.2, 0.9) and s.median_ms == 1.0 and s.n_runs == 3 * 7
    assert s.where == f"adb:{SERIAL}" and s.mean_ms == pytest.approx(31 / 30)


def test_adb_runner_reads_executor_runner_timings_from_logcat_by_its_pid_when_built_for_android(fake_adb, tmp_path):
    pte = make_artifact(tmp_path, "et", backend="executorch")
    fake_adb.serve(pte, texts=[et_log([2.0] * 3 + [0.5] * 7, logcat=True, pid=4000 + i) for i in range(3)])
    fake_adb.config["et_logcat"] = True
    fake_adb.write()
    stats = runner_for().benchmark(SimpleNamespace(name="executorch"), pte, {}, PROTOCOL)
    logcats = [c for c in fake_adb.calls() if c[2] == "logcat"]
    assert logcats[0] == ["-s", SERIAL, "logcat", "-d", "--pid=4000", "-s", "ExecuTorch:I"] and len(logcats) == 3
    assert stats.median_ms == 0.5 and stats.n_runs == 21


def test_adb_runner_raises_one_line_naming_both_program_formats_when_the_phone_runner_is_another_version(
    fake_adb, tmp_path
):
    pte = make_artifact(tmp_path, "et", backend="executorch")
    # runtime/executor/program.cpp's message, as the posix PAL prints it
    text = "E 00:00:00.000377 executorch:program.cpp:170] Program identifier 'ET13' != expected 'ET12'\n"
    fake_adb.serve(pte, text=text)
    fake_adb.config["bench_exit"] = 1
    fake_adb.write()
    with pytest.raises(RunnerError, match=r"reads ExecuTorch program format ET12 but the \.pte is ET13") as info:
        runner_for().benchmark(SimpleNamespace(name="executorch"), pte, {}, PROTOCOL)
    assert "another ExecuTorch version" in str(info.value) and "\n" not in str(info.value)


def test_adb_runner_raises_unsupported_op_naming_the_op_and_backend_when_the_phone_runner_lacks_a_kernel(
    fake_adb, tmp_path
):
    pte = make_artifact(tmp_path, "et", backend="executorch")
    text = (  # runtime/executor/method.cpp's messages
        "E 00:00:00.000601 executorch:method.cpp:822] Missing operator: [0] aten::sort.values\n"
        "E 00:00:00.000633 executorch:executor_runner.cpp:470] Loading of method forward failed with status 0x14\n"
    )
    fake_adb.serve(pte, text=text)
    with pytest.raises(UnsupportedOpError, match=r"no kernel for op 'aten::sort\.values' \(backend executorch\)"):
        runner_for().benchmark(SimpleNamespace(name="executorch"), pte, {}, PROTOCOL)


def test_adb_runner_says_how_to_build_executor_runner_when_it_is_missing(fake_adb, tmp_path):
    fake_adb.config["binary"] = False
    fake_adb.write()
    pte = make_artifact(tmp_path, "et", backend="executorch")
    with pytest.raises(RunnerError, match=r"executor_runner is not at /data/local/tmp/executor_runner") as info:
        runner_for().benchmark(SimpleNamespace(name="executorch"), pte, {}, PROTOCOL)
    assert "android-arm64-v8a" in str(info.value) and "EXECUTORCH_BUILD_XNNPACK=ON" in str(info.value)
    assert not [c for c in fake_adb.calls() if c[2] == "push"]


def test_adb_runner_refuses_a_coreml_delegated_pte(fake_adb, tmp_path):
    pte = make_artifact(tmp_path, "cm", backend="executorch_coreml")
    with pytest.raises(RunnerError, match=r"executorch_coreml artifact: set backend: tflite or executorch"):
        runner_for().benchmark(SimpleNamespace(name="executorch_coreml"), pte, {}, PROTOCOL)
    assert fake_adb.calls() == []


# --- a real phone ----------------------------------------------------------------------------------------


@pytest.mark.requires_device
@pytest.mark.skipif(
    not os.environ.get("ELASTIC_DEPLOY_ADB_SERIAL"),
    reason="needs an Android phone over adb: set ELASTIC_DEPLOY_ADB_SERIAL and push benchmark_model to /data/local/tmp",
)
def test_adb_runner_benchmarks_a_real_tflite_on_the_phone_with_sane_stats(tmp_path, tmp_root):
    import torch

    from deploy.backends import get_backend
    from deploy.export import hub
    from deploy.models import build
    from deploy.targets import DeviceInfo, Target

    serial = os.environ["ELASTIC_DEPLOY_ADB_SERIAL"]
    torch.manual_seed(0)
    supernet = build("matformer_vit_tiny").eval()
    target = Target(name="phone", device=DeviceInfo(name="phone"), backend="tflite", budget_ms=50.0,
                    model="matformer_vit_tiny", runner=AdbSpec(serial=serial))  # fmt: skip
    config = supernet.smallest()
    entry = hub.get_or_export(supernet.extract(config), supernet.example_inputs()[0], {"subnet": config.id},
                              tmp_path / "cache", with_program=False)  # fmt: skip
    backend = get_backend("tflite")
    artifact = backend.compile(entry, target, tmp_path / "artifact")
    runner = get_runner(target.runner)
    quick = MeasureProtocol(warmup_runs=5, min_runs=20, rounds=3, cv_max=1.0, max_retries=0)
    stats = runner.benchmark(backend, artifact, entry.reference_inputs(), quick)
    assert 0 < stats.median_ms < 1000 and stats.n_runs == 3 * 20 and len(stats.round_medians_ms) == 3
    assert stats.where == f"adb:{serial}" and serial in runner.describe()


@pytest.mark.requires_device
@pytest.mark.skipif(
    not os.environ.get("ELASTIC_DEPLOY_ADB_SERIAL"),
    reason="needs an Android phone over adb: set ELASTIC_DEPLOY_ADB_SERIAL and push executor_runner to /data/local/tmp",
)
def test_adb_runner_benchmarks_a_real_pte_on_the_phone_with_executor_runner(tmp_path, tmp_root):
    pytest.importorskip("executorch.exir", reason="executorch not installed: pip install 'elastic-deploy[executorch]'")
    import torch

    from deploy.backends import get_backend
    from deploy.export import hub
    from deploy.models import build
    from deploy.targets import DeviceInfo, Target

    serial = os.environ["ELASTIC_DEPLOY_ADB_SERIAL"]
    torch.manual_seed(0)
    supernet = build("matformer_vit_tiny").eval()
    target = Target(name="phone", device=DeviceInfo(name="phone"), backend="executorch", budget_ms=50.0,
                    model="matformer_vit_tiny", runner=AdbSpec(serial=serial))  # fmt: skip
    config = supernet.smallest()
    entry = hub.get_or_export(supernet.extract(config), supernet.example_inputs()[0], {"subnet": config.id},
                              tmp_path / "cache")  # fmt: skip
    backend = get_backend("executorch")
    artifact = backend.compile(entry, target, tmp_path / "artifact")
    runner = get_runner(target.runner)
    quick = MeasureProtocol(warmup_runs=5, min_runs=20, rounds=3, cv_max=1.0, max_retries=0)
    stats = runner.benchmark(backend, artifact, entry.reference_inputs(), quick)
    assert 0 < stats.median_ms < 1000 and len(stats.round_medians_ms) == 3
    assert stats.where == f"adb:{serial}"
