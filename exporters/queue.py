"""The queue's series, read from the durable queue store at scrape time (quota.queue_store).

- ``gpuhub_queue_length{org}``: requests waiting (queued, not yet granted), every site org present.
- ``gpuhub_queue_wait_seconds{outcome}``: histogram of how long requests waited, observed when one is served
  (``served``: until its grant), cancelled or expired; kept in the database, so it continues across restarts.
- ``gpuhub_queue_oldest_wait_seconds{org}``: how long the org's oldest queued request has waited (0: none), for
  the "oldest request waits over 30 minutes" alert.
- ``gpuhub_org_fairshare_factor{org}``: each org's current fair-share factor F = 2^(-U/S) (quota.queue_order).

The store is read at most once per ``ttl`` seconds (default 10; fair share sums weeks of the ledger), the
last reading is served in between; a failed read yields no queue series for that scrape (the usage exporter's
own series are unaffected).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from quota.queue_store import QueueStore
from quota.queue_waits import OUTCOMES

log = logging.getLogger(__name__)


class QueueCollector(Collector):
    def __init__(self, store: QueueStore, ttl: float = 10.0, monotonic: Callable[[], float] = time.monotonic):
        self.store, self.ttl, self.monotonic = store, ttl, monotonic
        self._lock = threading.Lock()
        self._reading: tuple | None = None
        self._read_at = -float("inf")

    def _read(self) -> tuple:
        with self._lock:
            if self._reading is None or self.monotonic() - self._read_at >= self.ttl:
                self._reading = (self.store.waiting(), self.store.wait_stats(), self.store.factors())
                self._read_at = self.monotonic()
            return self._reading

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        try:
            waiting, stats, factors = self._read()
        except Exception as e:  # noqa: BLE001 - one failed read must not fail the whole scrape
            log.warning("reading the GPU queue failed: %s", e)
            return
        length = GaugeMetricFamily("gpuhub_queue_length", "GPU requests waiting in the queue", labels=["org"])
        oldest = GaugeMetricFamily(
            "gpuhub_queue_oldest_wait_seconds",
            "Seconds the oldest waiting GPU request has waited (0: none)",
            labels=["org"],
        )
        now = self.store.now()
        for org, (n, first) in sorted(waiting.items()):
            length.add_metric([org], n)
            oldest.add_metric([org], max((now - first).total_seconds(), 0.0) if first else 0.0)
        yield length
        yield oldest
        wait = HistogramMetricFamily(
            "gpuhub_queue_wait_seconds",
            "Seconds GPU requests waited in the queue, observed when served, cancelled or expired",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            s = stats[outcome]
            wait.add_metric([outcome], [(le, float(n)) for le, n in s["buckets"]], s["sum"])
        yield wait
        fs = GaugeMetricFamily(
            "gpuhub_org_fairshare_factor",
            "An organization's fair-share factor 2^(-usage/share) (1 = unused)",
            labels=["org"],
        )
        for org in sorted(self.store.site.organizations):
            fs.add_metric([org], factors.get(org, 1.0))
        yield fs
