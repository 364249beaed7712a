"""`gpuhub project list|members|add-member|remove-member|extend|records|expire`: the stewards' governance commands.

Wired into ``gpuhub.cli`` with ``add_parsers(subparsers)``. Projects come from the site config (``--site`` /
``GPUHUB_SITE_CONFIG``); the stewards' changes (added and removed members, extensions) and the DUA acceptances
from the hub database (``--db-url`` overrides the site config's), through :mod:`quota.project_store`. Every change
is recorded in the audit log with who made it (``--by``: a steward of the project or a hub admin user). The
commands never migrate the database: one without the project tables is an error that says so.

``records`` writes a project's processing records (:mod:`quota.project_records`, rendered by
:mod:`quota.records_render`); ``expire`` destroys what is due at the end of projects (:mod:`quota.project_expiry`,
the Docker side in :mod:`gpuhub.host.project_expiry`), as the quota service does every few minutes.

Exit status: 0 ok (also "nothing to do"), 2 a usage or database error, printed as ``gpuhub: error: …``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date, datetime
from pathlib import Path

from gpuhub.core.operator_errors import OperatorError, guarded

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
PROJECT_TABLES = ("gpuhub_project_membership", "gpuhub_project_extension", "gpuhub_project_dua_acceptance")


class ProjectCliError(OperatorError):
    """A mistake on the command line or an unusable database; the message names the fix."""


def _now(args) -> datetime:
    from gpuhub.core.periods import utcnow  # lazy: `gpuhub --help` stays fast

    return (getattr(args, "clock", None) or utcnow)()


def _site(args):
    from gpuhub.core.site import load_site, site_config_path  # lazy, as in _now

    path = Path(getattr(args, "site", None) or site_config_path())
    if not path.is_file():
        raise ProjectCliError(f"site config {path}: no such file; pass --site PATH or set GPUHUB_SITE_CONFIG")
    return load_site(path)


def _project(site, key: str):
    project = site.projects.get(key)
    if project is None:
        known = ", ".join(site.projects) or "(none)"
        raise ProjectCliError(f"project {key!r} is not in the site config (projects.{key}); projects: {known}")
    return project


def _store(site, args):
    # lazy: SQLAlchemy and the quota package load only when a project command runs
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from quota.db import make_engine
    from quota.project_store import ProjectStore

    url = args.db_url or site.hub.database_url
    u = make_url(url)
    shown = u.render_as_string(hide_password=True)
    if u.get_backend_name() == "sqlite" and u.database and not Path(u.database).exists():
        raise ProjectCliError(
            f"database {shown} does not exist; start the hub once so it creates it, or check hub.db_url"
        )
    engine = make_engine(url)
    try:
        present = set(inspect(engine).get_table_names())
    except SQLAlchemyError as e:
        engine.dispose()
        raise ProjectCliError(f"database {shown} is not reachable ({type(e).__name__}); check hub.db_url") from None
    missing = [t for t in PROJECT_TABLES if t not in present]
    if missing:
        engine.dispose()
        raise ProjectCliError(
            f"database {shown} has no project tables ({', '.join(missing)}); start the hub once "
            "so it migrates the database, or check hub.db_url"
        )
    clock = getattr(args, "clock", None)  # gpuhub.cli.main's clock (tests pin "now")
    return ProjectStore(engine, clock) if clock else ProjectStore(engine)


def _hub_groups(url: str, names) -> dict[str, set[str]]:
    """{group: usernames} of JupyterHub's groups named ``names`` (the IdP groups, mirrored at each login)."""
    from sqlalchemy import bindparam, text  # lazy, as in _store

    from quota.db import make_engine

    names = sorted(set(names))
    if not names:
        return {}
    engine = make_engine(url)
    q = text(
        "SELECT g.name, u.name FROM groups g JOIN user_group_map m ON m.group_id = g.id "
        "JOIN users u ON u.id = m.user_id WHERE g.name IN :names"
    ).bindparams(bindparam("names", expanding=True))
    try:
        with engine.connect() as conn:
            rows = conn.execute(q, {"names": names}).all()
    except Exception as e:  # no JupyterHub tables yet: IdP members show up after their first login
        print(f"gpuhub: hub groups not readable ({type(e).__name__}); IdP-group members not shown", file=sys.stderr)
        return {}
    finally:
        engine.dispose()
    out: dict[str, set[str]] = {}
    for group, user in rows:
        out.setdefault(group, set()).add(user)
    return out


