"""Progress of long work, reported as events: library code never draws, the command line renders them.

A library function that takes a while takes `progress: Progress | None` (None: silent) and reports through
a `ProgressTask` per bar; deploy/cli/progress.py turns the events into rich progress bars. Anything else
that wants to follow a build (a log, a notebook widget, a test) passes its own callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """Where one task stands: every event of a task carries its counts, so a renderer may start anywhere."""

    task: str  # which task (one bar): the same for all its events
    completed: int
    total: int | None  # None: unknown
    description: str | None = None  # what the task is doing now; None keeps the last one


Progress = Callable[[ProgressEvent], None]


def _nowhere(event: ProgressEvent) -> None:
    pass


NO_PROGRESS: Progress = _nowhere  # what None means: the default of every library function


class ProgressTask:
    """One task's counter in a library function: reports its start and every change to `progress`."""

    def __init__(
        self,
        progress: Progress | None,
        task: str,
        total: int | None,
        *,
        completed: int = 0,
        description: str | None = None,
    ) -> None:
        self._report = progress or NO_PROGRESS
        self.task, self.total, self.completed = task, total, completed
        self._report(ProgressEvent(task, completed, total, description or task))

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        self.update(self.completed + steps, description)

    def update(self, completed: int | None = None, description: str | None = None) -> None:
        if completed is not None:
            self.completed = completed
        self._report(ProgressEvent(self.task, self.completed, self.total, description))

    def describe(self, description: str) -> None:
        self.update(description=description)

    def finish(self) -> None:
        """The task ended early (a time budget): what was done is all there is to do."""
        self.total = self.completed
        self.update()
