"""Render library progress with rich on stderr (stdout stays clean for --json and text)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class RichProgress:
    def __init__(self, quiet: bool = False):
        self.console = Console(file=sys.__stderr__, quiet=quiet)
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  DownloadColumn(), TimeElapsedColumn(), console=self.console, transient=False)

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Callable[[float], None]]:
        task_id = self._progress.add_task(description, total=total)
        try:
            yield lambda amount=1: self._progress.advance(task_id, amount)
        finally:
            done = self._progress.tasks[task_id].completed
            self._progress.update(task_id, total=total if total is not None else max(done, 1),
                                  completed=total if total is not None else max(done, 1))

    def note(self, message: str) -> None:
        self.console.print(message)
