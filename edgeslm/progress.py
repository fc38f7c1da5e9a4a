"""Progress reporting without printing: library code reports, the CLI renders (with rich).

A long step is ``with progress.task("Quantizing", total=n) as advance: advance(k)``. The default
:class:`NullProgress` ignores everything, so library calls are silent unless a caller passes one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol


class Progress(Protocol):
    def task(self, description: str, total: float | None = None) -> contextlib.AbstractContextManager[
            Callable[[float], None]]: ...

    def note(self, message: str) -> None: ...


class NullProgress:
    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Callable[[float], None]]:
        yield lambda amount=1: None

    def note(self, message: str) -> None:
        return None
