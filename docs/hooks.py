"""MkDocs hook: the results pages and the CLI reference are generated from the data before every build."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any


def on_pre_build(config: Any) -> None:
    path = Path(__file__).with_name("gen_results.py")
    spec = importlib.util.spec_from_file_location("gen_results", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate()
