"""What every comparison shares outside its measurement: arguments, the environment record, the writer.

A comparison is a `Comparison`: its name (the results files are `results/<name>.json` and `.md`), a `run`
that returns the result body (a JSON-able dict) and a `markdown` that renders a result read back from
JSON. `main` parses the common arguments (`--quick`, `--out`) and the comparison's own, records the
environment around the run, writes both files atomically and prints the markdown.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.io import atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "benchmarks" / "results"
QUICK_OUT = Path(".cache") / "benchmarks-quick"  # in the folder it runs from, beside the other caches
DEFAULT_DISTRIBUTIONS = ("torch", "numpy", "onnxruntime")

Result = dict[str, Any]


class Skipped(Exception):
    """The comparison cannot run here (no GPU, no data set): said in one line, nothing is written."""


@dataclass(frozen=True)
class Comparison:
    name: str
    doc: str
    run: Callable[[argparse.Namespace], Result]
    markdown: Callable[[Result], str]
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    stem: Callable[[argparse.Namespace], str] | None = None  # another file name than `name` (per model)
    distributions: tuple[str, ...] = field(default=())  # versions recorded besides DEFAULT_DISTRIBUTIONS


def dist_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment(distributions: Sequence[str] = ()) -> dict[str, Any]:
    """Where and when a result was produced (completed by `finish` when the run ends)."""
    from deploy.latency.table import now_iso
    from deploy.runners.local import cpu_model, usable_cores

    names = dict.fromkeys((*DEFAULT_DISTRIBUTIONS, *distributions))
    return {
        "date": now_iso(),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: dist_version(name) for name in names},
        "loadavg_1m": {"start": round(os.getloadavg()[0], 2)},
        "_start": time.perf_counter(),
    }


def finish(env: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in env.items() if k != "_start"}
    out["wall_s"] = round(time.perf_counter() - env["_start"], 1)
    out["loadavg_1m"] = {**env["loadavg_1m"], "end": round(os.getloadavg()[0], 2)}
    return out


def describe(result: Result) -> tuple[str, str]:
    """(date, machine) of a result, from its environment record or, for results written before the
    harness, from the fields those carried (date/host/machine/device, or a `meta` record)."""
    if not isinstance(result, dict):
        return "not recorded", "not recorded"
    env = result.get("environment")
    if env:
        return env["date"], f"{env['host']} ({env['cpu']}, {env['cores']} cores)"
    meta = result.get("meta") if isinstance(result.get("meta"), dict) else result
    date = str(meta.get("date", "undated"))
    host = meta.get("machine") or meta.get("host") or meta.get("device") or "machine not recorded"
    if isinstance(host, dict):
        host = f"{host.get('cpu', '?')} ({host.get('usable_cores', '?')} usable cores)"
    return date, str(host)


def machine_free(value: Any) -> Any:
    """`value` with every absolute path of this machine made portable: relative to the repository where it
    lies inside, `~/…` inside the home folder. Results are committed; a machine's paths mean nothing elsewhere."""
    if isinstance(value, dict):
        return {k: machine_free(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [machine_free(v) for v in value]
    if isinstance(value, str):
        for root, shown in ((str(REPO), "."), (str(Path.home()), "~")):
            if root not in ("/", "") and root in value:
                value = value.replace(root + os.sep, shown + "/" if shown != "." else "").replace(root, shown)
    return value


def write(result: Result, markdown: Callable[[Result], str], out: Path, stem: str) -> tuple[Path, Path, str]:
    out.mkdir(parents=True, exist_ok=True)
    result = machine_free(result)
    text = markdown(result)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write_json(json_path, result)
    atomic_write_text(md_path, text)
    return json_path, md_path, text


def quick_banner(result: Result, text: str) -> str:
    """A quick run's markdown says so under its title."""
    if not result.get("quick"):
        return text
    title, _, rest = text.partition("\n")
    return f"{title}\n\n**QUICK run: a smoke test of the code, not figures to quote.**\n{rest}"


def main(comparison: Comparison, argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks.{comparison.name}",
        description=comparison.doc.strip().splitlines()[0],
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test of seconds (tiny model, short protocol)")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"folder for the .json and .md (default {RESULTS}; --quick: {QUICK_OUT})"
    )
    comparison.arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("benchmarks").setLevel(logging.INFO)
    env = environment(comparison.distributions)
    try:
        body = comparison.run(args)
    except Skipped as exc:
        print(f"skipped: {exc}", file=sys.stderr)
        return 0
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    result = {"benchmark": comparison.name, "quick": bool(args.quick), **body, "environment": finish(env)}
    stem = comparison.stem(args) if comparison.stem else comparison.name
    if args.out is None:  # a smoke test never overwrites the figures the docs show
        args.out = QUICK_OUT if args.quick else RESULTS
    json_path, md_path, text = write(result, lambda r: quick_banner(r, comparison.markdown(r)), args.out, stem)
    print(text)
    print(f"wrote {json_path} and {md_path} ({result['environment']['wall_s']} s)")
    return 0
