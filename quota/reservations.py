"""Class reservations: which GPUs a course's window holds, when, and who must make room (pure).

``courses.COURSE.reservations`` (parsed by :mod:`gpuhub.core.queue_config`) are wall-clock windows in the site
time zone: ``weekly`` ones repeat every week, ``dates`` ones happen once. A window's instants are computed from
the local wall time with :mod:`zoneinfo`, so "Tue 13:00-15:00" is 13:00 local every Tuesday whatever the UTC
offset (in a zone with DST the window keeps its wall-clock time; a start inside a skipped hour resolves to
the instant after the gap, as :func:`datetime.timestamp` does with ``fold=0``). Instants out are Unix seconds.

Which devices: a window needs ``gpus`` devices of its ``model``. They are assigned greedily in order of window
start (then course, then entry index), each window taking the LAST devices of its model in inventory order that
no overlapping, earlier-assigned window took; the quota policy fills from the front, so reserved devices are the
last to be handed out anyway. A window's devices never change while it runs, because only windows that started
before it (looked back up to :data:`LOOKBACK` seconds) decide them. A window for which too few devices exist
gets what there is (``Assignment.short`` says how many are missing).

During a window its devices go only to members of its course charged to the course's org (``reserved_at``
feeds :func:`quota.queue_order.choose`); others holding them are warned ``quota.reservation_notice_minutes``
before the start and stopped at the start (:func:`notices`). Everyone else's new allocations prefer devices no
window needs soon (:func:`preference`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo

from gpuhub.core.queue_config import Reservation

LOOKBACK = 24 * 3600.0  # how far back windows that might still hold devices are looked for
PREFERENCE_HORIZON = 7 * 24 * 3600.0  # devices needed later than this count as "not needed"


@dataclass(frozen=True)
class Window:
    reservation: Reservation
    start: float
    end: float

    @property
    def course(self) -> str:
        return self.reservation.course

    @property
    def org(self) -> str:
        return self.reservation.org

    @property
    def model(self) -> str:
        return self.reservation.model

    @property
    def gpus(self) -> int:
        return self.reservation.gpus

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def key(self) -> tuple:
        return (self.start, self.course, self.reservation.index, self.end)


@dataclass(frozen=True)
class Assignment:
    window: Window
    devices: tuple[str, ...]
    short: int = 0  # devices the window needed but the inventory did not have free of other windows


@dataclass(frozen=True)
class Notice:
    """A server holding a device a window needs: ``action`` "warn" (window within notice) or "stop" (open)."""

    server_key: str
    user: str
    device_uuid: str
    window: Window
    action: str
    message: str = ""


def notice_message(device_uuid: str, w: Window, action: str, tz: tzinfo) -> str:
    when = "started" if action == "stop" else "starts"
    at = datetime.fromtimestamp(w.start, tz).strftime("%a %Y-%m-%d %H:%M %Z")
    return (
        f"GPU {device_uuid} is reserved for course {w.course!r} ({w.gpus} x {w.model}) from {at}; the window "
        f"{when} then and this server is stopped at that moment: save your work, and start again after the window "
        "or on other GPUs"
    )


def _local(day: date, minute: int, tz: tzinfo) -> float:
    d = day + timedelta(days=minute // 1440)
    m = minute % 1440
    return datetime.combine(d, time(m // 60, m % 60), tzinfo=tz).timestamp()


def windows_between(reservations: Iterable[Reservation], tz: tzinfo, lo: float, hi: float) -> list[Window]:
    """Every window overlapping [lo, hi), sorted by start (then course, index)."""
    first = datetime.fromtimestamp(lo, tz).date() - timedelta(days=1)
    last = datetime.fromtimestamp(hi, tz).date() + timedelta(days=1)
    out = []
    for r in reservations:
        spans = [(day, s, e) for day, s, e in r.dates if first <= day <= last]
        if r.weekly:
            day = first
            while day <= last:
                spans += [(day, s, e) for wd, s, e in r.weekly if wd == day.weekday()]
                day += timedelta(days=1)
        for day, s, e in spans:
            w = Window(r, _local(day, s, tz), _local(day, e, tz))
            if w.start < hi and w.end > lo:
                out.append(w)
    return sorted(out, key=Window.key)


def active_at(reservations: Iterable[Reservation], tz: tzinfo, t: float) -> list[Window]:
    return [w for w in windows_between(reservations, tz, t, t + 1e-6) if w.active(t)]


def upcoming(reservations: Iterable[Reservation], tz: tzinfo, now: float, horizon: float) -> list[Window]:
    """Windows running now or starting within ``horizon`` seconds, in start order."""
    return windows_between(reservations, tz, now, now + horizon)


def assign(
    reservations: Sequence[Reservation], tz: tzinfo, inventory: Sequence, lo: float, hi: float
) -> list[Assignment]:
    """The devices of every window overlapping [lo, hi) (see the module docstring for the rule)."""
    windows = windows_between(reservations, tz, lo - LOOKBACK, hi)
    done: list[Assignment] = []
    for w in windows:
        busy = {d for a in done if a.window.start < w.end and a.window.end > w.start for d in a.devices}
        mine = [d.uuid for d in reversed(inventory) if d.model == w.model and d.uuid not in busy][: w.gpus]
        done.append(Assignment(w, tuple(mine), w.gpus - len(mine)))
    return [a for a in done if a.window.start < hi and a.window.end > lo]


def reserved_at(reservations: Sequence[Reservation], tz: tzinfo, inventory: Sequence, t: float) -> dict[str, str]:
    """{device uuid: course} for the windows active at ``t`` (what :func:`quota.queue_order.choose` takes)."""
    return {d: a.window.course for a in assign(reservations, tz, inventory, t, t + 1e-6) for d in a.devices}


def blocked_for(
    reservations: Sequence[Reservation], tz: tzinfo, inventory: Sequence, courses: Iterable[str], t: float
) -> dict[str, Window]:
    """{device uuid: window} of the devices a request charged to ``courses`` (the courses of its org the user is
    a member of) may NOT take at ``t``: those of the windows active then whose course is not one of them (the
    direct allocation path, :mod:`quota.store`, hands these to :func:`quota.policy.decide`)."""
    mine = set(courses)
    return {
        d: a.window
        for a in assign(reservations, tz, inventory, t, t + 1e-6)
        if a.window.course not in mine
        for d in a.devices
    }


def course_members(site) -> dict[str, set[str]]:
    """{course: its instructors and students} for :func:`notices`. A course with IdP groups is left out: who is in
    them is known only at login, so its servers are spared by being charged to the course's org alone."""
    return {
        k: set(c.instructors) | set(c.students)
        for k, c in site.courses.items()
        if not (c.instructors_idp_groups or c.students_idp_groups)
    }


