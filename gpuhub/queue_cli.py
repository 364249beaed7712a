"""``gpuhub queue list`` and ``gpuhub reservations list``: the GPU queue and the class windows, for operators.

``add_parsers(subparsers)`` adds both commands to the gpuhub CLI. ``queue list`` reads the queue from the hub
database (quota.queue_store): each waiting request's place in line, its org's fair-share factor, how long it
has waited and the estimated wait; ``reservations list`` prints the class windows of the next ``--days`` days
(site config only, in the site timezone) and which devices each needs.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from gpuhub.core.operator_errors import guarded
from gpuhub.core.site import SiteConfigError, load_site, site_config_path
from quota import reservations as rsv

SITE_HELP = "site config YAML (default: $GPUHUB_SITE_CONFIG or examples/site.yaml)"


def _site(args):
    return load_site(getattr(args, "site", None) or site_config_path())


def _table(rows: list[dict], cols: list[str]) -> None:
    cells = [[("-" if r.get(c) is None else str(r.get(c))) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _minutes(seconds) -> str | None:
    return None if seconds is None else f"{seconds / 60:.0f} min"


def cmd_queue_list(args) -> int:
    from sqlalchemy.exc import DBAPIError  # sqlalchemy + alembic: only for the command that reads the database

    from quota.queue_store import QueueStore  # likewise

    site = _site(args)
    store = QueueStore.from_site(site, migrate=False)  # a listing never changes the schema
    try:
        listing = store.listing()
    except DBAPIError as e:
        url = store.engine.url.render_as_string(hide_password=True)
        detail = (str(e.orig).strip().splitlines() or [""])[0][:200]
        raise SiteConfigError(
            f"cannot read the GPU queue from {url} ({detail}); check hub.db_url in {site.path} and start the hub "
            "once (it creates the queue tables)"
        ) from None
    finally:
        store.engine.dispose()
    if args.format == "json":
        print(json.dumps(listing, indent=2))
        return 0
    rows = [
        {
            **r,
            "model": r["model"] or "any",
            "waited": _minutes(r["waited_seconds"]),
            "estimate": _minutes(r.get("estimated_wait_seconds")),
            "ahead": None if r["position"] is None else f"{r['ahead_same_org']}+{r['ahead_other_orgs']}",
        }
        for r in listing["requests"]
    ]
    if rows:
        _table(rows, ["position", "server", "org", "gpus", "model", "state", "waited", "estimate", "ahead", "factor"])
    else:
        print("no GPU request is waiting")
    print(
        "fair-share factor per org (share): "
        + ", ".join(
            f"{org} {f:.3f} ({listing['shares'].get(org, 0):.2f})" for org, f in sorted(listing["factors"].items())
        )
    )
    return 0


def cmd_reservations_list(args) -> int:
    site = _site(args)
    now = datetime.now(UTC).timestamp()
    res, inv = site.queue.reservations, site.gpus.devices
    out = []
    for a in rsv.assign(res, site.tz, inv, now, now + args.days * 86400.0):
        w = a.window
        out.append(
            {
                "course": w.course,
                "org": w.org,
                "gpus": w.gpus,
                "model": w.model,
                "start": datetime.fromtimestamp(w.start, site.tz).strftime("%a %Y-%m-%d %H:%M"),
                "end": datetime.fromtimestamp(w.end, site.tz).strftime("%H:%M"),
                "devices": ",".join(a.devices) or ("(from the live inventory)" if not inv else ""),
                "state": "open" if w.active(now) else "upcoming",
            }
        )
    if args.format == "json":
        print(json.dumps({"timezone": site.timezone, "windows": out}, indent=2))
    elif out:
        print(f"class windows in the next {args.days} days ({site.timezone}):")
        _table(out, ["course", "org", "gpus", "model", "start", "end", "state", "devices"])
    else:
        print(f"no class window in the next {args.days} days (courses.COURSE.reservations)")
    return 0


def add_parsers(sub) -> None:
    for name, summary, func, extra in (
        ("queue", "GPU requests waiting for devices, in the order they will be served", cmd_queue_list, False),
        ("reservations", "class reservation windows (courses.COURSE.reservations)", cmd_reservations_list, True),
    ):
        g = sub.add_parser(name, help=summary, description=summary).add_subparsers(
            dest=f"{name}_cmd", required=True, metavar="COMMAND"
        )
        s = g.add_parser("list", help=summary, description=summary)
        s.add_argument("--site", default=argparse.SUPPRESS, help=SITE_HELP)  # also after the command
        s.add_argument("--format", choices=("table", "json"), default="table", help="default table")
        if extra:
            s.add_argument("--days", type=int, default=14, help="how far ahead (default 14 days)")
        s.set_defaults(func=guarded(func))
