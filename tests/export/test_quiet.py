"""quiet_converter: what a converter prints is held back (to the debug log and `capture`), and everything it
changed process-wide is restored afterwards."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import pytest

from deploy.export.quiet import Captured, quiet_converter

log = logging.getLogger("tests.quiet")


def test_quiet_converter_holds_back_c_level_and_python_output_into_capture_and_the_debug_log(capfd, caplog):
    captured = Captured()
    quiet = quiet_converter("conv", log, fds=(1, 2), streams=("stdout", "stderr"), capture=captured)
    with caplog.at_level(logging.DEBUG, logger="tests.quiet"), quiet:
        os.write(2, b"from C\n")
        print("from python")
        sys.stderr.write("50%|#####     | 5/10\n")  # a progress bar: captured, not logged
    assert capfd.readouterr() == ("", "")
    assert "from C" in captured.text and "from python" in captured.text and "5/10" in captured.text
    assert [r.getMessage() for r in caplog.records] == ["conv: from python", "conv: from C"]


def test_quiet_converter_restores_loggers_environment_and_warning_filters(monkeypatch):
    monkeypatch.delenv("QUIET_TEST_SWITCH", raising=False)
    loud = logging.getLogger("tests.quiet.loud")
    loud.setLevel(logging.INFO)
    filters = list(warnings.filters)
    with quiet_converter("conv", log, loggers={"tests.quiet.loud": logging.ERROR}, env={"QUIET_TEST_SWITCH": "n"},
                         ignore_warnings=True):  # fmt: skip
        assert loud.level == logging.ERROR and os.environ["QUIET_TEST_SWITCH"] == "n"
        warnings.warn("dropped", stacklevel=1)
    assert loud.level == logging.INFO and "QUIET_TEST_SWITCH" not in os.environ and warnings.filters == filters


def test_quiet_converter_never_lowers_a_loggers_level():
    loud = logging.getLogger("tests.quiet.already-quiet")
    loud.setLevel(logging.CRITICAL)
    with quiet_converter("conv", log, loggers={"tests.quiet.already-quiet": logging.WARNING}):
        assert loud.level == logging.CRITICAL


def test_quiet_converter_changes_nothing_when_unless_debug_and_the_log_is_at_debug(capfd, caplog):
    captured = Captured()
    quiet = quiet_converter("conv", log, fds=(2,), unless_debug=True, capture=captured)
    with caplog.at_level(logging.DEBUG, logger="tests.quiet"), quiet:
        os.write(2, b"shown\n")
    assert "shown" in capfd.readouterr().err and captured.text == ""


def test_quiet_converter_restores_the_descriptors_when_the_block_raises(capfd):
    with pytest.raises(RuntimeError, match="conversion failed"), quiet_converter("conv", log, fds=(2,)):
        os.write(2, b"held back\n")
        raise RuntimeError("conversion failed")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
