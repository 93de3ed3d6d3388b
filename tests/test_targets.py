from __future__ import annotations

import os
import re

import pytest

from deploy.errors import ConfigFileError, InvalidTargetNameError, UnknownNameError, UnknownTargetError
from deploy.targets import known_targets, load_target

GOOD = """name: t1
device: {name: test box}
backend: onnxruntime
threads: 2
budget_ms: 1.5
model: matformer_vit_tiny
"""


def test_every_shipped_target_loads():
    names = known_targets()
    assert "host-cpu-ort" in names
    for name in names:
        target = load_target(name)
        assert target.name == name and target.budget_ms > 0


def test_unknown_target_lists_known_ones(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD)
    with pytest.raises(UnknownTargetError, match=r"unknown target 'nope'; known targets: .*t1"):
        load_target("nope")


def test_target_name_with_bad_characters_is_rejected():
    with pytest.raises(InvalidTargetNameError, match="lower-case letters, digits and '-'"):
        load_target("../etc/passwd")


def test_malformed_yaml_names_file_and_line(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text("name: t1\ndevice: {name: [unclosed\n")
    with pytest.raises(ConfigFileError, match=r"t1.yaml: malformed YAML at line \d+"):
        load_target("t1")


def test_unknown_field_names_the_field(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD + "budget: 3\n")
    with pytest.raises(ConfigFileError, match="field 'budget'"):
        load_target("t1")


def test_wrong_type_names_the_field(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD.replace("budget_ms: 1.5", "budget_ms: fast"))
    with pytest.raises(ConfigFileError, match="field 'budget_ms'"):
        load_target("t1")


def test_name_must_match_file(tmp_root):
    (tmp_root / "targets" / "t2.yaml").write_text(GOOD)
    with pytest.raises(ConfigFileError, match=r"'name' is 't1' but the file is t2\.yaml"):
        load_target("t2")


def test_every_shipped_target_has_a_table_covering_its_model():
    from deploy.latency.predictor import LatencyPredictor
    from deploy.latency.table import LatencyTable
    from deploy.models import build

    for name in known_targets():
        target = load_target(name)
        if target.lm is not None:
            continue  # a language-model target: test_every_lm_target_serves_a_language_model_its_table_covers
        table = LatencyTable.load(target.table_path, name)
        assert table.provenance.target == name and table.provenance.threads == target.threads
        assert table.calibration is not None
        if table.provenance.method == "measured":
            assert table.validation is not None, f"{name}: validate it with make validate-tables TARGET={name}"
        else:  # estimated: says how, from which measured table, and what error to expect
            assert table.provenance.estimation and target.estimate is not None
            assert table.provenance.estimate["source_target"] == target.estimate.source_target
        for model in target.served_models:  # every model it serves, not only the default
            LatencyPredictor(table).require(build(model).all_blocks())
            if table.provenance.method == "measured" and len(target.served_models) > 1:
                family = build(model).family  # each family's own figures: `make validate-tables MODEL=…`
                assert family in table.validations, f"{name}: validate it with MODEL={model}"


def test_every_lm_target_serves_a_language_model_its_table_covers():
    from deploy.latency.predictor import LatencyPredictor
    from deploy.latency.table import LatencyTable
    from deploy.lm.latency import table_blocks
    from deploy.models import build

    unmeasured = []
    for name in known_targets():
        target = load_target(name)
        if target.lm is None:
            continue
        for model in target.served_models:
            net = build(model)
            assert net.family == "matformer_lm" and table_blocks(target, net)  # its lengths fit the model
        if not target.table_path.exists():
            unmeasured.append(name)
            continue
        table = LatencyTable.load(target.table_path, name)
        assert table.calibration is not None and {"matformer_lm:prefill", "matformer_lm:decode"} <= set(
            table.calibration.families
        )
        for model in target.served_models:
            LatencyPredictor(table).require(table_blocks(target, build(model)))
    if unmeasured:
        pytest.skip(f"LM tables not measured yet: {', '.join(f'make latency-tables TARGET={n}' for n in unmeasured)}")


DEVICES = (
    GOOD.replace("backend: onnxruntime", "backend: tflite")
    + """devices:
  - id: phone-a
    runner: {kind: adb, serial: A1}
    ray_resources: {phone-a: 1}
  - id: phone-b
    runner: {kind: adb, serial: B2}
"""
)


def test_target_with_devices_lists_them_and_measures_single_runs_on_the_first(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(DEVICES)
    target = load_target("t1")
    assert [d.id for d in target.device_list] == ["phone-a", "phone-b"]
    assert target.device_list[0].ray_resources == {"phone-a": 1}
    assert target.runner.serial == "A1", "deploy, bench and the local executor use the first device"
    assert target.on_device(target.device_list[1]).runner.serial == "B2"


def test_target_with_runner_only_is_one_device_named_after_it(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD + "runner: {kind: ssh, host: jetson.lan}\n")
    (device,) = load_target("t1").device_list
    assert device.id == "ssh:jetson.lan" and device.runner.host == "jetson.lan"


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("devices: []\n", "devices is empty"),
        ("devices:\n  - {id: a}\n  - {id: a}\n", "device id(s) a appear more than once"),
        ("devices:\n  - {runner: {kind: local}}\n", "field 'devices.0.id'"),
        ("devices:\n  - {id: a, runner: {kind: usb}}\n", "field 'devices.0.runner': unknown runner 'usb'"),
        ("devices:\n  - {id: 'a b'}\n", "field 'devices.0.id'"),
        ("runner: {kind: ssh, host: h}\ndevices:\n  - {id: a}\n", "either runner (one device) or devices"),
    ],
)
def test_malformed_devices_list_is_a_config_error_naming_the_fix(tmp_root, devices, message):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD + devices)
    with pytest.raises(ConfigFileError, match=re.escape(message)):
        load_target("t1")


