"""Idle, defined once: the GPU exporter, the culler and ``bench/idle.py`` all use this module.

**Windows.** Time is cut into windows of ``idle.window_seconds`` aligned to the Unix epoch. A
device's window is *idle* when every utilisation sample in it was <= ``idle.gpu_threshold``
(its peak is at or under the threshold), *busy* when one sample was above, and *missing* when no
sample fell in it (exporter down, device gone). Memory held with no kernel running shows 0 %
utilisation, so it is idle ("idle-held").

**A device's idle seconds** at time ``now`` = window length x the number of consecutive idle
windows, counting back from the last complete one; a busy sample in the current (partial) window,
a busy window or a missing window ends the count (no data is never counted as idle). This is
Run:ai's "each zero window adds 30 s, any utilisation resets", with a threshold instead of zero.

**A server is idle** for ``min(idle seconds of each GPU it holds, seconds since it started,
seconds since one of its kernels was last seen busy)``; a GPU without data makes the whole
server "unknown", never idle. The cull plan (:func:`plan`) warns ``warn_minutes`` before the
timeout, culls only a server whose warning has been up for the full ``warn_minutes``, and never
touches an exempt server.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

WARN = "warn"
CULL = "cull"
CLEAR = "clear"


def window_start(t: float, window_seconds: float) -> float:
    return math.floor(t / window_seconds) * window_seconds


@dataclass(frozen=True)
class Window:
    start: float
    peak: float  # highest utilisation sampled in the window (0..1)


class WindowLog:
    """One device's windows, fed with ``(time, utilisation)`` samples (any rate, in time order).

    Keeps the partial window, the last closed one and the length of the run of contiguous idle
    closed windows, so :meth:`idle_seconds` is O(1) however long the timeout; ``recent`` holds the
    last ``keep`` closed windows for inspection. Same answer as :func:`idle_seconds` on all windows.
    """

    def __init__(self, window_seconds: float, threshold: float, keep: int = 16):
        self.window_seconds, self.threshold = window_seconds, threshold
        self.recent: deque[Window] = deque(maxlen=keep)
        self.current: Window | None = None
        self.last_closed: float | None = None  # start of the last closed window
        self.idle_run = 0  # contiguous idle closed windows ending with last_closed

    def observe(self, t: float, utilization: float | None) -> None:
        if utilization is None:
            return  # no number: the window stays missing unless another sample lands in it
        start = window_start(t, self.window_seconds)
        cur = self.current
        if cur is not None and start < cur.start:
            return  # a clock step backwards: ignore rather than rewrite history
        if cur is None or start > cur.start:
            if cur is not None:
                self._close(cur)
            self.current = Window(start, utilization)
        elif utilization > cur.peak:
            self.current = Window(start, utilization)

    def _close(self, w: Window) -> None:
        contiguous = self.last_closed is not None and w.start == self.last_closed + self.window_seconds
        if w.peak > self.threshold:
            self.idle_run = 0
        else:
            self.idle_run = self.idle_run + 1 if contiguous else 1
        self.last_closed = w.start
        self.recent.append(w)

    def windows(self) -> list[Window]:
        return list(self.recent) + ([self.current] if self.current is not None else [])

    def idle_seconds(self, now: float) -> float | None:
        cur, ws = self.current, self.window_seconds
        if cur is None:
            return None
        now_start = window_start(now, ws)
        if cur.start >= now_start:  # the partial window has samples
            if cur.peak > self.threshold:
                return 0.0
            run = self.idle_run if self.last_closed == now_start - ws else 0
        elif cur.start == now_start - ws:  # no sample yet in this window: cur is the last complete one
            if cur.peak > self.threshold:
                return 0.0
            run = 1 + (self.idle_run if self.last_closed == cur.start - ws else 0)
        else:
            return None  # stale: nothing since before the last complete window
        return run * ws


def idle_seconds(windows: Sequence[Window], now: float, window_seconds: float, threshold: float) -> float | None:
    """Seconds of consecutive idle windows before ``now`` (see the module doc); None: no data at all."""
    if not windows:
        return None
    current_start = window_start(now, window_seconds)
    expect = current_start - window_seconds  # the last complete window
    idle = 0
    for w in reversed(windows):
        if w.start >= current_start:
            if w.peak > threshold:
                return 0.0  # busy right now
            continue
        if w.start != expect or w.peak > threshold:
            break  # a missing window or a busy one ends the run
        idle += 1
        expect -= window_seconds
    if idle == 0 and windows[-1].start < current_start - window_seconds:
        return None  # the newest data is older than the last complete window: stale
    return idle * window_seconds


# ---------------------------------------------------------------- per server


@dataclass(frozen=True)
class ServerView:
    """One running GPU server as the culler sees it in one tick."""

    key: str  # "user/server" (server "" for the default one)
    user: str
    org: str | None
    devices: tuple[str, ...]
    started_at: float  # Unix seconds
    device_idle: Mapping[str, float | None]  # per device: idle seconds (None: no data)
    kernels_busy: bool | None  # None: the kernels could not be read this tick
    timeout_seconds: float
    exempt_until: float | None = None


@dataclass
class Clock:
    """What the culler remembers of one server between ticks."""

    kernel_busy_at: float | None = None  # last tick a kernel was busy (or unknown)
    warned_at: float | None = None


@dataclass(frozen=True)
class Verdict:
    key: str
    idle_seconds: float | None  # None: unknown (no utilisation data): never culled
    timeout_seconds: float
    action: str | None = None  # WARN, CULL, CLEAR or None
    warn_at: float | None = None  # Unix seconds the warning shows (if the clock keeps running)
    cull_at: float | None = None
    exempt: bool = False
    reason: str = ""


def server_idle_seconds(v: ServerView, clock: Clock, now: float) -> float | None:
    """The server's idle seconds (module doc); None when a GPU has no data."""
    if not v.devices:
        return None
    per_device = [v.device_idle.get(u) for u in v.devices]
    if any(s is None for s in per_device):
        return None
    candidates = [min(per_device), max(0.0, now - v.started_at)]
    if clock.kernel_busy_at is not None:
        candidates.append(max(0.0, now - clock.kernel_busy_at))
    return min(candidates)


