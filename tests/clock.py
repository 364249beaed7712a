"""A settable clock for code that takes an injected ``clock()`` returning an aware datetime."""

from __future__ import annotations

from datetime import datetime, timedelta


class Clock:
    """``clock()`` is now; ``clock.advance(90)`` or ``clock.advance(days=1, minutes=5)`` travels in time."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0.0, **kw) -> datetime:
        self.now += timedelta(seconds=seconds, **kw)
        return self.now
