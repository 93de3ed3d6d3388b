"""The runner contract: the capabilities a spec declares, and asking a runner for no precision-gate warning."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from deploy.runners.adb import AdbRunner
from deploy.runners.base import quiet_gate
from deploy.runners.local import LocalRunner
from deploy.runners.specs import AdbSpec, LocalSpec, RunnerSpecBase, SshSpec
from deploy.runners.ssh import SshRunner


class PigeonSpec(RunnerSpecBase):  # a user's runner, declaring no capability
    kind: Literal["pigeon"] = "pigeon"


@pytest.mark.parametrize(
    ("spec", "in_process"),
    [(LocalSpec(), True), (SshSpec(host="h"), False), (AdbSpec(), False), (PigeonSpec(), False)],
    ids=["local", "ssh", "adb", "user"],
)
def test_runner_spec_measures_in_process_only_when_it_declares_so(spec, in_process):
    assert spec.measures_in_process is in_process
    assert "measures_in_process" not in spec.model_dump()  # a capability, not a field a target file holds


@pytest.mark.parametrize("runner", [LocalRunner, SshRunner, AdbRunner])
def test_quiet_gate_asks_built_in_runners_for_no_warning_only_when_told(runner):
    assert quiet_gate(runner, warn_noisy=False) == {"warn_noisy": False}
    assert quiet_gate(runner, warn_noisy=True) == {}


def test_quiet_gate_calls_a_runner_without_warn_noisy_as_before():
    class OldRunner:  # a user's runner written before warn_noisy existed
        def benchmark_many(self, backend: Any, items: Any, protocol: Any, on_progress: Any = None) -> list[Any]:
            return []

    class AnyKeywords:
        def benchmark_many(self, *args: Any, **kwargs: Any) -> list[Any]:
            return []

    assert quiet_gate(OldRunner(), warn_noisy=False) == {}
    assert quiet_gate(AnyKeywords(), warn_noisy=False) == {"warn_noisy": False}
