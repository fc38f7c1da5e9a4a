"""A shared byte-rate limit for transfers (``--limit-rate``), so a fleet flash does not saturate a link."""

from __future__ import annotations

import threading
import time


class RateLimiter:
    def __init__(self, bytes_per_second: float):
        self.rate = float(bytes_per_second)
        self._lock = threading.Lock()
        self._next = time.monotonic()

    def wait(self, nbytes: int) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + nbytes / self.rate
        delay = start - now
        if delay > 0:
            time.sleep(delay)


def parse_rate(text: str | None) -> float | None:
    """'500k', '5M', '1.5G' (bytes per second) -> float; None when not given."""
    if not text:
        return None
    units = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
    number, unit = text.strip()[:-1], text.strip()[-1].lower()
    if unit.isdigit():
        number, unit = text.strip(), ""
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        from ..errors import UsageError
        raise UsageError(f"[[limit_rate]] '{text}' is not a rate", hint="e.g. 500k, 5M (bytes per second)") from None
    if value <= 0:
        from ..errors import UsageError
        raise UsageError("[[limit_rate]] must be positive")
    return value
