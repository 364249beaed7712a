"""The usage exporter: per-organization series derived from the durable usage ledger.

Every counter here is recomputed from ``gpuhub_usage_intervals`` (and ``gpuhub_spawn_refusals``),
so it continues across exporter restarts instead of starting at 0: Prometheus' ``increase()`` over
any window equals what the ledger says for that window (up to scrape timing).

A background refresher reads the database every ``interval`` seconds (default 5): closed
intervals are summed in SQL with the same exact arithmetic billing uses (:mod:`quota.sqlexpr`);
open intervals are kept as rows and charged up to the scrape instant, so a scrape never queries
the database and an open interval grows smoothly between refreshes.

Series:

- ``gpuhub_org_allocated_gpu_seconds_total{org,model}``: Σ gpus × ((ended_at or now) − started_at)
- ``gpuhub_org_allocated_weighted_gpu_seconds_total{org,model}``: the same × model weight (what budgets count)
- ``gpuhub_org_gpus_in_use{org,model}`` (from ``gpuhub_allocations``), ``gpuhub_org_gpu_limit{org}``
- ``gpuhub_org_budget_seconds{org}``, ``gpuhub_org_budget_used_seconds{org}``,
  ``gpuhub_org_budget_used_ratio{org}`` (weighted GPU-seconds this calendar month in the site zone),
  ``gpuhub_budget_period_start_timestamp_seconds``
- ``gpuhub_org_running_servers{org}`` (open intervals, CPU-only servers included)
- ``gpuhub_spawn_refusals_total{org,reason}``: ``reason`` is the rule id of :class:`quota.policy.Rule` (the
  ``X-Gpuhub-Rule`` of the REST answer); counts stored under an id an older release used are added to today's
- ``gpuhub_idle_culls_total{org,kind}``: servers stopped for idleness (ledger end_reason ``gpu-idle`` →
  kind ``gpu``, ``http-idle`` → ``http``; see :mod:`gpuhub.hub.idle_service`)
- self metrics with ``exporter="usage"`` (see :func:`exporters.gpu.self_metrics`)
- the GPU queue's series (:mod:`exporters.queue`, registered with an engine): ``gpuhub_queue_length{org}``,
  ``gpuhub_queue_wait_seconds{outcome}``, ``gpuhub_queue_oldest_wait_seconds{org}``,
  ``gpuhub_org_fairshare_factor{org}``; read at scrape time, at most once per 10 s

Rows with no org use ``org=""``. Idle-allocated GPU-seconds need utilization, which the ledger
does not have: the GPU exporter's ``gpuhub_gpu_idle_allocated_seconds_total`` provides them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import bindparam, func, literal_column, select, text
from sqlalchemy.engine import Engine

from gpuhub.core.periods import month_bounds_at, utcnow
from quota import models as ledger
from quota.policy import current_id
from quota.queue_store import QueueStore
from quota.sqlexpr import OVERLAP_WHERE, Dialect, timed, window

from .gpu import self_metrics
from .periodic import PeriodicSampler
from .queue import QueueCollector

log = logging.getLogger(__name__)

EXPORTER = "usage"


@dataclass(frozen=True)
class OpenInterval:
    org: str
    model: str
    gpus: int
    weight: float
    started_at: float  # Unix seconds


@dataclass(frozen=True)
class LedgerReading:
    """One consistent read of the ledger (closed intervals pre-summed, open ones as rows)."""

    read_at: datetime
    month_start: datetime
    month_end: datetime
    closed_seconds: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (org, model) -> GPU-s
    closed_weighted: Mapping[tuple[str, str], float] = field(default_factory=dict)
    month_closed_weighted: Mapping[str, float] = field(default_factory=dict)  # org -> weighted GPU-s
    open_intervals: tuple[OpenInterval, ...] = ()
    running_servers: Mapping[str, int] = field(default_factory=dict)
    gpus_in_use: Mapping[tuple[str, str], int] = field(default_factory=dict)
    refusals: Mapping[tuple[str, str], int] = field(default_factory=dict)
    culls: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (org, kind) -> idle culls


IDLE_REASONS = {"gpu-idle": "gpu", "http-idle": "http"}


class LedgerSource(Protocol):
    def read(self, now: datetime, month_start: datetime, month_end: datetime) -> LedgerReading: ...


class SqlLedgerSource:
    """Reads the quota tables with SQLAlchemy (SQLite or PostgreSQL), read-only.

    Closed intervals are never updated (quota.models), so the sums over those that ended
    before a "frozen" bound (``freeze_lag`` ago, rounded down to ``refreeze_seconds``) are computed
    once per bound and cached; each read only sums the recently closed rows (via the index on
    ``ended_at``) and fetches the open ones. A row closed later with an ``ended_at`` backdated
    beyond the lag is picked up at the next re-freeze (counters then step up; they never go down).
    """

    def __init__(
        self, engine: Engine, *, freeze_lag: timedelta = timedelta(days=1), refreeze_seconds: float = 6 * 3600
    ):
        self.engine = engine
        self.dialect = Dialect(engine.dialect.name)
        self.freeze_lag = freeze_lag
        self.refreeze_seconds = refreeze_seconds
        self._frozen_before: datetime | None = None
        self._frozen_totals: dict[tuple[str, str], tuple[float, float]] = {}
        self._frozen_month: tuple[datetime, dict[str, float]] | None = None

    def _closed_totals_sql(self, where: str) -> str:
        d = self.dialect
        dur = d.greatest(f"{d.epoch_us('ended_at')} - {d.epoch_us('started_at')}", "0")
        return (
            f"SELECT coalesce(org, '') AS org, coalesce(model, '') AS model, "
            f"SUM(gpus * {dur}) AS us, SUM(gpus * weight * {dur}) AS wus "
            f"FROM {ledger.usage_intervals.name} WHERE ended_at IS NOT NULL AND gpus > 0 AND {where} "
            f"GROUP BY coalesce(org, ''), coalesce(model, '')"
        )

    def _month_closed_sql(self, where: str) -> str:
        return (
            f"SELECT coalesce(org, '') AS org, SUM(gpus * weight * {self.dialect.clipped_us()}) AS wus "
            f"FROM {ledger.usage_intervals.name} WHERE ended_at IS NOT NULL AND gpus > 0 AND {OVERLAP_WHERE} "
            f"AND {where} GROUP BY coalesce(org, '')"
        )

    def _freeze_bound(self, now: datetime) -> datetime:
        t = (now - self.freeze_lag).timestamp()
        return datetime.fromtimestamp(t - t % self.refreeze_seconds, UTC)

    def read(self, now: datetime, month_start: datetime, month_end: datetime) -> LedgerReading:
        ui, al, rf = ledger.usage_intervals, ledger.allocations, ledger.spawn_refusals
        bound = self._freeze_bound(now)
        frozen_param = bindparam("frozen", bound, type_=ledger.UtcDateTime)
        closed_s: dict[tuple[str, str], float] = defaultdict(float)
        closed_w: dict[tuple[str, str], float] = defaultdict(float)
        month_w: dict[str, float] = defaultdict(float)
        running: Counter[str] = Counter()
        opened: list[OpenInterval] = []
        with self.engine.connect() as conn:  # one transaction: a consistent snapshot on PostgreSQL
            if self._frozen_before != bound:
                self._frozen_totals = {
                    (org, model): ((us or 0) / 1e6, (wus or 0) / 1e6)
                    for org, model, us, wus in conn.execute(
                        text(self._closed_totals_sql("ended_at < :frozen")).bindparams(frozen_param)
                    )
                }
                self._frozen_month = None
                self._frozen_before = bound
            if self._frozen_month is None or self._frozen_month[0] != month_start:
                rows = conn.execute(
                    timed(self._month_closed_sql("ended_at < :frozen")).bindparams(frozen_param),
                    window(month_start, month_end, now),
                )
                self._frozen_month = (month_start, {org: (wus or 0) / 1e6 for org, wus in rows})
            for key, (us, wus) in self._frozen_totals.items():
                closed_s[key] += us
                closed_w[key] += wus
            for org, wus in self._frozen_month[1].items():
                month_w[org] += wus
            for org, model, us, wus in conn.execute(
                text(self._closed_totals_sql("ended_at >= :frozen")).bindparams(frozen_param)
            ):
                closed_s[(org, model)] += (us or 0) / 1e6
                closed_w[(org, model)] += (wus or 0) / 1e6
            for org, wus in conn.execute(
                timed(self._month_closed_sql("ended_at >= :frozen")).bindparams(frozen_param),
                window(month_start, month_end, now),
            ):
                month_w[org] += (wus or 0) / 1e6
            started_us = literal_column(self.dialect.epoch_us(ui.c.started_at.name))
            rows = conn.execute(
                select(ui.c.org, ui.c.model, ui.c.gpus, ui.c.weight, started_us).where(ui.c.ended_at.is_(None))
            )
            for org, model, gpus, weight, started in rows:
                running[org or ""] += 1
                if gpus and gpus > 0:
                    opened.append(OpenInterval(org or "", model or "", int(gpus), float(weight), started / 1e6))
            in_use = {
                (org or "", model or ""): int(n)
                for org, model, n in conn.execute(
                    select(al.c.org, al.c.model, func.count()).group_by(al.c.org, al.c.model)
                )
            }
            refusals: dict[tuple[str, str], int] = defaultdict(int)
            for org, reason, n in conn.execute(select(rf.c.org, rf.c.reason, rf.c.count)):
                refusals[(org or "", current_id(reason or ""))] += int(n or 0)  # a former id counts as today's
            culls = {
                (org or "", IDLE_REASONS[reason]): int(n)
                for org, reason, n in conn.execute(
                    select(ui.c.org, ui.c.end_reason, func.count())
                    .where(ui.c.end_reason.in_(list(IDLE_REASONS)))
                    .group_by(ui.c.org, ui.c.end_reason)
                )
            }
        return LedgerReading(
            read_at=now,
            month_start=month_start,
            month_end=month_end,
            culls=culls,
            closed_seconds=dict(closed_s),
            closed_weighted=dict(closed_w),
            month_closed_weighted=dict(month_w),
            open_intervals=tuple(opened),
            running_servers=dict(running),
            gpus_in_use=in_use,
            refusals=dict(refusals),
        )


class _OpenSums:
    """Open intervals pre-aggregated so a scrape costs O(orgs), not O(open servers)."""

    def __init__(self, rows: Iterable[OpenInterval], month_start: float):
        self.month_start = month_start
        self.gpus: dict[tuple[str, str], float] = defaultdict(float)  # Σ gpus
        self.gpu_start: dict[tuple[str, str], float] = defaultdict(float)  # Σ gpus × start
        self.w: dict[tuple[str, str], float] = defaultdict(float)  # Σ gpus × weight
        self.w_start: dict[tuple[str, str], float] = defaultdict(float)
        self.month_w: dict[str, float] = defaultdict(float)  # Σ gpus × weight (org)
        self.month_w_start: dict[str, float] = defaultdict(float)  # Σ gpus × weight × max(start, month_start)
        self.latest_start: float = float("-inf")
        for r in rows:
            key = (r.org, r.model)
            gw = r.gpus * r.weight
            self.gpus[key] += r.gpus
            self.gpu_start[key] += r.gpus * r.started_at
            self.w[key] += gw
            self.w_start[key] += gw * r.started_at
            self.month_w[r.org] += gw
            self.month_w_start[r.org] += gw * max(r.started_at, month_start)
            self.latest_start = max(self.latest_start, r.started_at)


class UsageSampler(PeriodicSampler):
    """Refreshes a :class:`LedgerReading` in the background; renders counters at scrape time."""

    thread_name = "gpuhub-usage-refresh"

    def __init__(
        self,
        site: Any,
        source: LedgerSource,
        *,
        interval: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.site = site
        self.source = source
        self.interval = interval
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._reading: LedgerReading | None = None
        self._open: _OpenSums | None = None
        self._errors: Counter[str] = Counter({"ledger": 0, "sampler": 0})
        self._up = False
        self._last_success: float | None = None
        self._duration: float | None = None
        self._high_water: dict[tuple[str, str, str], float] = {}

    def refresh(self) -> LedgerReading | None:
        started = self.monotonic()
        now = self.clock()
        lo, hi = month_bounds_at(now, self.site.tz)
        try:
            reading = self.source.read(now, lo, hi)
        except Exception as e:
            (log.warning if self._up or self._reading is None else log.debug)("reading the usage ledger failed: %s", e)
            with self._lock:
                self._errors["ledger"] += 1
                self._up = False
                self._duration = self.monotonic() - started
            return None
        sums = _OpenSums(reading.open_intervals, lo.timestamp())
        with self._lock:
            self._reading, self._open = reading, sums
            self._up = True
            self._last_success = now.timestamp()
            self._duration = self.monotonic() - started
        return reading

    # ------------------------------------------------------------ loop (exporters.periodic)

    def _pass(self) -> LedgerReading | None:
        return self.refresh()

    def _has_run(self) -> bool:
        return self._reading is not None  # run_usage_exporter reads once before serving

    # ------------------------------------------------------------ values at scrape time

    def _monotonic(self, name: str, key: tuple[str, str], value: float) -> float:
        """Never let a counter go down (a backdated close would otherwise look like a reset)."""
        hw_key = (name, *key)
        prev = self._high_water.get(hw_key)
        if prev is not None and value < prev:
            return prev
        self._high_water[hw_key] = value
        return value

    def values(self) -> dict[str, Any]:
        now_dt = self.clock()
        now = now_dt.timestamp()
        lo, hi = month_bounds_at(now_dt, self.site.tz)
        with self._lock:
            r, sums = self._reading, self._open
            out: dict[str, Any] = {
                "up": self._up,
                "last_success": self._last_success,
                "duration": self._duration,
                "errors": dict(self._errors),
                "month_start": lo.timestamp(),
            }
            if r is None:
                return out
            if sums.month_start != lo.timestamp():  # the month turned since the last refresh
                sums = _OpenSums(r.open_intervals, lo.timestamp())
            # An interval cannot have been charged past "now" (guards a clock that stepped back).
            t = max(now, sums.latest_start)
            keys = set(r.closed_seconds) | set(sums.gpus)
            keys |= {(org, model) for org in self.site.organizations for model in self.site.gpus.models}
            allocated, weighted = {}, {}
            for key in keys:
                a = r.closed_seconds.get(key, 0.0) + sums.gpus.get(key, 0.0) * t - sums.gpu_start.get(key, 0.0)
                w = r.closed_weighted.get(key, 0.0) + sums.w.get(key, 0.0) * t - sums.w_start.get(key, 0.0)
                allocated[key] = self._monotonic("allocated", key, a)
                weighted[key] = self._monotonic("weighted", key, w)
            same_month = r.month_start == lo
            month_used = defaultdict(float)
            for org, v in r.month_closed_weighted.items() if same_month else ():
                month_used[org] += v
            end = min(t, hi.timestamp())
            for org, gw in sums.month_w.items():
                month_used[org] += max(gw * end - sums.month_w_start[org], 0.0)
            out.update(
                allocated=allocated,
                weighted=weighted,
                month_used=dict(month_used),
                running=dict(r.running_servers),
                in_use=dict(r.gpus_in_use),
                refusals=dict(r.refusals),
                culls=dict(r.culls),
            )
            return out


class UsageCollector(Collector):
    def __init__(self, sampler: UsageSampler):
        self.sampler = sampler

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        v = self.sampler.values()
        site = self.sampler.site
        orgs = site.organizations
        period = GaugeMetricFamily(
            "gpuhub_budget_period_start_timestamp_seconds",
            f"Start of the current budget month ({site.timezone}) as Unix time",
        )
        period.add_metric([], v["month_start"])
        yield period

        limit = GaugeMetricFamily(
            "gpuhub_org_gpu_limit", "GPUs an organization may hold at once (site config)", labels=["org"]
        )
        budget = GaugeMetricFamily(
            "gpuhub_org_budget_seconds",
            "Weighted GPU-seconds an organization may use per calendar month (site config)",
            labels=["org"],
        )
        for key, org in orgs.items():
            limit.add_metric([key], org.gpu_limit)
            budget.add_metric([key], org.gpu_hours_per_month * 3600.0)
        yield limit
        yield budget
        if "allocated" in v:
            yield from self._ledger_series(v, orgs)
        yield from self_metrics(EXPORTER, v["up"], v["last_success"], v["duration"], v["errors"])

    def _ledger_series(self, v: dict, orgs: Mapping[str, Any]) -> Iterable[Metric]:
        alloc = CounterMetricFamily(
            "gpuhub_org_allocated_gpu_seconds",
            "GPU-seconds allocated to an organization's servers, from the usage ledger",
            labels=["org", "model"],
        )
        for (org, model), x in sorted(v["allocated"].items()):
            alloc.add_metric([org, model], x)
        yield alloc
        weighted = CounterMetricFamily(
            "gpuhub_org_allocated_weighted_gpu_seconds",
            "GPU-seconds allocated times the model's weight (what budgets and bills count), from the usage ledger",
            labels=["org", "model"],
        )
        for (org, model), x in sorted(v["weighted"].items()):
            weighted.add_metric([org, model], x)
        yield weighted

        used = GaugeMetricFamily(
            "gpuhub_org_budget_used_seconds",
            "Weighted GPU-seconds an organization used this calendar month",
            labels=["org"],
        )
        ratio = GaugeMetricFamily(
            "gpuhub_org_budget_used_ratio",
            "Fraction of this month's GPU budget used (absent when the budget is 0)",
            labels=["org"],
        )
        for org in sorted(set(orgs) | set(v["month_used"])):
            x = v["month_used"].get(org, 0.0)
            used.add_metric([org], x)
            cfg = orgs.get(org)
            if cfg is not None and cfg.gpu_hours_per_month > 0:
                ratio.add_metric([org], x / (cfg.gpu_hours_per_month * 3600.0))
        yield used
        yield ratio

        running = GaugeMetricFamily(
            "gpuhub_org_running_servers",
            "Servers with an open usage interval (CPU-only servers included)",
            labels=["org"],
        )
        for org in sorted(set(orgs) | set(v["running"])):
            running.add_metric([org], v["running"].get(org, 0))
        yield running

        in_use = GaugeMetricFamily(
            "gpuhub_org_gpus_in_use", "GPUs an organization holds now (allocation table)", labels=["org", "model"]
        )
        keys = set(v["in_use"]) | {(o, m) for o in orgs for m in self.sampler.site.gpus.models}
        for org, model in sorted(keys):
            in_use.add_metric([org, model], v["in_use"].get((org, model), 0))
        yield in_use

        refusals = CounterMetricFamily(
            "gpuhub_spawn_refusals", "Spawn requests refused, by organization and rule", labels=["org", "reason"]
        )
        for (org, reason), n in sorted(v["refusals"].items()):
            refusals.add_metric([org, reason], n)
        yield refusals

        culls = CounterMetricFamily(
            "gpuhub_idle_culls",
            "Servers stopped for idleness, by organization and kind "
            "(gpu: GPUs and kernels idle; http: CPU-only, no HTTP activity)",
            labels=["org", "kind"],
        )
        keys = set(v["culls"]) | {(o, k) for o in orgs for k in IDLE_REASONS.values()}
        for org, kind in sorted(keys):
            culls.add_metric([org, kind], v["culls"].get((org, kind), 0))
        yield culls


def build_usage_exporter(
    site: Any,
    engine: Engine | None = None,
    *,
    source: LedgerSource | None = None,
    registry: CollectorRegistry | None = None,
    **sampler_args: Any,
) -> tuple[CollectorRegistry, UsageSampler]:
    """A registry with the usage collector and its (not yet started) refresher.

    ``source`` wins over ``engine``; with neither, an engine on ``site.hub.database_url`` is made.
    """
    if source is None:
        if engine is None:
            from sqlalchemy import create_engine

            engine = create_engine(site.hub.database_url, pool_pre_ping=True)
        source = SqlLedgerSource(engine)
    sampler = UsageSampler(site, source, **sampler_args)
    registry = registry or CollectorRegistry(auto_describe=False)
    registry.register(UsageCollector(sampler))
    if engine is not None:  # the queue's series (exporters.queue), from the same database
        registry.register(QueueCollector(QueueStore(engine, site, sampler.clock)))
    return registry, sampler
