"""deploy/io.py's readers: a duplicate key or a file past the size bound is one named error, never a silent
choice or a read that fills memory."""

from __future__ import annotations

import os
import re

import pytest

from deploy import io
from deploy.errors import ConfigFileError
from deploy.io import read_json, read_yaml


def test_read_yaml_refuses_a_key_given_twice_in_a_nested_mapping(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("name: a\nmeasurement:\n  rounds: 20\n  cv_max: 0.02\n  rounds: 5\n")
    with pytest.raises(ConfigFileError) as info:
        read_yaml(path)
    assert str(info.value) == (
        f"{path}: malformed YAML at line 5 column 3: key 'rounds' appears twice (first at line 3); keep one"
    )


def test_read_yaml_accepts_a_merge_key_that_a_mapping_overrides(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("base: &b {rounds: 20, cv_max: 0.02}\nquick:\n  <<: *b\n  rounds: 2\n")
    assert read_yaml(path)["quick"] == {"rounds": 2, "cv_max": 0.02}


def test_read_yaml_reads_windows_line_endings_as_before(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_bytes(b"name: a\r\nrounds: 2\r\n")
    assert read_yaml(path) == {"name": "a", "rounds": 2}


@pytest.mark.parametrize("reader", [read_yaml, read_json])
def test_file_past_the_size_bound_is_refused_naming_file_and_bound(tmp_path, monkeypatch, reader):
    monkeypatch.setattr(io, "MAX_READ_BYTES", 1024 * 1024)
    path = tmp_path / "big.json"
    path.write_text("[" + "0," * (600 * 1024) + "0]")
    needle = rf"^{re.escape(str(path))}: larger than 1 MiB, the most a (YAML|JSON) file"
    with pytest.raises(ConfigFileError, match=needle):
        reader(path)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero here")
def test_json_file_that_links_to_dev_zero_is_refused_after_a_bounded_read(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "MAX_READ_BYTES", 4096)
    path = tmp_path / "table.json"
    path.symlink_to("/dev/zero")
    with pytest.raises(ConfigFileError, match="larger than 4,096 bytes, the most a JSON file"):
        read_json(path)