def _state(site, project, membership, now: datetime) -> str:
    from quota.projects import effective_closes_at  # lazy, as in _store

    if now < project.opens_at(site.tz):
        return "not started"
    return "open" if now < effective_closes_at(project, membership, site.tz) else "closed"


# ------------------------------------------------------------------ read


def cmd_list(args) -> int:
    from quota.projects import NO_CHANGES, effective_expires, effective_members  # lazy, as in _store

    site = _site(args)
    if not site.projects:
        print("no projects in the site config")
        return 0
    store = _store(site, args)
    try:
        overlay = store.memberships(site.projects)
    finally:
        store.engine.dispose()
    now, rows = _now(args), []
    for key, p in site.projects.items():
        m = overlay.get(key, NO_CHANGES)
        rows.append(
            {
                "project": key,
                "org": p.org,
                "starts": p.starts.isoformat(),
                "expires": effective_expires(p, m).isoformat(),
                "members": len(effective_members(p, m)),
                "members_idp_groups": list(p.members_idp_groups),
                "stewards": list(p.stewards),
                "state": _state(site, p, m, now),
                "display_name": p.display_name,
            }
        )
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'project':<20} {'org':<16} {'window':<23} {'members':>7}  {'state':<11} stewards")
    for r in rows:
        groups = f" +{len(r['members_idp_groups'])} IdP group(s)" if r["members_idp_groups"] else ""
        print(
            f"{r['project']:<20} {r['org']:<16} {r['starts']}..{r['expires']} {r['members']:>7}  "
            f"{r['state']:<11} {', '.join(r['stewards'])}{groups}"
        )
    return 0


def cmd_members(args) -> int:
    from quota.projects import member_rows  # lazy, as in _store

    site = _site(args)
    project = _project(site, args.project)
    store = _store(site, args)
    try:
        membership, acceptances = store.membership(project.key), store.acceptances(project.key)
    finally:
        store.engine.dispose()
    groups = _hub_groups(args.db_url or site.hub.database_url, project.members_idp_groups)
    rows = member_rows(project, membership, acceptances, groups)  # quota.projects: the steward page's too
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"project {project.key} ({project.display_name}); stewards: {', '.join(project.stewards)}")
    if not rows:
        print("no members yet; add one with `gpuhub project add-member KEY USER --by NAME`")
    for r in rows:
        when = f" {r['dua_accepted_at']} from {r['dua_source'] or '-'}" if r["dua_accepted_at"] else ""
        print(f"{r['user']:<32} {r['source']:<8} {r['dua']}{when}")
    return 0


# ------------------------------------------------------------------ change


def _by(site, project, by: str) -> str:
    if by in project.stewards or by in site.hub.admin_users:
        return by
    raise ProjectCliError(
        f"--by {by!r} is not a steward of project {project.key} ({', '.join(project.stewards)}) nor a hub admin "
        f"(hub.admin_users); name the steward who made the decision, or list them in projects.{project.key}.stewards"
    )


def _user(name: str) -> str:
    from gpuhub.core import naming  # lazy, as in _now

    if not naming.is_normalized_username(name):
        raise ProjectCliError(
            f"{name!r} is not a gpuhub username; use the name the hub shows (e.g. {naming.normalize_username(name)!r})"
        )
    return name