def judge(v: ServerView, clock: Clock, now: float, warn_seconds: float) -> Verdict:
    """Update ``clock`` with this tick's kernel state and decide for one server."""
    if v.kernels_busy is not False:  # busy, or unknown: never cull on a guess
        clock.kernel_busy_at = now
    idle = server_idle_seconds(v, clock, now)
    timeout = v.timeout_seconds
    warn_from = max(0.0, timeout - warn_seconds)
    exempt = v.exempt_until is not None and v.exempt_until > now
    if idle is None or idle < warn_from or exempt:
        action = CLEAR if clock.warned_at is not None else None
        clock.warned_at = None
        reason = (
            "exempt"
            if exempt
            else "kernel busy or state unknown"
            if v.kernels_busy is not False
            else "no utilisation data"
            if idle is None
            else "active"
        )
        at = None if idle is None else now + (warn_from - idle)
        return Verdict(
            v.key,
            idle,
            timeout,
            action,
            warn_at=at,
            cull_at=None if idle is None else now + (timeout - idle),
            exempt=exempt,
            reason=reason,
        )
    if clock.warned_at is None:
        clock.warned_at = now
        return Verdict(
            v.key, idle, timeout, WARN, warn_at=now, cull_at=now + max(timeout - idle, warn_seconds), reason="idle"
        )
    cull_at = max(now + (timeout - idle), clock.warned_at + warn_seconds)
    action = CULL if idle >= timeout and now >= clock.warned_at + warn_seconds else None
    return Verdict(v.key, idle, timeout, action, warn_at=clock.warned_at, cull_at=cull_at, reason="idle")


@dataclass
class Planner:
    """The culler's memory across ticks: one :class:`Clock` per running server."""

    warn_seconds: float
    clocks: dict[str, Clock] = field(default_factory=dict)

    def tick(self, servers: Iterable[ServerView], now: float) -> list[Verdict]:
        seen, out = set(), []
        for v in servers:
            seen.add(v.key)
            out.append(judge(v, self.clocks.setdefault(v.key, Clock()), now, self.warn_seconds))
        for gone in set(self.clocks) - seen:
            del self.clocks[gone]
        return out


# ---------------------------------------------------------------- timeouts from the site


def _override(site, user: str, org: str | None, attr: str) -> float | None:
    """A course's value (members' servers charged to its org; the most lenient course wins), else the org's."""
    if org is None:
        return None
    courses = [
        getattr(c, attr)
        for c in site.courses.values()
        if c.org == org and getattr(c, attr) is not None and c.role_of(user)
    ]
    if courses:
        return max(courses)
    o = site.organizations.get(org)
    return getattr(o, attr) if o is not None else None


def gpu_timeout_seconds(site, user: str, org: str | None) -> float:
    minutes = _override(site, user, org, "idle_timeout_minutes")
    return 60.0 * (minutes if minutes is not None else site.idle.timeout_minutes)


def http_timeout_seconds(site, user: str, org: str | None) -> float:
    minutes = _override(site, user, org, "idle_http_timeout_minutes")
    return 60.0 * (minutes if minutes is not None else site.idle.http_timeout_minutes)


def all_http_timeouts(site) -> list[float]:
    """Every HTTP timeout the site can apply (jupyterhub-idle-culler's --timeout is their minimum)."""
    minutes = [site.idle.http_timeout_minutes]
    minutes += [o.idle_http_timeout_minutes for o in site.organizations.values() if o.idle_http_timeout_minutes]
    minutes += [c.idle_http_timeout_minutes for c in site.courses.values() if c.idle_http_timeout_minutes]
    return [60.0 * m for m in minutes]


def describe(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s" if m else f"{s} s"
