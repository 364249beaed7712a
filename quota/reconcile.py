"""Reconcile Docker's view with the ledger (pure: containers + open intervals -> a plan).

The adapter must read Docker FIRST and the database SECOND: a spawn commits its interval before
it creates the container, so every container in the Docker listing already has its interval in
the later database read (unless it was released meanwhile, i.e. it is being stopped anyway).

Plan rules, per server key ``user/server``:
- open interval, running container with the same devices: fine.
- open interval, running container with other devices: stop it and close at now ("device-mismatch").
- open interval, only an exited container that finished after the interval started: close at
  Docker's finish time ("container-exited") — exact even if the hub was down when it died.
- open interval, no container (or only one older than the interval): close at the last heartbeat
  ("container-missing"), unless the interval is younger than ``pending_grace_seconds`` (a spawn
  still creating its container) or, while the hub reports the server's spawn as pending (``starting``),
  younger than ``start_limit_seconds`` (the hub's start timeout and a margin: a class waiting for start
  slots, or a slow home preparation, outlasts the short grace with its devices rightly held).
- running labelled container, no open interval: ``unknown="stop"`` stops it; ``"adopt"`` opens an
  interval from its labels and start time, unless a recently closed interval already covered it
  (it is being stopped) or its devices are held by someone else; those are stopped instead.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from gpuhub.core import labels as lb
from gpuhub.core.keys import server_key
from gpuhub.core.periods import utc


@dataclass(frozen=True)
class ContainerView:
    name: str
    labels: Mapping[str, str]
    running: bool
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def server_key(self) -> str:
        return server_key(self.labels.get(lb.USER, ""), self.labels.get(lb.SERVER, ""))

    @property
    def devices(self) -> tuple[str, ...]:
        return lb.split_devices(self.labels.get(lb.GPUS))


@dataclass(frozen=True)
class IntervalView:
    id: int
    server_key: str
    started_at: datetime
    heartbeat_at: datetime | None = None
    device_uuids: tuple[str, ...] = ()
    ended_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping) -> IntervalView:
        """From a :meth:`quota.store.QuotaStore.open_intervals` dict."""
        return cls(
            row["id"],
            row["server_key"],
            row["started_at"],
            row.get("heartbeat_at"),
            lb.split_devices(row.get("device_uuids")),
            row.get("ended_at"),
        )


@dataclass(frozen=True)
class Close:
    interval_id: int
    server_key: str
    at: datetime
    reason: str


@dataclass(frozen=True)
class Stop:
    container: str
    server_key: str
    reason: str


@dataclass(frozen=True)
class Adopt:
    container: str
    user: str
    server_name: str
    org: str | None
    image: str
    devices: tuple[str, ...]
    model: str | None
    started_at: datetime


@dataclass(frozen=True)
class Plan:
    close: tuple[Close, ...] = ()
    stop: tuple[Stop, ...] = ()
    adopt: tuple[Adopt, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (self.close or self.stop or self.adopt)


def _ours(c: ContainerView, hub_id: str | None) -> bool:
    return c.labels.get(lb.MANAGED) == "1" and (hub_id is None or c.labels.get(lb.HUB) == hub_id)


def _clamp(at: datetime, lo: datetime, hi: datetime) -> datetime:
    return max(lo, min(at, hi))


def plan(
    containers: Iterable[ContainerView],
    open_intervals: Iterable[IntervalView],
    now: datetime,
    *,
    unknown: str = "stop",
    hub_id: str | None = None,
    pending_grace_seconds: float = 300.0,
    recently_closed: Iterable[IntervalView] = (),
    held_devices: Iterable[str] = (),
    starting: Collection[str] = (),
    start_limit_seconds: float = 360.0,
) -> Plan:
    """What to close, stop and adopt so the ledger matches Docker (see the module rules)."""
    if unknown not in ("stop", "adopt"):
        raise ValueError(f"unknown_containers must be 'stop' or 'adopt', got {unknown!r}")
    now = utc(now)
    by_key: dict[str, list[ContainerView]] = {}
    for c in containers:
        if _ours(c, hub_id):
            by_key.setdefault(c.server_key, []).append(c)
    closes, stops, adopts, notes = [], [], [], []
    intervals = {iv.server_key: iv for iv in open_intervals}

    for key, iv in sorted(intervals.items()):
        started = utc(iv.started_at)
        last_seen = _clamp(utc(iv.heartbeat_at) if iv.heartbeat_at else started, started, now)
        cs = by_key.get(key, [])
        running = [c for c in cs if c.running]
        exited = [c for c in cs if not c.running and c.finished_at and utc(c.finished_at) >= started]
        if running:
            c = running[0]
            if c.devices != tuple(sorted(iv.device_uuids)):
                stops.append(Stop(c.name, key, "device-mismatch"))
                closes.append(Close(iv.id, key, now, "device-mismatch"))
                notes.append(f"{c.name} holds {list(c.devices)} but the ledger says {list(iv.device_uuids)}")
            for extra in running[1:]:
                stops.append(Stop(extra.name, key, "duplicate-container"))
        elif exited:
            finished = max(utc(c.finished_at) for c in exited)
            closes.append(Close(iv.id, key, _clamp(finished, started, now), "container-exited"))
        elif (now - started) >= timedelta(seconds=start_limit_seconds if key in starting else pending_grace_seconds):
            closes.append(Close(iv.id, key, last_seen, "container-missing"))

    covered = {}
    for iv in recently_closed:
        if iv.ended_at is not None:
            covered[iv.server_key] = max(utc(iv.ended_at), covered.get(iv.server_key, utc(iv.ended_at)))
    held = set(held_devices)
    for key, cs in sorted(by_key.items()):
        if key in intervals:
            continue
        adopted = False
        for c in (c for c in cs if c.running):
            start = utc(c.started_at) if c.started_at else now
            if unknown == "stop":
                stops.append(Stop(c.name, key, "unknown-container"))
            elif adopted:
                stops.append(Stop(c.name, key, "duplicate-container"))
            elif key in covered and covered[key] >= start:
                stops.append(Stop(c.name, key, "already-released"))
            elif held & set(c.devices):
                stops.append(Stop(c.name, key, "devices-held-elsewhere"))
            else:
                adopted = True
                held |= set(c.devices)
                got = c.labels
                adopts.append(
                    Adopt(
                        c.name,
                        got.get(lb.USER, ""),
                        got.get(lb.SERVER, ""),
                        got.get(lb.ORG) or None,
                        got.get(lb.IMAGE, ""),
                        c.devices,
                        got.get(lb.GPU_MODEL) or None,
                        start,
                    )
                )
    return Plan(tuple(closes), tuple(stops), tuple(adopts), tuple(notes))
