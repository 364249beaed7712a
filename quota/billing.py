"""Billing statements and daily usage from the ledger (adapter: the arithmetic runs in SQL).

A statement for month P charges every interval for its part inside P exactly:
``gpus x weight x (min(end or now, P.end) - max(start, P.start))`` summed per (org, user, model),
in integer microseconds inside the database, so a million intervals take one indexed scan and
intervals crossing a month boundary are split with no Python work at all.

Daily usage uses cumulative sums instead of a join with the days: each interval is a +rate event
at its (clipped) start and a -rate event at its end; grouping events into 15-minute buckets in SQL
gives F(D) = sum(rate x (D - t)) exactly at every local midnight D, and day d's usage is
F(D[d+1]) - F(D[d]). Local midnights are whole 15-minute steps from the month start in every
modern zone; the bucket size is the gcd anyway, so odd offsets stay exact (just more buckets).
"""

from __future__ import annotations

import csv
import html
import io
import itertools
import json
import math
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.engine import Engine

from gpuhub.core.periods import day_bounds, parse_period, period_bounds, utc, utcnow
from gpuhub.core.site import Site
from quota.sqlexpr import OVERLAP_WHERE, Dialect, timed, window

US_PER_HOUR = 3_600_000_000
BUCKET_US = 900_000_000
CSV_FIELDS = (
    "period",
    "org",
    "user",
    "gpu_model",
    "intervals",
    "gpu_seconds",
    "gpu_hours",
    "weighted_gpu_hours",
    "rate",
    "amount",
    "currency",
)


def _engine(source) -> Engine:
    return getattr(source, "engine", source)


def statement(source, site: Site, period: str, org: str | None = None, now: datetime | None = None) -> list[dict]:
    """Rows per (org, user, GPU model) for ``period`` (YYYY-MM, site time zone); open intervals up to ``now``."""
    engine = _engine(source)
    now = utc(now) if now is not None else utcnow()
    lo, hi = period_bounds(period, site.tz)
    d = Dialect(engine.dialect.name)
    # Grouped by weight too, so each row's duration is computed once (an integer sum per weight);
    # a model's weight only differs between rows if the operator changed it mid-month.
    q = timed(
        f'SELECT org, "user", model, weight, count(*), sum(gpus * {d.clipped_us()}) FROM gpuhub_usage_intervals '
        f'WHERE {OVERLAP_WHERE} AND gpus > 0{" AND org = :org" if org else ""} GROUP BY org, "user", model, weight'
    )
    params = window(lo, hi, now) | ({"org": org} if org else {})
    result = _query(engine, q, params)
    groups: dict[tuple, list] = {}
    for o, user, model, weight, n, gpu_us in result:
        g = groups.setdefault((o or "", user, model or ""), [0, 0, 0.0])
        g[0] += int(n)
        g[1] += int(gpu_us or 0)
        g[2] += float(weight) * int(gpu_us or 0)
    rows = []
    for (o, user, model), (n, gpu_us, w_us) in sorted(groups.items()):
        row = {
            "period": period,
            "org": o,
            "user": user,
            "gpu_model": model,
            "intervals": n,
            "gpu_seconds": gpu_us / 1e6,
            "gpu_hours": gpu_us / US_PER_HOUR,
            "weighted_gpu_hours": w_us / US_PER_HOUR,
        }
        if model in site.rates:
            row |= {
                "rate": site.rates[model],
                "amount": round(row["weighted_gpu_hours"] * site.rates[model], 2),
                "currency": site.currency,
            }
        rows.append(row)
    return rows


def daily(
    source, site: Site, period: str, org: str | None = None, now: datetime | None = None, user: str | None = None
) -> dict[str, list]:
    """Weighted GPU-hours per local day of ``period``, per org: {org: [{date, weighted_gpu_hours}]}; only
    ``user``'s intervals when a user is named (the hub's usage page: a person's own share)."""
    engine = _engine(source)
    now = utc(now) if now is not None else utcnow()
    year, month = parse_period(period)
    days = day_bounds(year, month, site.tz)
    lo, hi = days[0][1], days[-1][2]
    edges = [_us(b[1] - lo) for b in days]
    edges.append(_us(hi - lo))
    bucket = math.gcd(BUCKET_US, *edges)
    d = Dialect(engine.dialect.name)
    start = f"{d.greatest('started_us', ':lo_us')} - :lo_us"
    end = f"{d.least('coalesce(ended_us, :now_us)', ':hi_us')} - :lo_us"
    where = f"{OVERLAP_WHERE} AND gpus > 0 AND org IS NOT NULL" + (" AND org = :org" if org else "")
    where += ' AND "user" = :user' if user else ""
    q = timed(
        f"SELECT org, t / :bucket AS b, sum(r), sum(r * t) FROM ("
        f"SELECT org, gpus * weight AS r, {start} AS t FROM gpuhub_usage_intervals WHERE {where} "
        f"UNION ALL SELECT org, -(gpus * weight) AS r, {end} AS t FROM gpuhub_usage_intervals WHERE {where}"
        f") e GROUP BY org, b"
    )
    params = window(lo, hi, now) | {"bucket": bucket} | ({"org": org} if org else {}) | ({"user": user} if user else {})
    events = _query(engine, q, params)
    per_org: dict[str, list[tuple[int, float, float]]] = {}
    for o, b, r, rt in events:
        per_org.setdefault(o, []).append((int(b), float(r or 0), float(rt or 0)))
    names = [org] if org else sorted(set(site.organizations) | set(per_org))
    out = {}
    for o in names:
        ev = sorted(per_org.get(o, []))
        cum = [_cumulative(ev, edge, bucket) for edge in edges]
        out[o] = [
            {"date": days[i][0].isoformat(), "weighted_gpu_hours": max(0.0, cum[i + 1] - cum[i]) / US_PER_HOUR}
            for i in range(len(days))
        ]
    return out


