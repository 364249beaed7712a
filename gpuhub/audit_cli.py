"""`gpuhub audit verify|export`: the project audit log from the command line (quota.audit).

Wired into ``gpuhub.cli`` with ``add_parsers(subparsers)``. Both commands read the hub database of the site
config (``--site`` / ``GPUHUB_SITE_CONFIG``; ``--db-url`` overrides it) and never migrate it: a database
without the audit table is an error that says so. Exit status: 0 ok, 1 the chain is broken (verify), 2 a
usage or database error, printed as ``gpuhub: error: …``.
"""

from __future__ import annotations

import argparse
import functools
import sys
import zoneinfo
from datetime import UTC, date, datetime, timedelta

from gpuhub.core.operator_errors import OperatorError, guarded

DATE_HELP = "YYYY-MM-DD in the site time zone"


class AuditCliError(OperatorError):
    """A mistake on the command line or an unusable database; the message names the fix."""


def _date(flag: str, value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise AuditCliError(f"{flag} {value!r}: not a date; write it as YYYY-MM-DD, e.g. 2026-12-01") from None


def _site_facts(args) -> tuple[str, object]:
    """(database URL, time zone) from --db-url or the site config."""
    from gpuhub.core.site import load_site, site_config_path  # lazy: `gpuhub --help` stays fast

    if args.db_url:
        return args.db_url, _zone(args.timezone) if args.timezone else UTC
    site = load_site(getattr(args, "site", None) or site_config_path())
    return site.hub.database_url, _zone(args.timezone or site.timezone)


def _zone(name: str):
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise AuditCliError(f"--timezone {name!r} is not an IANA time zone; e.g. Asia/Seoul or UTC") from None


def _log(url: str):
    # lazy: SQLAlchemy and the quota package load only when an audit command runs
    from sqlalchemy import inspect
    from sqlalchemy.exc import SQLAlchemyError

    from quota.audit import AuditLog
    from quota.db import make_engine

    engine = make_engine(url)
    shown = engine.url.render_as_string(hide_password=True)
    try:
        present = inspect(engine).has_table("gpuhub_audit_log")
    except SQLAlchemyError as e:
        engine.dispose()
        raise AuditCliError(f"database {shown} is not reachable ({type(e).__name__}); check hub.db_url") from None
    if not present:
        engine.dispose()
        raise AuditCliError(
            f"database {shown} has no audit log (table gpuhub_audit_log); start the hub once "
            "so it migrates the database, or check hub.db_url"
        )
    return AuditLog(engine)


def cmd_verify(args) -> int:
    url, _tz = _site_facts(args)
    log = _log(url)
    anchor = None
    if args.anchor:
        head_id, _, head_hash = args.anchor.partition(":")
        if not head_id.isdigit() or len(head_hash) != 64:
            raise AuditCliError(f"--anchor {args.anchor!r}: write it as ID:HASH, as `gpuhub audit verify` printed it")
        anchor = (int(head_id), head_hash)
    try:
        v = log.verify(anchor)
    finally:
        log.engine.dispose()
    if v.ok:
        head = f"{v.head_id}:{v.head_hash}" if v.head_id else "(empty)"
        print(f"audit log ok: {v.rows} rows, head {head}")
        print("record the head outside the database; `gpuhub audit verify --anchor ID:HASH` checks it later")
        return 0
    print(
        f"gpuhub: audit log BROKEN at row {v.finding.row_id} ({v.finding.kind}): {v.finding.message}", file=sys.stderr
    )
    return 1


def cmd_export(args) -> int:
    from quota.audit import write_csv  # lazy, as in _log

    start_day, end_day = _date("--from", args.start), _date("--to", args.end)
    if end_day < start_day:
        raise AuditCliError(f"--to {args.end} is before --from {args.start}; the range includes both days")
    url, tz = _site_facts(args)
    start = datetime(start_day.year, start_day.month, start_day.day, tzinfo=tz)
    end_next = end_day + timedelta(days=1)
    end = datetime(end_next.year, end_next.month, end_next.day, tzinfo=tz)
    log = _log(url)
    try:
        rows = log.export(args.project, start, end)
        if args.output:
            with open(args.output, "w", newline="", encoding="utf-8") as out:
                n = write_csv(rows, out)
            print(f"{n} rows written to {args.output}", file=sys.stderr)
        else:
            write_csv(rows, sys.stdout)
    finally:
        log.engine.dispose()
    return 0


def _guard(fn):
    """:func:`gpuhub.core.operator_errors.guarded`, and a file that cannot be read or written said as such."""

    @functools.wraps(fn)
    def paths_said(args) -> int:
        try:
            return fn(args)
        except OSError as e:
            raise AuditCliError(f"{e.filename or ''}: {e.strerror}; check the path") from None

    return guarded(paths_said)


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Add `audit verify` and `audit export` to the `gpuhub` command's subparsers."""
    a = subparsers.add_parser("audit", help="the project audit log (tamper-evident)")
    sub = a.add_subparsers(dest="audit_cmd", required=True)

    def common(s):
        s.add_argument("--site", default=argparse.SUPPRESS, help="site config YAML (also accepted before `audit`)")
        s.add_argument("--db-url", help="the hub database URL (default: the site config's hub.db_url)")
        s.add_argument("--timezone", help="IANA zone for dates (default: the site config's timezone)")

    s = sub.add_parser("verify", help="check the hash chain; names the first edited, inserted or deleted row")
    s.add_argument("--anchor", help="ID:HASH printed by an earlier verify; fails if that row is gone or differs")
    common(s)
    s.set_defaults(func=_guard(cmd_verify))

    s = sub.add_parser("export", help="PIPC access-log fields for one project as CSV")
    s.add_argument("--project", required=True)
    s.add_argument("--from", dest="start", required=True, help=f"first day, {DATE_HELP}")
    s.add_argument("--to", dest="end", required=True, help=f"last day (included), {DATE_HELP}")
    s.add_argument("--format", choices=("csv",), default="csv")
    s.add_argument("--output", "-o", help="file to write (default: standard output)")
    common(s)
    s.set_defaults(func=_guard(cmd_export))
    return a
