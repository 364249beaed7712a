"""``gpuhub``: the operators' command line.

Every operator command is a subcommand of this one argparse parser; ``python -m gpuhub``,
``python -m gpuhub.cli``, ``python -m gpuhub.host.images`` (= ``gpuhub images``) and
``python -m exporters`` (= ``gpuhub exporter``) are the same parser. Every subcommand reads the
same site config as the hub (``--site`` or ``GPUHUB_SITE_CONFIG``, default ``examples/site.yaml``).

A mistake the operator can fix (a bad ``--period``, a missing file, an unreachable database, an
unknown org, course or image) prints one line ``gpuhub: error: <what is wrong>; <how to fix it>``
and exits 2, as argparse's own usage errors do; a failed image build or lock exits 1 with its log.
Months (``--period``) are calendar months in the site's ``timezone``; the clock is
:func:`main`'s ``clock`` argument, so tests can pin "now".

``gpuhub --help`` imports no JupyterHub, Docker, SQLAlchemy or Prometheus code: the commands that
need them import them where they run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from gpuhub import audit_cli, idle_cli, node_cli, project_cli, queue_cli
from gpuhub.core.periods import parse_period, period_of, utcnow
from gpuhub.core.site import Site, SiteConfigError, load_site, site_config_path
from gpuhub.host import images
from gpuhub.host.process import set_parent_death_signal
from gpuhub.hub import courses
from quota.render import status_table

SITE_HELP = "site config YAML (default: $GPUHUB_SITE_CONFIG or examples/site.yaml)"


class UsageError(Exception):
    """A mistake the operator can fix; the message says what is wrong and how to fix it."""


def _site(args) -> Site:
    path = Path(args.site or site_config_path())
    if not path.is_file():
        raise UsageError(
            f"site config {path}: no such file; pass --site PATH or set GPUHUB_SITE_CONFIG "
            f"(relative paths start at {Path.cwd()})"
        )
    return load_site(path)


@contextlib.contextmanager
def _database(site: Site):
    """Commands that read the ledger: an unreachable or unusable database is a UsageError naming hub.db_url."""
    from sqlalchemy.engine import make_url  # sqlalchemy: only for the commands that open a database
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    from quota.store import QuotaUnavailable

    try:
        yield
    except QuotaUnavailable as e:
        raise UsageError(str(e)) from None
    except (DBAPIError, PoolTimeout) as e:
        url = make_url(site.hub.database_url).render_as_string(hide_password=True)
        detail = (str(getattr(e, "orig", None) or e).strip().splitlines() or [""])[0][:200]
        check = "its folder exists and is writable" if url.startswith("sqlite") else "the server is running"
        raise UsageError(
            f"cannot use the hub database {url} ({type(e).__name__}: {detail}); check that {check} "
            f"and that hub.db_url in {site.path} points at it"
        ) from None


def _quota_store(site: Site):
    from gpuhub.hub.runtime import quota_store  # sqlalchemy + alembic: only for the commands that read the ledger

    return quota_store(site.path)


# ------------------------------------------------------------------------------------------ hub


def cmd_check_config(args) -> int:
    site = _site(args)
    print(
        f"{site.path}: ok — {len(site.organizations)} organizations, {len(site.gpus.devices)} GPUs "
        f"({', '.join(site.gpus.models)}), {len(site.images)} images, runtime {site.gpus.runtime}"
        + (f", {len(site.courses)} courses" if site.courses else "")
    )
    return 0


def cmd_run(args) -> int:
    site = _site(args)
    config = Path(args.config).resolve()  # its prepare() checks the image catalog and Docker
    if not config.is_file():
        raise UsageError(
            f"--config {args.config}: no such file; run `gpuhub run` in the checkout "
            "or pass --config PATH/jupyterhub_config.py"
        )
    jupyterhub = shutil.which("jupyterhub", path=str(Path(sys.prefix) / "bin")) or shutil.which("jupyterhub")
    if not jupyterhub:
        raise UsageError(
            f"jupyterhub is not installed for {sys.executable}; install gpuhub there "
            "(`make run` does, or `pip install -e .`)"
        )
    os.environ["GPUHUB_SITE_CONFIG"] = str(site.path)
    print(
        f"gpuhub: serving {site.hub.bind_url} (site config {site.path}); Ctrl-C stops the hub, "
        "user servers keep running",
        flush=True,
    )
    extra = args.jupyterhub_args[1:] if args.jupyterhub_args[:1] == ["--"] else args.jupyterhub_args
    os.execv(jupyterhub, [jupyterhub, "-f", str(config), *extra])
    return 0  # not reached


def cmd_service_quota(args) -> int:
    ppid = os.getppid()  # first: the hub that started us, before any work (quota_service.bind_to_hub)
    set_parent_death_signal(signal.SIGTERM)  # a hub that dies while we still import takes us with it
    missing = [k for k in ("JUPYTERHUB_API_URL", "JUPYTERHUB_API_TOKEN") if not os.environ.get(k)]
    if missing:
        raise UsageError(
            f"{' and '.join(missing)} not set: the hub starts this service with its own token "
            "(c.JupyterHub.services); start the hub with `gpuhub run` instead"
        )
    site = _site(args)  # a bad site config is one line in the hub's log, not a traceback
    os.environ["GPUHUB_SITE_CONFIG"] = str(site.path)
    from gpuhub.hub import quota_service  # jupyterhub, tornado and docker: only the running service needs them

    quota_service.main(ppid)
    return 0


def cmd_service_project_proxy(args) -> int:
    ppid = os.getppid()  # first: the hub that started us, before any work (project_proxy_service.check_parent)
    set_parent_death_signal(signal.SIGTERM)  # a hub that dies while we still import takes us with it
    site = _site(args)
    from gpuhub.hub import project_proxy_service  # sqlalchemy: only the running service needs it

    return project_proxy_service.main(site, ppid)


# ------------------------------------------------------------------------------------------ images


def _progress(line: str) -> None:
    print(line, flush=True)  # steps take minutes: show each at once, also when the output goes to a log file


def _image_names(names: list[str]) -> list[str]:
    unknown = [n for n in names if n not in images.IMAGES and n not in images.STANDINS]
    if unknown:
        raise UsageError(
            f"unknown image {unknown[0]!r}; gpuhub's images are {', '.join(images.BUILD_ORDER)} (`gpuhub images list`)"
            f", and the compose stand-ins {', '.join(images.STANDINS)}"
        )
    return names


def _docker_has(name: str) -> bool:
    try:
        return images.docker_has(name)
    except FileNotFoundError:
        raise UsageError("the docker command is not installed; install Docker (`make docker`)") from None


def _image_current(name: str) -> bool:
    _docker_has(name)  # a missing docker command is a UsageError, not a traceback
    return images.is_current(images.repo_root(), name)


def cmd_images_build(args) -> int:
    names = _image_names(list(args.names))
    standins = [n for n in names if n in images.STANDINS and not (args.missing and _docker_has(n))]
    if args.catalog:  # the images the site's catalog names
        names += [n for n in (images.image_name_of(s.image) for s in _site(args).images.values()) if n]
    if args.all or not (args.names or args.catalog):  # no NAME and no --catalog: every image
        names += list(images.BUILD_ORDER)
    names = [n for n in images.BUILD_ORDER if n in set(names)]
    if args.missing:  # not built, or built from other sources than this checkout's
        names = [n for n in names if not _image_current(n)]
    if not names and not standins:
        print(
            "gpuhub: images up to date" if args.missing else "gpuhub: the site's catalog names none of gpuhub's images"
        )
        return 0
    try:
        if standins:
            images.build_standins(standins, images.repo_root(), _progress, no_cache=args.no_cache)
        if names:
            images.build(names, images.repo_root(), _progress, no_cache=args.no_cache)
    except images.ImageBuildError as e:
        print(f"gpuhub: error: image build failed: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_images_list(args) -> int:
    for n in images.BUILD_ORDER:
        state = "built" if _image_current(n) else ("stale" if _docker_has(n) else "missing")
        print(f"{n}\t{images.IMAGES[n].tag}\t{state}")
    return 0


def cmd_images_lock(args) -> int:
    try:
        for name in _image_names(args.names):
            images.lock(name, images.repo_root(), _progress)
    except images.ImageBuildError as e:
        print(f"gpuhub: error: lock failed: {e}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------------------------ quota, billing


def cmd_quota_status(args) -> int:
    site = _site(args)
    from quota import usage_records  # sqlalchemy: the month's refusals and idle spans are rows

    with _database(site):
        store = _quota_store(site)
        status = store.status(args.clock())
        month = usage_records.month_report(store, args.clock())  # the operators' page shows the same
    if args.format == "json":
        print(json.dumps(status | {"this_month": month}, indent=2, default=str))
    else:
        print(status_table(status) + "\n\n" + usage_records.report_table(month))
    return 0


def _period(args, site: Site) -> str:
    if args.period is None:
        return period_of(args.clock(), site.tz)
    try:
        parse_period(args.period)
    except ValueError:
        raise UsageError(
            f"--period {args.period!r}: expected YYYY-MM with a month from 01 to 12, e.g. 2026-11 "
            "(default: this month in the site's timezone)"
        ) from None
    return args.period


def cmd_billing_statement(args) -> int:
    from quota import billing  # sqlalchemy: the statement is computed in SQL

    site = _site(args)
    period, now = _period(args, site), args.clock()
    with _database(site):
        store = _quota_store(site)
        unknown_org = args.org and args.org not in site.organizations
        if unknown_org and not billing.statement(store, site, period, args.org, now):  # not even a past org
            raise UsageError(
                f"--org {args.org!r}: no such organization in {site.path} and no usage by it in "
                f"{period}; organizations: {', '.join(site.organizations) or '(none)'}"
            )
        out = billing.render(store, period, org=args.org, fmt=args.format, now=now)
    if not args.output:
        sys.stdout.write(out)
        return 0
    try:
        Path(args.output).write_text(out)
    except OSError as e:
        raise UsageError(
            f"--output {args.output}: cannot write it ({e.strerror}); name a file in a writable "
            "folder, or leave --output out to print the statement"
        ) from None
    return 0


def _on_hub_database(site: Site, operation, *args, **kw):
    """``operation(hub.db_url, *args, **kw)`` (a quota.backup command); its refusal or a database fault is a
    UsageError naming the fix."""
    from quota import backup  # sqlalchemy + alembic: only for the commands that open a database

    with _database(site):
        try:
            return operation(site.hub.database_url, *args, **kw)
        except backup.BackupError as e:
            raise UsageError(str(e)) from None


def cmd_backup(args) -> int:
    from quota import backup  # sqlalchemy + alembic: only for the commands that open a database

    site = _site(args)
    m = _on_hub_database(site, backup.backup, Path(args.to))
    print(
        f"gpuhub: backed up {len(m['tables'])} tables ({backup.data_rows(m['tables'])} rows, schema revision "
        f"{m['revision']}, {m['backend']}) to {Path(args.to) / m['file']} with {backup.MANIFEST}"
    )
    return 0


def cmd_restore(args) -> int:
    from quota import backup  # sqlalchemy + alembic: only for the commands that open a database

    site = _site(args)
    rows = _on_hub_database(site, backup.restore, Path(getattr(args, "from")), force=args.force)
    print(
        f"gpuhub: restored {len(rows)} tables ({backup.data_rows(rows)} rows) from {getattr(args, 'from')} "
        f"into hub.db_url of {site.path}; start the hub to serve them"
    )
    return 0


# ------------------------------------------------------------------------------------------ courses


def _course(site: Site, key: str):
    if key not in site.courses:
        raise UsageError(
            f"courses.{key}: no such course in {site.path}; courses: {', '.join(site.courses) or '(none)'}"
            " (`gpuhub course list`)"
        )
    return site.courses[key]


def _hub_course_groups(site: Site) -> dict[str, set[str]]:
    """{course group: usernames} as the hub has them (IdP-derived members appear at their login);
    empty when the hub database is not there yet."""
    from sqlalchemy import create_engine, text  # sqlalchemy: only for reading the hub's groups

    wanted = courses.managed_groups(site)
    url = site.hub.database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        print("gpuhub: no hub database yet; showing the site config's lists only", file=sys.stderr)
        return {}  # connecting would create an empty file
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT g.name, u.name FROM groups g JOIN user_group_map m ON m.group_id = g.id "
                    "JOIN users u ON u.id = m.user_id"
                )
            ).all()
    except Exception as e:  # no hub database yet (or not reachable): the site lists only
        print(
            f"gpuhub: hub database not readable ({type(e).__name__}); showing the site config's lists only",
            file=sys.stderr,
        )
        return {}
    finally:
        engine.dispose()
    out: dict[str, set[str]] = {}
    for group, user in rows:
        if group in wanted:
            out.setdefault(group, set()).add(user)
    return out


def cmd_course_list(args) -> int:
    site = _site(args)
    rows = [courses.describe(c) for c in site.courses.values()]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no courses in the site config")
        return 0
    print(f"{'course':<16} {'org':<18} {'image':<12} {'instr':>5} {'stud':>5}  idp groups  display name")
    for r in rows:
        groups = ",".join(r["instructors_idp_groups"] + r["students_idp_groups"]) or "-"
        print(
            f"{r['course']:<16} {r['org']:<18} {r['image']:<12} {len(r['instructors']):>5} {len(r['students']):>5}  "
            f"{groups}  {r['display_name']}"
        )
    return 0


def cmd_course_members(args) -> int:
    site = _site(args)
    _course(site, args.course)
    rows = courses.members(site, args.course, _hub_course_groups(site))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['user']:<32} {r['role']:<11} {'site config' if r['source'] == 'site' else 'IdP group (hub)'}")
    return 0


def cmd_course_servers(args) -> int:
    site = _site(args)
    _course(site, args.course)
    with _database(site):
        status = _quota_store(site).status(args.clock())
    rows = courses.members(site, args.course, _hub_course_groups(site))
    report = courses.course_servers(site, args.course, status, rows)
    if args.format == "json":
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(
        f"course {report['course']} (org {report['org']}, {report['period']}): {report['course_gpus_in_use']} GPUs "
        f"in use by the course; org {report['org_gpus_in_use']}/{report['org_gpu_limit']} GPUs, "
        f"{report['org_used_gpu_hours']:.2f}/{report['org_budget_gpu_hours']:.0f} GPU-hours this month"
    )
    if not report["servers"]:
        print("no running servers")
    for s in report["servers"]:
        print(
            f"{s['server_key']:<40} {s['role']:<10} {s['gpus']} x {s['model'] or '-':<6} "
            f"{s['running_seconds'] / 3600:6.2f} h  {','.join(s['devices']) or '-'}"
        )
    return 0


# ------------------------------------------------------------------------------------------ exporters


def cmd_exporter(args) -> int:
    """Hand the rest of the command line to the exporter's own parser (one set of flags and help)."""
    from exporters import server  # prometheus_client: only the exporters need it

    argv = (["--site", args.site] if args.site else []) + args.exporter_args
    return server.main_gpu(argv) if args.kind == "gpu" else server.main_usage(argv)


