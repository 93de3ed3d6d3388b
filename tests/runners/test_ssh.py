"""The ssh runner against a real sshd on 127.0.0.1 (see conftest.py), and the remote benchmark itself."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from deploy.errors import RunnerError
from deploy.latency.build import build_table, partial_table_path
from deploy.latency.stats import MeasureProtocol
from deploy.latency.table import LatencyTable
from deploy.models.checkpoint import sha256_file
from deploy.runners import get_runner
from deploy.runners import ssh as ssh_module
from deploy.runners.remote_bench import main as remote_bench_main
from deploy.runners.specs import SshSpec
from deploy.runners.ssh import SshRunner
from deploy.targets import DeviceInfo, MeasurementSpec, Target

QUICK = MeasureProtocol(warmup_runs=2, min_runs=10, min_time_s=0.0, rounds=2, cv_max=1.0, max_retries=0)
FAST = MeasurementSpec(
    warmup_runs=2, min_runs=5, min_time_s=0.0, rounds=2, cv_max=10.0, max_retries=0, calibration_subnets=5
)


@pytest.fixture(autouse=True)
def remote_root(tmp_path, monkeypatch):
    """Keep the "remote" copies in a temp dir instead of the real ~/.cache of the user sshd runs as."""
    root = tmp_path / "remote-home"
    monkeypatch.setattr(ssh_module, "REMOTE_ROOT", root)
    return root


def spec_for(server, **overrides) -> SshSpec:
    fields = {
        "kind": "ssh",
        "host": server.host,
        "user": server.user,
        "port": server.port,
        "key_path": str(server.key),
        "python": server.python,
    }
    return SshSpec(**{k: v for k, v in {**fields, **overrides}.items() if k != "kind"})


def test_ssh_runner_benchmarks_an_ort_artifact_with_sane_stats(sshd, artifacts, remote_root, tmp_root):
    backend, items = artifacts
    runner = get_runner(spec_for(sshd))
    assert isinstance(runner, SshRunner) and runner.name == "ssh"
    stats = runner.benchmark(backend, *items[0], QUICK)
    assert 0 < stats.median_ms < 1000 and stats.p90_ms >= stats.median_ms
    assert stats.n_runs >= 2 * QUICK.min_runs and len(stats.round_medians_ms) == 2
    assert stats.where == f"ssh:{sshd.user}@127.0.0.1"
    copied = list(remote_root.glob("*/model.onnx"))
    assert len(copied) == 1 and sha256_file(copied[0]) == sha256_file(items[0][0].path)
    assert copied[0].parent.name == sha256_file(items[0][0].path)[:16]
    assert str(sshd.port) in runner.describe()


def test_ssh_runner_benchmark_many_keeps_order_and_skips_copies_already_there(
    sshd, artifacts, remote_root, tmp_root, monkeypatch
):
    backend, (large, small) = artifacts
    runner = get_runner(spec_for(sshd))
    first = runner.benchmark_many(backend, [large, small], QUICK)
    assert len(first) == 2 and first[0].median_ms > first[1].median_ms, "largest subnet slower than smallest"

    real_run = subprocess.run
    programs: list[str] = []

    def recording(argv, *args, **kwargs):
        programs.append(argv[0])
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(ssh_module.subprocess, "run", recording)
    again = runner.benchmark_many(backend, [small, small], QUICK)
    assert len(again) == 2 and all(s.median_ms > 0 for s in again)
    assert "scp" not in programs, "an artifact already on the host with the same sha256 is not copied again"
    assert len(list(remote_root.glob("*/model.onnx"))) == 2


def test_ssh_runner_raises_runner_error_naming_host_and_port_when_unreachable(sshd, artifacts, tmp_root):
    backend, items = artifacts
    port = sshd.unused_port()
    with pytest.raises(RunnerError, match=rf"cannot reach 127\.0\.0\.1 port {port}.*Connection refused"):
        get_runner(spec_for(sshd, port=port)).benchmark(backend, *items[0], QUICK)


def test_ssh_runner_raises_auth_error_when_key_is_not_authorised(sshd, artifacts, tmp_root):
    backend, items = artifacts
    with pytest.raises(RunnerError, match=r"authentication .*failed \(Permission denied\)") as info:
        get_runner(spec_for(sshd, key_path=str(sshd.wrong_key))).benchmark(backend, *items[0], QUICK)
    assert str(sshd.wrong_key) in str(info.value) and "\n" not in str(info.value)


def test_ssh_runner_raises_runner_error_when_remote_python_does_not_exist(sshd, artifacts, tmp_root):
    backend, items = artifacts
    runner = get_runner(spec_for(sshd, python="/nonexistent/bin/python3"))
    with pytest.raises(RunnerError, match=r"remote python '/nonexistent/bin/python3' was not found"):
        runner.benchmark(backend, *items[0], QUICK)


def test_ssh_runner_says_to_install_elastic_deploy_when_remote_python_lacks_it(sshd, artifacts, tmp_root):
    backend, items = artifacts
    bare = shutil.which("python3", path="/usr/bin:/bin")
    if bare is None or subprocess.run([bare, "-c", "import deploy"], cwd="/", capture_output=True).returncode == 0:
        pytest.skip("no system python3 without elastic-deploy to play a bare remote")
    with pytest.raises(RunnerError, match=r"cannot import deploy: `pip install elastic-deploy` there"):
        get_runner(spec_for(sshd, python=bare)).benchmark(backend, *items[0], QUICK)


def test_ssh_runner_raises_runner_error_when_remote_output_is_malformed(sshd, artifacts, tmp_root):
    backend, items = artifacts
    runner = get_runner(spec_for(sshd, python="/bin/echo"))  # prints its arguments: no JSON result
    with pytest.raises(RunnerError, match=r"printed no result"):
        runner.benchmark(backend, *items[0], QUICK)


def test_ssh_runner_reports_remote_benchmark_errors_on_one_line(sshd, artifacts, tmp_root):
    backend, items = artifacts
    bad = MeasureProtocol(rounds=0)
    with pytest.raises(RunnerError, match=r"benchmark on .* failed: invalid measurement protocol") as info:
        get_runner(spec_for(sshd)).benchmark(backend, *items[0], bad)
    assert "\n" not in str(info.value)


def ssh_target(server, **runner) -> Target:
    return Target(
        name="over-ssh",
        device=DeviceInfo(name="sshd on 127.0.0.1"),
        backend="onnxruntime",
        threads=1,
        budget_ms=1.0,
        model="matformer_vit_tiny",
        measurement=FAST,
        runner=spec_for(server, **runner),
    )


def test_table_build_through_ssh_produces_a_complete_calibrated_table(sshd, tiny, tmp_root):
    target = ssh_target(sshd)
    result = build_table(target, [tiny], progress=False)
    table = LatencyTable.load(result.path)
    assert set(table.index()) == set(tiny.all_blocks())
    assert table.provenance.runner == "ssh" and str(sshd.port) in table.provenance.host
    assert table.calibration is not None and table.calibration.n_subnets == 5
    assert all(e.median_ms > 0 and e.n_runs >= 10 for e in table.entries)


def test_table_build_keeps_earlier_entries_when_the_host_drops_mid_build(sshd, tiny, tmp_root, monkeypatch):
    real = SshRunner.benchmark_many
    calls = {"n": 0}

    def dropping(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            self.port = sshd.unused_port()  # the host stops answering while the third block is measured
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SshRunner, "benchmark_many", dropping)
    target = ssh_target(sshd)
    with pytest.raises(RunnerError, match=r"cannot reach 127\.0\.0\.1"):
        build_table(target, [tiny], progress=False)
    saved = LatencyTable.load(partial_table_path(target.table_path))
    assert len(saved.entries) == 2 and saved.calibration is None


def test_remote_bench_prints_one_json_line_with_stats_per_item(artifacts, capsys):
    _, (large, small) = artifacts
    protocol = json.dumps(QUICK.to_json())
    code = remote_bench_main(
        [
            "--artifact",
            str(large[0].path),
            "--items",
            f"{small[0].path},{small[0].path}",
            "--threads",
            "1",
            "--protocol",
            protocol,
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 1
    result = json.loads(lines[0])
    assert [item["path"] for item in result["items"]] == [str(large[0].path)] + [str(small[0].path)] * 2
    assert all(item["stats"]["median_ms"] > 0 for item in result["items"])
    assert {"hostname", "cpu", "cores"} <= set(result["host"])


def test_remote_bench_prints_error_json_and_exits_2_when_artifact_is_missing(tmp_path, capsys):
    code = remote_bench_main(["--artifact", str(tmp_path / "nope.onnx"), "--protocol", "{}"])
    result = json.loads(capsys.readouterr().out.strip())
    assert code == 2 and "does not exist" in result["error"]


# ssh measuring is the ssh table build test, bench the tests/flows/test_bench.py ones; this adds a deploy
@pytest.mark.extended
def test_bench_of_a_deployed_artifact_runs_through_ssh(sshd, shipped):
    """make bench on a target whose runner is ssh: the deployed artifact is copied and measured remotely."""
    import yaml

    from deploy.flows.bench import bench
    from deploy.flows.deploy import deploy

    deploy("host-cpu-ort", progress=False, measure=False)
    path = shipped / "targets" / "host-cpu-ort.yaml"
    data = yaml.safe_load(path.read_text())
    data["runner"] = spec_for(sshd).model_dump(exclude_none=True)
    data["measurement"].update(rounds=3, min_runs=5, min_time_s=0.0, max_retries=0)
    data["budget_ms"], data["bench_tolerance_pct"] = 1000.0, 1e6  # this test is about where, not how fast
    path.write_text(yaml.safe_dump(data))
    result = bench("host-cpu-ort")
    report = json.loads(result.json_path.read_text())
    assert result.passed and result.measured.median_ms > 0
    assert result.measured.where.startswith("ssh:")
    assert report["measured"]["n_runs"] >= 15


class SnapshotAfterBlocks:
    """The Ray executor, keeping the table as it stood when the last block came back (before calibration)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.after_blocks: LatencyTable | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def spread(self, session, keys, make_item):
        yield from self.inner.spread(session, keys, make_item)
        self.after_blocks = LatencyTable.load(partial_table_path(session.target.table_path))


