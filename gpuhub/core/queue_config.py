"""The GPU queue's site config: wait limit, fair-share half-life, shares and class reservations (pure).

Keys (README "Site config reference"), read from the same YAML document as :mod:`gpuhub.core.site`, which
calls :func:`parse` once its own sections are valid and keeps the result as ``Site.queue``:

- ``quota.max_queue_wait_minutes`` (default 120): a queued request waiting longer is ended with a message.
- ``quota.fairshare_half_life_hours`` (default 168): half-life of the usage that fair share counts.
- ``quota.reservation_notice_minutes`` (default 15): servers of others on GPUs a class window needs are
  warned this long before the window opens.
- ``organizations.ORG.share`` (a number > 0): the org's relative share of the GPUs. An org without one
  weighs its ``gpu_limit``; shares are normalised to sum to 1 (all zero: equal shares).
- ``courses.COURSE.reservations``: a list of ``{gpus, model, weekly: "Tue 13:00-15:00"}`` (a string or a list
  of them) or ``{gpus, model, dates: ["2026-12-10 09:00-12:00", ...]}``, wall-clock times in the site
  ``timezone``; ``end`` may be ``24:00``; a window never spans midnight (write two).

Errors name the key path, what was given and what is allowed, like the rest of the site config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from gpuhub.core.siteconfig_reader import SiteConfigError, _nonneg, _positive, _Reader

QUOTA_KEYS = ("max_queue_wait_minutes", "fairshare_half_life_hours", "reservation_notice_minutes")
ORG_KEYS = ("share",)
COURSE_KEYS = ("reservations",)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})"
WEEKLY_RE = re.compile(r"^\s*([A-Za-z]{3})[a-z]*\s+" + _SPAN + r"\s*$")
DATE_RE = re.compile(r"^\s*(\d{4})-(\d{2})-(\d{2})\s+" + _SPAN + r"\s*$")
WEEKLY_FORM = 'a weekday and a span like "Tue 13:00-15:00" (Mon..Sun, 24-hour clock, end after start)'
DATE_FORM = 'a date and a span like "2026-12-10 09:00-12:00" (24-hour clock, end after start)'


@dataclass(frozen=True)
class Reservation:
    """One ``courses.COURSE.reservations[index]`` entry: ``gpus`` devices of ``model`` for the course.

    ``weekly`` holds (weekday 0=Mon, start minute, end minute); ``dates`` holds (date, start minute, end
    minute); minutes count from local midnight in the site zone (end <= 1440)."""

    course: str
    index: int
    org: str
    gpus: int
    model: str
    weekly: tuple[tuple[int, int, int], ...] = ()
    dates: tuple[tuple[date, int, int], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.course}[{self.index}]"


@dataclass(frozen=True)
class QueueSettings:
    max_wait_minutes: float = 120.0
    half_life_hours: float = 168.0
    notice_minutes: float = 15.0
    shares: dict[str, float] = field(default_factory=dict)  # org -> normalised share (sums to 1)
    reservations: tuple[Reservation, ...] = ()

    @property
    def max_wait_seconds(self) -> float:
        return self.max_wait_minutes * 60.0

    @property
    def half_life_seconds(self) -> float:
        return self.half_life_hours * 3600.0


def _span(m: re.Match, first: int, where: str, form: str) -> tuple[int, int]:
    h1, m1, h2, m2 = (int(m.group(first + i)) for i in range(4))
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or m2 > 59 or end > 1440 or end <= start:
        raise SiteConfigError(f"{where}: {m.string!r} is not allowed; allowed: {form}")
    return start, end


def parse_weekly(text: Any, where: str) -> tuple[int, int, int]:
    m = WEEKLY_RE.match(text) if isinstance(text, str) else None
    if not m or m.group(1).lower() not in WEEKDAYS:
        raise SiteConfigError(f"{where}: {text!r} is not allowed; allowed: {WEEKLY_FORM}")
    return (WEEKDAYS.index(m.group(1).lower()), *_span(m, 2, where, WEEKLY_FORM))


def parse_date_window(text: Any, where: str) -> tuple[date, int, int]:
    m = DATE_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise SiteConfigError(f"{where}: {text!r} is not allowed; allowed: {DATE_FORM}")
    try:
        day = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        raise SiteConfigError(f"{where}: {text!r} is not a calendar date; allowed: {DATE_FORM}") from None
    return (day, *_span(m, 4, where, DATE_FORM))


def _reservation(spec: Any, where: str, course: str, index: int, org: Any, site: Any) -> Reservation:
    r = _Reader(spec, where)
    models = site.gpus.models
    model = r.get("model", str, allowed=f"a GPU model declared under gpus.models: {', '.join(models) or '(none)'}")
    if model not in models:
        raise SiteConfigError(
            f"{where}.model: {model!r} is not declared under gpus.models; declared: {', '.join(models) or '(none)'}"
        )
    gpus = r.get("gpus", int, check=_positive, allowed="a whole number of GPUs > 0")
    weekly_raw = r.get("weekly", (str, list), None, allowed=f"{WEEKLY_FORM}, or a list of them")
    dates_raw = r.get("dates", list, None, allowed=f"a list of {DATE_FORM}")
    r.done()
    if (weekly_raw is None) == (dates_raw is None):
        raise SiteConfigError(f"{where}: give exactly one of 'weekly' ({WEEKLY_FORM}) or 'dates' (a list of those)")
    weekly_list = [weekly_raw] if isinstance(weekly_raw, str) else list(weekly_raw or [])
    weekly = tuple(
        parse_weekly(w, f"{where}.weekly" + (f"[{i}]" if isinstance(weekly_raw, list) else ""))
        for i, w in enumerate(weekly_list)
    )
    dates = tuple(parse_date_window(d, f"{where}.dates[{i}]") for i, d in enumerate(dates_raw or []))
    if not weekly and not dates:
        raise SiteConfigError(f"{where}: the list of windows is empty; give at least one or remove the reservation")
    if gpus > org.gpu_limit:
        raise SiteConfigError(
            f"{where}.gpus: {gpus} is more than organizations.{org.key}.gpu_limit ({org.gpu_limit}), which the "
            f"course's servers are charged to; lower the reservation or raise the org's gpu_limit"
        )
    declared = sum(1 for d in site.gpus.devices if d.model == model)
    if site.gpus.inventory == "static" and site.gpus.devices and gpus > declared:
        raise SiteConfigError(
            f"{where}.gpus: {gpus} is more than the {declared} {model} device(s) listed under gpus.devices; "
            "lower the reservation or list the devices"
        )
    return Reservation(course, index, org.key, gpus, model, weekly, dates)


def _shares(orgs: dict, data: dict) -> dict[str, float]:
    weights = {}
    for key, org in orgs.items():
        o = _Reader((data or {}).get(key), f"organizations.{key}")
        raw = o.get("share", float, None, check=_positive, allowed="a number > 0 (a relative weight)")
        weights[key] = raw if raw is not None else float(org.gpu_limit)
    total = sum(weights.values())
    if total <= 0:
        return {k: 1.0 / len(weights) for k in weights} if weights else {}
    return {k: w / total for k, w in weights.items()}


def parse(data: Any, site: Any) -> QueueSettings:
    """The queue settings of the YAML document ``data``; ``site`` is the already validated rest of it."""
    data = data if isinstance(data, dict) else {}
    q = _Reader(data.get("quota"), "quota")
    settings = dict(
        max_wait_minutes=q.get("max_queue_wait_minutes", float, 120.0, check=_positive, allowed="minutes > 0"),
        half_life_hours=q.get("fairshare_half_life_hours", float, 168.0, check=_positive, allowed="hours > 0"),
        notice_minutes=q.get("reservation_notice_minutes", float, 15.0, check=_nonneg, allowed="minutes >= 0"),
    )
    reservations: list[Reservation] = []
    course_data = data.get("courses") or {}
    for key, course in site.courses.items():
        c = _Reader(course_data.get(key), f"courses.{key}")
        specs = c.get("reservations", list, [], allowed="a list of {gpus, model, weekly | dates}")
        for i, spec in enumerate(specs):
            org = site.organizations[course.org]
            reservations.append(_reservation(spec, f"courses.{key}.reservations[{i}]", key, i, org, site))
    return QueueSettings(
        **settings, shares=_shares(site.organizations, data.get("organizations")), reservations=tuple(reservations)
    )
