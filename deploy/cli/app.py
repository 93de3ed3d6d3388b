"""The typer app, its shared options and helpers; the commands live beside it, one module per group."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Select, extract, export, compile and validate elastic-transformer subnets per device.",
)
tables_app = typer.Typer(no_args_is_help=True, help="Latency tables: build (measure) and validate.")
app.add_typer(tables_app, name="tables")
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="target name (a file in targets/)")]
PrecisionOpt = Annotated[
    str | None,
    typer.Option("--precision", help="one of the target's precisions (default: all for build, the first for validate)"),
]
ModelOpt = Annotated[
    str | None, typer.Option("--model", "-m", help="model: models/<name>.yaml (default: the target's)")
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor", help="local (this process) or ray (the target's devices as Ray actors; evaluations as tasks)"
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option("--ray-address", help="an existing Ray cluster (HOST:6379, or auto on one of its nodes)"),
]


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging")] = False,
    workspace_dir: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            "-w",
            help="folder holding targets/, models/, latency_tables/, checkpoints/ (default: the current one)",
        ),
    ] = None,
) -> None:
    from deploy import workspace

    _state["debug"] = debug
    if workspace_dir is not None:
        workspace.use(workspace_dir)
    workspace.check_environment()
    if workspace_dir is None:  # the current folder, named for what this process starts (Ray workers)
        os.environ.setdefault(workspace.ENV, str(workspace.root()))
    # Our own INFO messages; the libraries' (torch.onnx, onnxscript: hundreds of lines per export) only
    # from WARNING up, unless --verbose.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )
    logging.getLogger("deploy").setLevel(logging.DEBUG if verbose else logging.INFO)


def _say(message: str) -> None:
    console.print(message, highlight=False)


def _executor(name: str, address: str | None) -> Any:
    """A context manager giving the executor; it releases what the executor started (actors, a cluster)."""
    from deploy.executors import open_executor

    return open_executor(name, address)


def model_list(target: Any, model: str | None) -> tuple[str, ...]:
    """--model if given, else every model the target serves."""
    return (model,) if model else target.served_models