@pytest.mark.ray
@pytest.mark.extended
def test_a_local_and_an_ssh_device_share_one_ray_table_build(sshd, ray_cluster, tiny, tmp_root):
    from pathlib import Path

    from deploy.executors.ray_cluster import RayExecutor
    from deploy.targets import DeviceSpec

    target = ssh_target(sshd).model_copy(
        update={"devices": (DeviceSpec(id="here"), DeviceSpec(id="there", runner=spec_for(sshd)))}
    )
    # The ssh device's actor is another process: the autouse REMOTE_ROOT patch does not reach it, so the
    # "remote" copies land in this user's ~/.cache; remove the ones this test adds.
    remote = Path.home() / ".cache" / "elastic-deploy" / "remote"  # ssh.REMOTE_ROOT, unpatched
    before = set(remote.glob("*")) if remote.exists() else set()
    executor = SnapshotAfterBlocks(RayExecutor())
    try:
        result = build_table(target, [tiny], progress=False, executor=executor)
    finally:
        executor.inner.close()
        for added in (set(remote.glob("*")) if remote.exists() else set()) - before:
            shutil.rmtree(added, ignore_errors=True)
    assert set(result.by_device) == {"here", "there"}
    assert sum(result.by_device.values()) == len(tiny.all_blocks())
    merged = executor.after_blocks
    assert {e.device for e in merged.entries} == {"here", "there"}
    by_device = {e.device: e for e in merged.entries}
    assert by_device["here"].fingerprint != by_device["there"].fingerprint  # local vs ssh runner, both fresh
    table = LatencyTable.load(result.path)
    assert set(table.index()) == set(tiny.all_blocks()) and table.calibration is not None
    assert f"there: {sshd.user}@127.0.0.1:{sshd.port}" in table.provenance.host


