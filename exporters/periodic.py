"""The background loop both exporters' samplers run on: one pass every ``interval`` seconds.

A pass that raises is logged and counted (``errors["sampler"]``) and the loop goes on; a pass
that overruns its slot is not followed by a burst of catch-up passes. When the entry point ran a
first pass before serving, the loop waits one interval before its own first pass.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class PeriodicSampler:
    """Base class: subclasses set ``interval``, ``_lock``, ``_errors`` and implement :meth:`_pass`."""

    interval: float
    thread_name = "gpuhub-sampler"
    _thread: threading.Thread | None = None

    def _pass(self) -> object:
        raise NotImplementedError

    def _has_run(self) -> bool:
        """True when a first pass already happened (so the loop starts by waiting)."""
        return False

    def _close(self) -> None:
        """Release the sources once the loop has stopped."""

    def start(self):
        if self._thread is None:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout)
            self._thread = None
        self._close()

    def _run(self) -> None:
        deadline = time.monotonic()
        if self._has_run():
            deadline += self.interval
            self._stop.wait(self.interval)
        while not self._stop.is_set():
            try:
                self._pass()
            except Exception:
                log.exception("%s: sampling pass failed", self.thread_name)
                with self._lock:
                    self._errors["sampler"] += 1
            deadline += self.interval
            delay = deadline - time.monotonic()
            if delay < 0:  # fell behind (slow NVML, Docker or database): skip, don't burst
                deadline, delay = time.monotonic(), 0.0
            self._stop.wait(delay)
