"""deploy.errors.first_line: the one line of an exception quoted inside a one-line error."""

from __future__ import annotations

import pytest

from deploy.errors import first_line


@pytest.mark.parametrize(
    ("exc", "plain", "typed"),
    [
        (ValueError("bad shape\n  at line 3"), "bad shape", "ValueError: bad shape"),
        (RuntimeError("  \n"), "RuntimeError", "RuntimeError"),
        (KeyError("x"), "'x'", "KeyError: 'x'"),
    ],
    ids=["multi-line", "empty", "key"],
)
def test_first_line_is_the_messages_first_line_or_the_type_when_empty(exc, plain, typed):
    assert first_line(exc) == plain and first_line(exc, with_type=True) == typed