SSH = GOOD + "runner:\n  kind: ssh\n  host: 127.0.0.1\n"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "-oProxyCommand=touch /tmp/p"),
        ("user", "root name"),
        ("host", "-oProxyCommand=x"),
        ("host", "a;b"),
        ("host", "$(touch x)"),
        ("host", "a\nb"),
        ("python", "-c"),
        ("key_path", "my key"),
        ("serial", "-s"),
        ("benchmark_binary", "/data/x;rm"),
        ("cpu_mask", "f0 -x"),
    ],
)
def test_runner_field_that_could_reach_an_argument_list_as_an_option_is_refused(tmp_root, field, value):
    adb = field in ("serial", "benchmark_binary", "cpu_mask")
    runner = {"kind": "adb", field: value} if adb else {"kind": "ssh", "host": "127.0.0.1", field: value}
    import yaml

    data = yaml.safe_load(GOOD)
    data["runner"] = runner
    data["backend"] = "tflite" if adb else "onnxruntime"
    (tmp_root / "targets" / "t1.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigFileError, match=rf"field 'runner.{field}'") as err:
        load_target("t1")
    assert "\n" not in str(err.value).replace(repr(value), "")


def test_plain_runner_fields_are_accepted(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(
        SSH + "  user: deploy-bot\n  port: 2222\n  key_path: ~/.ssh/id_ed25519\n  python: /opt/venv/bin/python3\n"
    )
    target = load_target("t1")
    assert target.runner.user == "deploy-bot" and target.device_list[0].id == "ssh:127.0.0.1"


def test_infinite_budget_is_refused_with_the_field_named(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD.replace("budget_ms: 1.5", "budget_ms: .inf"))
    with pytest.raises(ConfigFileError, match=r"field 'budget_ms'.*finite"):
        load_target("t1")


def test_runner_that_cannot_run_the_backend_is_refused_when_the_target_loads(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD + "runner: {kind: adb, serial: A1}\n")
    with pytest.raises(ConfigFileError, match="runner adb runs tflite, executorch artifacts, not onnxruntime"):
        load_target("t1")


def test_backend_options_are_checked_against_the_backend_schema_when_the_target_loads(tmp_root):
    coreml = GOOD.replace("backend: onnxruntime", "backend: coreml")
    (tmp_root / "targets" / "t1.yaml").write_text(coreml + "backend_options: {compute_units: GPU_ONLY}\n")
    with pytest.raises(ConfigFileError, match=r"backend_options.compute_units for backend coreml"):
        load_target("t1")
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD + "backend_options: {threads: 4}\n")
    with pytest.raises(ConfigFileError, match=r"backend_options.threads for backend onnxruntime"):
        load_target("t1")


def test_unknown_backend_lists_the_known_ones(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD.replace("backend: onnxruntime", "backend: tpu"))
    with pytest.raises(UnknownNameError, match=r"unknown backend 'tpu'; known: .*onnxruntime"):
        load_target("t1")


# --- bounds on what a target may ask for (issue 24) -------------------------------------------------


def test_threads_past_the_sanity_cap_are_refused_for_any_runner(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(SSH.replace("threads: 2", "threads: 10000"))
    with pytest.raises(ConfigFileError, match=r"field 'threads': Input should be less than or equal to 256"):
        load_target("t1")


def test_threads_past_this_machines_cpus_are_refused_when_the_local_runner_measures(tmp_root, monkeypatch):
    monkeypatch.setattr("deploy.targets.os.cpu_count", lambda: 2)
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD.replace("threads: 2", "threads: 3"))
    with pytest.raises(ConfigFileError) as info:
        load_target("t1")
    assert str(info.value).endswith(
        "t1.yaml: field 'threads': 3 is more than the 2 CPUs of this machine, where the local runner measures; "
        "give at most 2, or measure on a larger machine through an ssh runner"
    )


def test_threads_past_this_machines_cpus_are_accepted_when_another_machine_measures(tmp_root, monkeypatch):
    monkeypatch.setattr("deploy.targets.os.cpu_count", lambda: 2)
    (tmp_root / "targets" / "t1.yaml").write_text(SSH.replace("threads: 2", "threads: 8"))
    assert load_target("t1").threads == 8


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (GOOD.replace("budget_ms: 1.5", "budget_ms: true"), "budget_ms"),
        (GOOD.replace("threads: 2", "threads: true"), "threads"),
        (GOOD + "measurement: {rounds: yes}\n", "measurement.rounds"),
        (GOOD + "bench_tolerance_pct: true\n", "bench_tolerance_pct"),
    ],
)
def test_boolean_where_a_number_belongs_is_refused_naming_the_field(tmp_root, text, field):
    (tmp_root / "targets" / "t1.yaml").write_text(text)
    with pytest.raises(ConfigFileError, match=rf"field '{re.escape(field)}': expected a number, got true"):
        load_target("t1")


