"""The command line: `elastic-deploy …` or `python -m deploy …`.

Every DeployError ends the command with one line on stderr and exit code 2 (130 when interrupted;
a traceback only with --debug); what the commands report goes through rich on stdout. The commands
are grouped in modules beside this one (ship, tables, models), each registering on the one app.
"""

from __future__ import annotations

import sys

from rich.markup import escape

from deploy.cli import lm, models, ship, tables  # noqa: F401  (they register their commands)
from deploy.cli.app import _state, app, err_console, model_list
from deploy.errors import DeployError

__all__ = ["app", "main", "model_list"]


def main(argv: list[str] | None = None) -> None:
    try:
        app(args=argv, standalone_mode=True)
    except DeployError as exc:
        if _state["debug"]:
            raise
        label = "interrupted" if exc.exit_code == 130 else "error"
        err_console.print(f"[bold red]{label}:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        # Every write is atomic and long work saves as it goes: nothing is half-written.
        err_console.print(
            "[bold red]interrupted:[/] nothing was half-written; run the same command again (builds and "
            "evaluations resume where they stopped)",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(130)