def notices(
    reservations: Sequence[Reservation],
    tz: tzinfo,
    inventory: Sequence,
    holdings: Iterable,
    now: float,
    notice_seconds: float,
    members: Mapping[str, Iterable[str]] | None = None,
) -> list[Notice]:
    """Holders (``device_uuid``, ``server_key``, ``user``, ``org``) of devices that a window starting within
    ``notice_seconds`` ("warn") or running now ("stop") needs, except the window's course's own servers: charged
    to the course's org, and by a member when ``members`` ({course: users}) lists the course."""
    held = {h.device_uuid: h for h in holdings}
    out = []
    for a in assign(reservations, tz, inventory, now, now + notice_seconds + 1e-6):
        w = a.window
        for uuid in a.devices:
            h = held.get(uuid)
            if h is None or (h.org == w.org and (members is None or w.course not in members
                                                  or h.user in members[w.course])):  # fmt: skip
                continue
            action = "stop" if w.active(now) else "warn"
            out.append(Notice(h.server_key, h.user, uuid, w, action, notice_message(uuid, w, action, tz)))
    return out


def preference(
    reservations: Sequence[Reservation],
    tz: tzinfo,
    inventory: Sequence,
    now: float,
    horizon: float = PREFERENCE_HORIZON,
) -> Callable[[object, Sequence], list]:
    """``prefer(request, devices)`` for :func:`quota.queue_order.choose`: a course's request puts its own active
    window's devices first (they are its to use); everyone else gets the devices that no window needs within
    ``horizon`` first, then those needed latest; ties keep inventory order."""
    needed_at: dict[str, float] = {}
    own: dict[str, str] = {}
    for a in assign(reservations, tz, inventory, now, now + horizon):
        for d in a.devices:
            needed_at[d] = min(needed_at.get(d, math.inf), max(a.window.start - now, 0.0))
            if a.window.active(now):
                own[d] = a.window.course
    order = {d.uuid: i for i, d in enumerate(inventory)}

    def prefer(request, devices: Sequence) -> list:
        courses = set(getattr(request, "courses", ()) or ())

        def key(d):
            mine = own.get(d.uuid) in courses
            return (0 if mine else 1, -needed_at.get(d.uuid, math.inf), order.get(d.uuid, len(order)))

        return sorted(devices, key=key)

    return prefer


@dataclass(frozen=True)
class _Courses:
    courses: tuple[str, ...]


def for_allocation(
    reservations: Sequence[Reservation],
    tz: tzinfo,
    full_inventory: Sequence,
    inventory: Sequence,
    courses: Iterable[str],
    t: float,
) -> tuple[dict[str, tuple[str, str, str]], tuple]:
    """What a direct allocation at ``t`` by a request charged to ``courses`` needs (:mod:`quota.store`): the
    devices it may not take now ({uuid: (course, course's org, "HH:MM" end in the site zone)}, for
    :class:`quota.policy.Snapshot`), and ``inventory`` in its order of preference (:func:`preference`).
    ``full_inventory`` places the windows (the same devices whatever part of it ``inventory`` is)."""
    if not reservations:
        return {}, tuple(inventory)
    mine = tuple(courses)
    blocked = {
        d: (w.course, w.org, datetime.fromtimestamp(w.end, tz).strftime("%H:%M %Z"))
        for d, w in blocked_for(reservations, tz, full_inventory, mine, t).items()
    }
    prefer = preference(reservations, tz, full_inventory, t)
    return blocked, tuple(prefer(_Courses(mine), list(inventory)))
