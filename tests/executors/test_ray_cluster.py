"""The Ray executor on a real local Ray cluster (2 CPUs): table builds spread over two local devices, a
device actor killed mid-build, validation on a device actor, and the accuracy oracle as Ray tasks."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from deploy.accuracy.oracle import EvalOracle
from deploy.executors.local import LocalExecutor
from deploy.latency.build import build_table, partial_table_path
from deploy.latency.table import LatencyTable
from deploy.latency.validate import validate_table
from deploy.search.space import SubnetConfig
from deploy.targets import Target, load_target
from deploy.tasks.base import ArrayTask

pytestmark = [pytest.mark.ray, pytest.mark.slow]

FARM = """name: farm
device: {name: test host}
backend: onnxruntime
threads: 1  # two local "devices" (two actors on this machine) fit its 2 cores
budget_ms: 1.0
model: matformer_vit_tiny
devices: [{id: a}, {id: b}]
measurement: {warmup_runs: 2, min_runs: 5, min_time_s: 0, rounds: 2, cv_max: 10, max_retries: 0, calibration_subnets: 5}
"""


@pytest.fixture
def executor(ray_cluster):
    from deploy.executors.ray_cluster import RayExecutor

    ex = RayExecutor()  # joins the module's cluster, which it therefore leaves running when closed
    yield ex
    ex.close()


@pytest.fixture
def two_devices(tmp_root) -> Target:
    (tmp_root / "targets" / "farm.yaml").write_text(FARM)
    return load_target("farm")


def test_ray_build_spreads_blocks_over_two_devices_and_gives_the_local_table_keys(executor, two_devices, tiny):
    result = build_table(two_devices, [tiny], progress=False, executor=executor)
    blocks = set(tiny.all_blocks())
    assert set(result.by_device) == {"a", "b"}, "both devices measured blocks"
    assert sum(result.by_device.values()) == result.measured == len(blocks), "each block measured once"
    table = LatencyTable.load(result.path)
    assert set(table.index()) == blocks and table.calibration is not None
    assert {e.device for e in table.entries} <= {"a", "b"}  # the window's device, after calibration
    assert table.provenance.host.startswith("2 device(s): a: ") and "; b: " in table.provenance.host

    local = build_table(two_devices, [tiny], path=result.path.with_name("local.json"), progress=False)
    assert set(LatencyTable.load(local.path).index()) == set(table.index())
    assert local.by_device == {"a": len(blocks)}, "the local executor measures on the first device only"


class KillAfter:
    """The Ray executor, except that it kills one device's actor (ray.kill) after `after` results."""

    def __init__(self, inner, device: str, after: int) -> None:
        self.inner, self.device, self.after = inner, device, after
        self.saved_at_kill: LatencyTable | None = None
        self.farm = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def spread(self, session, keys, make_item):
        import ray

        for i, done in enumerate(self.inner.spread(session, keys, make_item), 1):
            yield done
            if i == self.after:
                self.saved_at_kill = LatencyTable.load(partial_table_path(session.target.table_path))
                self.farm = session.runner
                ray.kill(self.farm.actors[self.device], no_restart=True)


def test_killing_a_device_actor_mid_build_loses_no_finished_entry_and_the_build_completes(executor, two_devices, tiny):
    from deploy.executors.ray_farm import IN_FLIGHT_PER_DEVICE
    from deploy.models import build

    # Two models' blocks (12): after 2 results plenty are left, so b is surely sent more work and found dead.
    nets = [tiny, build("poa_vit_tiny")]
    blocks = {k for net in nets for k in net.all_blocks()}
    killer = KillAfter(executor, device="b", after=2)
    result = build_table(two_devices, nets, progress=False, executor=killer)
    saved = killer.saved_at_kill
    assert saved is not None and 2 <= len(saved.entries) <= len(blocks) - 5, "killed while blocks were left"
    assert "b" in killer.farm.lost and "a" not in killer.farm.lost
    by_b = sum(e.device == "b" for e in saved.entries)
    # b may still deliver what it had finished when the kill landed (ray.kill is asynchronous), no more.
    assert by_b <= result.by_device.get("b", 0) <= by_b + IN_FLIGHT_PER_DEVICE
    assert sum(result.by_device.values()) == len(blocks), "no finished block measured again, none lost"
    assert result.by_device["a"] == len(blocks) - result.by_device.get("b", 0), "b's remaining blocks went to a"
    table = LatencyTable.load(result.path)
    assert set(table.index()) == blocks and table.calibration is not None
    assert {e.device for e in table.entries} == {"a"}, "the calibration window ran on the device still alive"


def test_losing_every_device_stops_the_build_with_one_line_and_the_same_command_resumes(executor, two_devices, tiny):
    from deploy.errors import ExecutorError
    from deploy.executors.ray_cluster import RayExecutor

    class KillAll(KillAfter):
        def spread(self, session, keys, make_item):
            import ray

            for i, done in enumerate(self.inner.spread(session, keys, make_item), 1):
                yield done
                if i == self.after:
                    for actor in session.runner.actors.values():
                        ray.kill(actor, no_restart=True)

    with pytest.raises(ExecutorError, match=r"every device of farm is lost .*run the same command again"):
        build_table(two_devices, [tiny], progress=False, executor=KillAll(executor, device="", after=2))
    kept = LatencyTable.load(partial_table_path(two_devices.table_path))
    assert len(kept.entries) >= 2 and kept.calibration is None
    again = RayExecutor()
    try:
        result = build_table(two_devices, [tiny], progress=False, executor=again)
    finally:
        again.close()
    assert result.reused == len(kept.entries) and result.measured == len(tiny.all_blocks()) - len(kept.entries)


def test_ray_validate_measures_on_a_device_actor(executor, two_devices, tiny, tmp_path):
    build_table(two_devices, [tiny], progress=False, executor=executor)
    report = validate_table(two_devices, tiny, samples=3, progress=False, executor=executor)
    assert report.samples == 3 and report.median_abs_pct_error >= 0
    assert report.host.startswith("a: "), "the device that measured: the first of the two"
    assert all(r.measured_ms > 0 for r in report.rows)


def test_ray_oracle_gives_the_local_oracle_results_and_the_same_cache(executor, tiny, tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(200, *tiny.example_inputs()[0].shape[1:]), torch.randint(0, 10, (200,))
    rng = np.random.default_rng(0)
    configs = list({c.id: c for c in (tiny.sample(rng) for _ in range(12))}.values())
    local = EvalOracle(tiny, ArrayTask.of(x, y), "val", tmp_path / "local.json", "sha")
    remote = EvalOracle(tiny, ArrayTask.of(x, y), "val", tmp_path / "ray.json", "sha")
    expected = local.evaluate_many(configs, progress=False, executor=LocalExecutor())
    executor.workers = 2
    got = remote.evaluate_many(configs, progress=False, executor=executor)
    assert got == expected and remote.evaluations == len(configs)
    reloaded = EvalOracle(tiny, ArrayTask.of(x, y), "val", tmp_path / "ray.json", "sha")
    assert [(c.id, a) for c, a in reloaded.entries()] == [(c.id, a) for c, a in local.entries()]
    assert all(isinstance(c, SubnetConfig) for c, _ in reloaded.entries())


def test_unreachable_ray_address_is_one_line_that_says_what_to_do():
    pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]' (make test does)")
    from deploy.errors import ExecutorError
    from deploy.executors.ray_cluster import connect

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ExecutorError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:\d+ .*ray start --head"):
        connect(f"127.0.0.1:{port}")
    with pytest.raises(ExecutorError, match="is not HOST:PORT"):
        connect("nowhere")