def _query(engine: Engine, q, params: dict) -> list:
    with engine.connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            # Enough memory to hash-aggregate a million rows; the 4 MB default sorts them on disk (3x slower).
            conn.execute(text("SET LOCAL work_mem = '32MB'"))
        return conn.execute(q, params).all()


def _cumulative(events: list[tuple[int, float, float]], edge_us: int, bucket: int) -> float:
    """F(edge) = sum over events before ``edge`` of rate x (edge - t)."""
    limit = edge_us // bucket
    sr = srt = 0.0
    for b, r, rt in events:
        if b >= limit:
            break
        sr += r
        srt += rt
    return edge_us * sr - srt


def _us(td) -> int:
    return (td.days * 86400 + td.seconds) * 1_000_000 + td.microseconds


# ---------------------------------------------------------------- renderers


def to_json(rows: list[dict]) -> str:
    """The statement as a JSON list of row objects (org, user, gpu_model, gpu_seconds, weighted_gpu_hours, ...)."""
    return json.dumps(rows, indent=2, sort_keys=False) + "\n"


def to_csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) and k != "amount" else v) for k, v in r.items()})
    return buf.getvalue()


def to_html(rows: list[dict], daily_usage: dict, period: str, budgets: dict[str, float] | None = None) -> str:
    """A self-contained page: the statement table and, per org, an inline-SVG chart of weighted GPU-hours per
    day (bars) with the month's running total (line) against the org's monthly budget (dashed line)."""
    e = html.escape
    budgets = budgets or {}
    head = "".join(f"<th>{e(f)}</th>" for f in CSV_FIELDS)
    body = "".join("<tr>" + "".join(f"<td>{e(_cell(r.get(f)))}</td>" for f in CSV_FIELDS) + "</tr>" for r in rows)
    charts = []
    for org, days in daily_usage.items():
        hours = [d["weighted_gpu_hours"] for d in days]
        running = list(itertools.accumulate(hours))
        budget = float(budgets.get(org, 0.0))
        top = max([*running, budget, max(hours, default=0.0)]) or 1.0
        w, h = 14 * len(days), 120

        def y(v: float, h: float = h, top: float = top) -> float:  # this org's chart: bound now
            return h - h * v / top

        bars = "".join(
            f'<rect x="{i * 14}" y="{y(v):.1f}" width="12" height="{h - y(v):.1f}" fill="#4a90d9">'
            f"<title>{e(d['date'])}: {v:.2f} h</title></rect>"
            for i, (d, v) in enumerate(zip(days, hours, strict=True))
        )
        line = " ".join(f"{i * 14 + 6},{y(v):.1f}" for i, v in enumerate(running))
        budget_svg = (
            (
                f'<line x1="0" x2="{w}" y1="{y(budget):.1f}" y2="{y(budget):.1f}" stroke="#c0392b" '
                f'stroke-dasharray="4 3"><title>budget {budget:g} h</title></line>'
            )
            if budget
            else ""
        )
        used = running[-1] if running else 0.0
        pct = f", {100 * used / budget:.0f} % of its {budget:g} h budget" if budget else ""
        charts.append(
            f"<h2>{e(org)}: {used:.2f} weighted GPU-hours this month{e(pct)}</h2>"
            f'<svg width="{w}" height="{h}" role="img" aria-label="daily usage of {e(org)} against its budget">'
            f'{bars}<polyline points="{line}" fill="none" stroke="#2c3e50" stroke-width="2"/>{budget_svg}</svg>'
            "<p>bars: GPU-hours per day; line: running total; dashed: monthly budget</p>"
        )
    return (
        f"<!doctype html><meta charset=utf-8><title>gpuhub statement {e(period)}</title>"
        f"<h1>GPU usage statement {e(period)}</h1><table border=1><tr>{head}</tr>{body}</table>"
        + "".join(charts)
        + "\n"
    )


def _cell(v) -> str:
    if v is None:
        return ""
    return f"{v:.6f}" if isinstance(v, float) else str(v)


def render(store, period: str, org: str | None = None, fmt: str = "json", now: datetime | None = None) -> str:
    """The CLI's entry point: the statement of ``period`` as json, csv or html."""
    rows = statement(store, store.site, period, org=org, now=now)
    if fmt == "csv":
        return to_csv(rows)
    if fmt == "json":
        return to_json(rows)
    if fmt == "html":
        budgets = {k: o.gpu_hours_per_month for k, o in store.site.organizations.items()}
        return to_html(rows, daily(store, store.site, period, org=org, now=now), period, budgets)
    raise ValueError(f"format {fmt!r} is not one of json, csv, html")
