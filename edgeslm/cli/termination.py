"""SIGTERM as KeyboardInterrupt, so that a terminated build or flash cleans up like Ctrl-C does.

Python's default SIGTERM action ends the process at once: ``finally`` blocks and ``except
BaseException`` handlers never run, and a build would leave its temporary folders behind. With this
handler the same cleanup runs as for Ctrl-C (exit code 130). SIGKILL cannot be caught: the next build
removes what a killed one left (``build_folders.remove_stale``).
"""

from __future__ import annotations

import signal


def terminate_as_interrupt() -> None:
    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt("terminated (SIGTERM)")

    signal.signal(signal.SIGTERM, handler)