def test_ssh_command_ends_options_before_the_destination():
    from deploy.runners.ssh import SshRunner

    argv = SshRunner(SshSpec(host="example.org", user="me")).ssh_command("hostname")
    assert argv[-3:] == ["--", "me@example.org", "hostname"]


def test_table_build_cli_refuses_an_ssh_user_that_would_run_a_local_command(tmp_path):
    """End to end: the ProxyCommand a target file smuggles in as runner.user never runs."""
    import os
    import subprocess
    import sys

    root = tmp_path / "root"
    (root / "targets").mkdir(parents=True)
    (root / "latency_tables").mkdir()
    proof = tmp_path / "ran"
    (root / "targets" / "evil.yaml").write_text(
        "name: evil\ndevice: {name: box}\nbackend: onnxruntime\nbudget_ms: 1\nmodel: matformer_vit_tiny\n"
        f"runner:\n  kind: ssh\n  host: 127.0.0.1\n  user: '-oProxyCommand=touch {proof}'\n"
    )
    env = {**os.environ, "ELASTIC_DEPLOY_ROOT": str(root), "ELASTIC_DEPLOY_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "deploy", "tables", "build", "--target", "evil"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "runner.user" in lines[0], proc.stderr
    assert not proof.exists() and not list(tmp_path.glob("ran*"))