def _change(args, what: str) -> int:
    from quota.projects import is_member  # lazy, as in _store

    site = _site(args)
    project = _project(site, args.project)
    by, user = _by(site, project, args.by), _user(args.user)
    store = _store(site, args)
    try:
        m = store.membership(project.key)
        if what == "add":
            if is_member(project, m, user):  # listed by name or added, and not removed since
                print(f"{user} is already a member of project {project.key}; nothing recorded")
                return 0
            row = store.add_member(project.key, user, by)
            print(f"added {user} to project {project.key} (by {by}); audit log row {row.id}")
            print(f"{user} accepts the data use agreement in the spawn form before the first start")
            return 0
        if user in m.removed:
            print(f"{user} is already removed from project {project.key}; nothing recorded")
            return 0
        row = store.remove_member(project.key, user, by)
        print(f"removed {user} from project {project.key} (by {by}); audit log row {row.id}")
        print(f"a running project server of {user} keeps running: stop it from the hub's admin page")
        return 0
    finally:
        store.engine.dispose()


def cmd_add_member(args) -> int:
    return _change(args, "add")


def cmd_remove_member(args) -> int:
    return _change(args, "remove")


def cmd_extend(args) -> int:
    from quota.projects import effective_expires  # lazy, as in _store

    try:
        new = date.fromisoformat(args.expires)
    except ValueError:
        raise ProjectCliError(f"{args.expires!r}: not a date; write the new last day as YYYY-MM-DD") from None
    site = _site(args)
    project = _project(site, args.project)
    by = _by(site, project, args.by)
    store = _store(site, args)
    try:
        current = effective_expires(project, store.membership(project.key))
        if new <= current:
            raise ProjectCliError(
                f"{new} is not after project {project.key}'s last day {current}; extend only moves it later "
                f"(to close a project early, lower projects.{project.key}.expires in the site config)"
            )
        row = store.extend(project.key, new, by)
    finally:
        store.engine.dispose()
    print(
        f"project {project.key} is open through {new} ({site.timezone}), was {current} (by {by}); "
        f"audit log row {row.id}"
    )
    return 0


# ------------------------------------------------------------------ records and destruction