# ------------------------------------------------------------------------------------------ the parser


def _group(sub, name: str, summary: str, dest: str):
    return sub.add_parser(name, help=summary, description=summary).add_subparsers(
        dest=dest, required=True, metavar="COMMAND"
    )


def _leaf(sub, name: str, summary: str, func: Callable, formats: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    s = sub.add_parser(name, help=summary, description=summary)
    s.add_argument("--site", default=argparse.SUPPRESS, help=SITE_HELP)  # also after the command
    if formats:
        s.add_argument("--format", choices=formats, default=formats[0], help=f"default {formats[0]}")
    s.set_defaults(func=func)
    return s


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuhub", description="gpuhub: the operators' command line")
    p.add_argument("--site", help=SITE_HELP)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _leaf(sub, "check-config", "validate the site config and summarise it", cmd_check_config)
    s = _leaf(sub, "run", "serve the hub in the foreground (Ctrl-C stops it; servers keep running)", cmd_run)
    s.add_argument("--config", default="jupyterhub_config.py", help="default jupyterhub_config.py")
    s.add_argument("jupyterhub_args", nargs=argparse.REMAINDER, help="jupyterhub's own flags, after --")

    img = _group(sub, "images", "curated images: offline builds and lock files", "images_cmd")
    s = _leaf(img, "build", "build images offline (all of them when no NAME or flag is given)", cmd_images_build)
    s.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help=", ".join(images.BUILD_ORDER) + "; compose stand-ins: " + ", ".join(images.STANDINS),
    )
    s.add_argument(
        "--missing",
        action="store_true",
        help="only those not built yet or built from other sources than this checkout (label gpuhub.source-sha256)",
    )
    s.add_argument("--catalog", action="store_true", help="the images the site config's catalog names")
    s.add_argument("--all", action="store_true", help="every curated image (also the bench baseline)")
    s.add_argument("--no-cache", action="store_true", help="rebuild every layer (e.g. for Debian security updates)")
    _leaf(img, "list", "each image, its tag and whether the local Docker engine has it", cmd_images_list)
    s = _leaf(img, "lock", "regenerate images/NAME/requirements.lock (needs PyPI)", cmd_images_lock)
    s.add_argument("names", nargs="+", metavar="NAME", help=", ".join(images.BUILD_ORDER))
    node_cli.add_push_parser(img, _leaf, _site)  # `gpuhub images push-to-nodes` (issue 19)

    q = _group(sub, "quota", "organizations' GPU use", "quota_cmd")
    _leaf(q, "status", "per org: GPUs, budget, idle GPU-hours, refusals; devices", cmd_quota_status, ("table", "json"))

    b = _group(sub, "billing", "billing from the usage ledger", "billing_cmd")
    s = _leaf(b, "statement", "statement for one month", cmd_billing_statement, ("json", "csv", "html"))
    s.add_argument(
        "--period", metavar="YYYY-MM", help="a calendar month in the site timezone (default: the current month there)"
    )
    s.add_argument("--org", help="one organization (default: all)")
    s.add_argument("--output", "-o", metavar="FILE", help="write the statement here (default: standard output)")

    s = _leaf(sub, "backup", "dump the ledger and every gpuhub_* table, with a manifest", cmd_backup)
    s.add_argument("--to", required=True, metavar="DIR", help="a new or empty folder for the dump and manifest.json")
    s = _leaf(sub, "restore", "load a `gpuhub backup` into the hub database (stop the hub first)", cmd_restore)
    s.add_argument("--from", required=True, metavar="DIR", help="a folder that `gpuhub backup` wrote")
    s.add_argument("--force", action="store_true", help="replace the quota rows the database already holds")

    co = _group(sub, "course", "nbgrader courses", "course_cmd")
    _leaf(co, "list", "courses, their org, image and member counts", cmd_course_list, ("table", "json"))
    for name, what, func in (
        ("members", "a course's instructors and students (site config + IdP groups)", cmd_course_members),
        ("servers", "a course's members' running servers and GPU use", cmd_course_servers),
    ):
        _leaf(co, name, what, func, ("table", "json")).add_argument("course", metavar="COURSE")

    e = _group(sub, "exporter", "Prometheus exporters", "kind")
    for kind in ("gpu", "usage"):
        s = e.add_parser(
            kind, help=f"serve the {kind} exporter (`gpuhub exporter {kind} --help` for its flags)", add_help=False
        )
        s.set_defaults(func=cmd_exporter)  # its flags are parsed by exporters.server (see main)

    audit_cli.add_parsers(sub)  # `gpuhub audit verify|export` (its handlers print their own errors)
    idle_cli.add_parsers(sub)  # `gpuhub idle status|exempt` (likewise)
    queue_cli.add_parsers(sub)  # `gpuhub queue list`, `gpuhub reservations list` (likewise)
    project_cli.add_parsers(sub)  # `gpuhub project list|members|add-member|remove-member|extend` (likewise)
    node_cli.add_parsers(sub)  # `gpuhub node register|list` (likewise)

    sv = _group(sub, "service", "processes the hub starts itself (c.JupyterHub.services)", "service_cmd")
    _leaf(sv, "quota", "the gpuhub-quota service: budget enforcer, reconciler, status API", cmd_service_quota)
    _leaf(sv, "project-proxy", "the download filter (nginx) in front of project servers", cmd_service_project_proxy)
    return p


def main(argv: list[str] | None = None, *, clock: Callable[[], datetime] = utcnow) -> int:
    """Run one command; ``clock`` (an aware UTC "now") decides the default period and "now" of every report."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.func is cmd_exporter:
        args.exporter_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.clock = clock
    try:
        return args.func(args)
    except (UsageError, SiteConfigError) as e:
        print(f"gpuhub: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
