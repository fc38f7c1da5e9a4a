"""One generation at a time per engine; up to ``max_queue`` requests wait; beyond that: 429."""

from __future__ import annotations

import asyncio
import math
import time

from .request_schema import ApiError


class Admission:
    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self._engine = asyncio.Lock()
        self.waiting = 0
        self.active = 0
        self.served = 0
        self.cancelled = 0
        self.rejected = 0
        self._avg_s = 1.0

    def retry_after(self) -> int:
        return max(1, math.ceil(self._avg_s * (self.waiting + 1)))

    async def acquire(self) -> float:
        """Wait for the engine (or raise a 429 ApiError); returns the start time for ``release``."""
        if self.waiting >= self.max_queue and (self.active or self._engine.locked()):
            self.rejected += 1
            raise ApiError(429, f"the server is busy ({self.active} running, {self.waiting} queued)",
                           type_="rate_limit_error", code="server_busy",
                           headers={"Retry-After": str(self.retry_after())})
        self.waiting += 1
        try:
            await self._engine.acquire()
        finally:
            self.waiting -= 1
        self.active += 1
        return time.monotonic()

    def release(self, started: float, outcome: str = "served") -> None:
        """``outcome``: served, cancelled (the client went away) or error (refused before generating)."""
        self.active -= 1
        self.served += outcome == "served"
        self.cancelled += outcome == "cancelled"
        self._avg_s = 0.8 * self._avg_s + 0.2 * (time.monotonic() - started)
        self._engine.release()