def cmd_records(args) -> int:
    from gpuhub.hub.i18n import LANGUAGES, Messages  # lazy, as in _store
    from quota.project_records import project_records
    from quota.records_render import to_csv, to_html, to_json

    if args.month is not None and not _MONTH.match(args.month):
        raise ProjectCliError(f"--month {args.month!r}: write the month under review as YYYY-MM, e.g. 2026-11")
    if args.lang not in LANGUAGES:
        raise ProjectCliError(f"--lang {args.lang!r}: the records are written in {', '.join(LANGUAGES)}")
    site = _site(args)
    project = _project(site, args.project)
    store = _store(site, args)
    try:
        records = project_records(store.engine, site, project.key, _now(args), args.month)
    finally:
        store.engine.dispose()
    if args.format == "json":
        text = to_json(records)
    elif args.format == "csv":
        text = to_csv(records)
    else:
        m = Messages(args.lang, site.tz)
        text = to_html(records, m.gettext, m.datetime, lang=m.lang)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote the records of project {project.key} ({args.format}) to {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _outcome_line(o, dry_run: bool) -> str:
    p, left = o.plan, o.plan.leftovers
    head = f"project {p.project} (due since {p.destroy_at.isoformat()})"
    later = f"; not yet: {p.defer}; run again with --stop-running to remove them now" if p.defer else ""
    if dry_run or p.defer:
        vols = ", ".join(v["name"] for v in left.volumes) or "none"
        return (
            f"{head}: would destroy volumes {vols}; {len(left.containers)} container(s), "
            f"{len(left.quarantine)} quarantined file(s), network {left.network or 'none'}{later}"
        )
    d = o.destroyed
    done = (
        f"{head}: destroyed {len(d['volumes'])} volume(s), {len(d['containers'])} container(s), "
        f"{len(d['quarantine'])} quarantined file(s); audit log row {o.audit_id}"
    )
    return done if o.complete else f"{done}; NOT complete: {'; '.join(o.errors)} (the next run tries again)"


def cmd_expire(args) -> int:
    from gpuhub.host.dockerenv import DockerUnavailable, docker_client  # lazy, as in _store
    from gpuhub.host.project_expiry import ProjectRoom
    from quota.project_expiry import ProjectExpiry

    site = _site(args)
    store = _store(site, args)
    try:
        try:
            room = ProjectRoom(docker_client(), site.hub.instance)
        except DockerUnavailable as e:
            raise ProjectCliError(str(e)) from None
        clock = getattr(args, "clock", None)
        expiry = ProjectExpiry(site, store.engine, room, *([clock] if clock else []))
        outcomes = expiry.run(dry_run=args.dry_run, stop_running=args.stop_running)
    finally:
        store.engine.dispose()
    if not outcomes:
        print("no project is due for destruction (each is due retention_days_after_expiry days after it closes)")
    for o in outcomes:
        print(_outcome_line(o, args.dry_run))
    return 0 if all(o.complete for o in outcomes) or args.dry_run else 1


def add_parsers(subparsers) -> argparse.ArgumentParser:
    """Add `project list|members|...|records|expire` to the `gpuhub` command's subparsers."""
    pr = subparsers.add_parser("project", help="secure project workspaces: members, DUA acceptances, extensions")
    sub = pr.add_subparsers(dest="project_cmd", required=True, metavar="COMMAND")

    def leaf(name: str, summary: str, func, formats: bool = False):
        s = sub.add_parser(name, help=summary, description=summary)
        s.add_argument("--site", default=argparse.SUPPRESS, help="site config YAML (also accepted before `project`)")
        s.add_argument("--db-url", help="the hub database URL (default: the site config's hub.db_url)")
        if formats:
            s.add_argument("--format", choices=("table", "json"), default="table", help="default table")
        s.set_defaults(func=guarded(func))
        return s

    leaf("list", "projects: org, open window, members, stewards, open or closed", cmd_list, formats=True)
    s = leaf("members", "a project's members (config, IdP group, added) and their DUA acceptance", cmd_members, True)
    s.add_argument("project", metavar="KEY")
    by_help = "the steward (or hub admin) who decided it; recorded in the audit log"
    for name, what, func in (
        ("add-member", "add a member on top of the site config's list", cmd_add_member),
        ("remove-member", "remove a member (also one the site config or an IdP group lists)", cmd_remove_member),
    ):
        s = leaf(name, what, func)
        s.add_argument("project", metavar="KEY")
        s.add_argument("user", metavar="USER")
        s.add_argument("--by", required=True, metavar="NAME", help=by_help)
    s = leaf("extend", "move a project's last day later", cmd_extend)
    s.add_argument("project", metavar="KEY")
    s.add_argument("expires", metavar="YYYY-MM-DD", help="the new last open day, in the site time zone")
    s.add_argument("--by", required=True, metavar="NAME", help=by_help)
    s = leaf(
        "records",
        "a project's processing records (PIPA): purpose, members, accesses, airlock, destruction",
        cmd_records,
    )
    s.add_argument("project", metavar="KEY")
    s.add_argument(
        "--format", choices=("html", "csv", "json"), default="html", help="default html (one standalone page)"
    )
    s.add_argument("--month", metavar="YYYY-MM", help="the month of the access-log review (default: last month)")
    s.add_argument("--lang", default="en", help="the language of the HTML page's headings: en or ko (default en)")
    s.add_argument("--output", "-o", metavar="FILE", help="write to FILE (UTF-8) instead of standard output")
    s = leaf(
        "expire", "destroy project homes, servers and quarantine of projects past their end (recorded)", cmd_expire
    )
    s.add_argument("--dry-run", action="store_true", help="only say what is due and what would be destroyed")
    s.add_argument(
        "--stop-running",
        action="store_true",
        help="also remove servers still running (default: wait for the hub's stop)",
    )
    return pr