@pytest.mark.parametrize(
    "text",
    [
        GOOD.replace("budget_ms: 1.5", "budget_ms: .nan"),
        GOOD.replace("budget_ms: 1.5", "budget_ms: inf"),
        GOOD + "bench_tolerance_pct: .inf\n",
        GOOD + "measurement: {cv_max: .inf}\n",
    ],
)
def test_non_finite_number_is_refused(tmp_root, text):
    (tmp_root / "targets" / "t1.yaml").write_text(text)
    with pytest.raises(ConfigFileError, match=r"finite number"):
        load_target("t1")


def test_budget_written_without_a_dot_still_reads_as_a_number(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD.replace("budget_ms: 1.5", "budget_ms: 1e9"))
    assert load_target("t1").budget_ms == 1e9  # PyYAML reads `1e9` as a string; the field converts it


def test_key_given_twice_is_refused_naming_the_line_and_the_key(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD + "budget_ms: 900\n")
    with pytest.raises(ConfigFileError) as info:
        load_target("t1")
    assert str(info.value).endswith(
        "t1.yaml: malformed YAML at line 7 column 1: key 'budget_ms' appears twice (first at line 5); keep one"
    )


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_target_file_that_links_to_dev_zero_is_refused_at_the_size_limit(tmp_root):
    (tmp_root / "targets" / "t1.yaml").symlink_to("/dev/zero")
    with pytest.raises(ConfigFileError, match=r"t1\.yaml: larger than 32 MiB, the most a YAML file"):
        load_target("t1")


def test_boolean_ssh_port_is_refused_naming_the_field(tmp_root):
    (tmp_root / "targets" / "t1.yaml").write_text(GOOD + "runner: {kind: ssh, host: box, port: true}\n")
    with pytest.raises(ConfigFileError, match=r"port"):
        load_target("t1")
