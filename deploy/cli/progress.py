"""Rich progress bars drawn from the library's progress events (deploy/progress.py): one bar per task.

The commands open one renderer around each long library call and pass it as `progress=`; the library
only reports. Bars are drawn on the commands' console, so what a command says meanwhile prints above them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichBars

from deploy.cli.app import console
from deploy.progress import Progress, ProgressEvent


class ProgressBars:
    """A `Progress` callback: the first event of a task adds its bar, later ones move it.

    `transient`: a bar disappears once its task completes (evaluations, training); otherwise the bars stay
    printed when the renderer closes (a table build's record of what it measured). `counts` shows done/total
    instead of a percentage. `style` colours the descriptions, `styles` per task."""

    def __init__(
        self, *, transient: bool = False, counts: bool = False, style: str = "", styles: Mapping[str, str] | None = None
    ) -> None:
        self.transient, self.counts = transient, counts
        self.style, self.styles = style, dict(styles or {})
        self._bars: RichBars | None = None
        self._tasks: dict[str, TaskID] = {}

    def _open(self) -> RichBars:
        columns: tuple[ProgressColumn, ...] = (
            (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            if self.counts
            else RichBars.get_default_columns()
        )
        bars = RichBars(*columns, console=console, transient=self.transient)
        bars.start()
        return bars

    def _label(self, task: str, text: str) -> str:
        style = self.styles.get(task, self.style)
        return f"[{style}]{escape(text)}" if style else escape(text)

    def __call__(self, event: ProgressEvent) -> None:
        if self._bars is None:
            self._bars = self._open()
        bars = self._bars
        label = None if event.description is None else self._label(event.task, event.description)
        task = self._tasks.get(event.task)
        if task is None:
            label = label or self._label(event.task, event.task)
            task = self._tasks[event.task] = bars.add_task(label, total=event.total, completed=event.completed)
        else:
            bars.update(task, total=event.total, completed=event.completed, description=label)
        if self.transient and event.total is not None and event.completed >= event.total:
            bars.remove_task(task)
            del self._tasks[event.task]
            if not self._tasks:  # nothing left to draw: what the command says next prints as usual
                self.close()

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
        self._bars = None
        self._tasks.clear()


@contextmanager
def progress_bars(
    *, transient: bool = False, counts: bool = False, style: str = "", styles: Mapping[str, str] | None = None
) -> Iterator[Progress]:
    """A renderer for the library calls inside the block; its bars stop when it exits."""
    bars = ProgressBars(transient=transient, counts=counts, style=style, styles=styles)
    try:
        yield bars
    finally:
        bars.close()


def measurement_bars() -> AbstractContextManager[Progress]:
    """Table builds, validations and transfers: cyan bars that stay, the calibration window magenta."""
    return progress_bars(style="cyan", styles={"calibration": "magenta"})


def evaluation_bars() -> AbstractContextManager[Progress]:
    """Accuracy evaluations and training: done/total counts, gone once each is done."""
    return progress_bars(transient=True, counts=True)
