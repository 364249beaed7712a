"""``gpuhub``: the operators' command line.

Every subcommand reads the same site config as the hub (``--site`` or
``GPUHUB_SITE_CONFIG``, default ``examples/site.yaml``) and imports its machinery lazily,
so ``gpuhub --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from gpuhub.core.site import SiteConfigError, load_site, site_config_path


def _site(args):
    return load_site(args.site or site_config_path())


def cmd_check_config(args) -> int:
    site = _site(args)
    print(f"{site.path}: ok — {len(site.organizations)} organizations, {len(site.gpus.devices)} GPUs "
          f"({', '.join(site.gpus.models)}), {len(site.images)} images, runtime {site.gpus.runtime}"
          + (f", {len(site.courses)} courses" if site.courses else ""))
    return 0


def cmd_run(args) -> int:
    site = _site(args)
    os.environ["GPUHUB_SITE_CONFIG"] = str(site.path)
    config = Path(args.config).resolve()  # its prepare() checks the image catalog and Docker
    jupyterhub = shutil.which("jupyterhub", path=str(Path(sys.prefix) / "bin")) or "jupyterhub"
    print(f"gpuhub: serving {site.hub.bind_url} (site config {site.path}); Ctrl-C stops the hub, "
          "user servers keep running", flush=True)
    os.execv(jupyterhub, [jupyterhub, "-f", str(config), *args.jupyterhub_args])
    return 0  # not reached


def cmd_images_build(args) -> int:
    from gpuhub.host.images import BUILD_ORDER, IMAGES, build, docker_has, image_name_of

    root = Path(__file__).resolve().parent.parent
    names = list(args.names)
    if args.catalog:  # the images the site's catalog names
        site = _site(args)
        names += [n for n in (image_name_of(s.image) for s in site.images.values()) if n]
    if args.all:
        names += list(BUILD_ORDER)
    names = [n for n in BUILD_ORDER if n in set(names)] + [n for n in dict.fromkeys(names) if n not in IMAGES]
    if args.missing:
        names = [n for n in names if n not in IMAGES or not docker_has(n)]
        if not names:
            print("gpuhub: images up to date")
            return 0
    from gpuhub.host.images import ImageBuildError

    try:
        build(names, root, no_cache=args.no_cache)
    except ImageBuildError as e:
        print(f"gpuhub: image build failed: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_images_lock(args) -> int:
    from gpuhub.host.images import ImageBuildError, lock

    root = Path(__file__).resolve().parent.parent
    try:
        for name in args.names:
            lock(name, root)
    except ImageBuildError as e:
        print(f"gpuhub: lock failed: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_quota_status(args) -> int:
    from gpuhub.hub.runtime import quota_store

    site = _site(args)
    status = quota_store(site.path).status(datetime.now(timezone.utc))
    if args.format == "json":
        print(json.dumps(status, indent=2, default=str))
        return 0
    from quota.render import status_table

    print(status_table(status))
    return 0


def cmd_billing_statement(args) -> int:
    from quota import billing

    from gpuhub.hub.runtime import quota_store

    site = _site(args)
    store = quota_store(site.path)
    out = billing.render(store, args.period, org=args.org, fmt=args.format, now=datetime.now(timezone.utc))
    if args.output:
        Path(args.output).write_text(out)
    else:
        sys.stdout.write(out)
    return 0


def _course(site, key: str):
    if key not in site.courses:
        raise SiteConfigError(f"courses.{key}: no such course; courses: {', '.join(site.courses) or '(none)'}")
    return site.courses[key]


def _hub_course_groups(site) -> dict[str, set[str]]:
    """{course group: usernames} as the hub has them (IdP-derived members appear at their login);
    empty when the hub database is not there yet."""
    from sqlalchemy import create_engine, text

    from gpuhub.hub.courses import managed_groups

    wanted = managed_groups(site)
    url = site.hub.database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        print("gpuhub: no hub database yet; showing the site config's lists only", file=sys.stderr)
        return {}  # connecting would create an empty file
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(
                "SELECT g.name, u.name FROM groups g JOIN user_group_map m ON m.group_id = g.id "
                "JOIN users u ON u.id = m.user_id"
            )).all()
    except Exception as e:  # no hub database yet (or not reachable): the site lists only
        print(f"gpuhub: hub database not readable ({type(e).__name__}); showing the site config's lists only",
              file=sys.stderr)
        return {}
    finally:
        engine.dispose()
    out: dict[str, set[str]] = {}
    for group, user in rows:
        if group in wanted:
            out.setdefault(group, set()).add(user)
    return out


def cmd_course_list(args) -> int:
    from gpuhub.hub.courses import describe

    site = _site(args)
    rows = [describe(c) for c in site.courses.values()]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no courses in the site config")
        return 0
    print(f"{'course':<16} {'org':<18} {'image':<12} {'instr':>5} {'stud':>5}  idp groups  display name")
    for r in rows:
        groups = ",".join(r["instructors_idp_groups"] + r["students_idp_groups"]) or "-"
        print(f"{r['course']:<16} {r['org']:<18} {r['image']:<12} {len(r['instructors']):>5} {len(r['students']):>5}  "
              f"{groups}  {r['display_name']}")
    return 0


def cmd_course_members(args) -> int:
    from gpuhub.hub.courses import members

    site = _site(args)
    _course(site, args.course)
    rows = members(site, args.course, _hub_course_groups(site))
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['user']:<32} {r['role']:<11} {'site config' if r['source'] == 'site' else 'IdP group (hub)'}")
    return 0


def cmd_course_servers(args) -> int:
    from gpuhub.hub.courses import course_servers, members
    from gpuhub.hub.runtime import quota_store

    site = _site(args)
    _course(site, args.course)
    status = quota_store(site.path).status(datetime.now(timezone.utc))
    report = course_servers(site, args.course, status, members(site, args.course, _hub_course_groups(site)))
    if args.format == "json":
        print(json.dumps(report, indent=2, default=str))
        return 0
    print(f"course {report['course']} (org {report['org']}, {report['period']}): {report['course_gpus_in_use']} GPUs "
          f"in use by the course; org {report['org_gpus_in_use']}/{report['org_gpu_limit']} GPUs, "
          f"{report['org_used_gpu_hours']:.2f}/{report['org_budget_gpu_hours']:.0f} GPU-hours this month")
    if not report["servers"]:
        print("no running servers")
    for s in report["servers"]:
        print(f"{s['server_key']:<40} {s['role']:<10} {s['gpus']} x {s['model'] or '-':<6} "
              f"{s['running_seconds'] / 3600:6.2f} h  {','.join(s['devices']) or '-'}")
    return 0


def cmd_exporter(args) -> int:
    """Hand the rest of the command line to the exporter's own parser (one set of flags and help)."""
    from exporters import server

    argv = (["--site", args.site] if args.site else []) + args.exporter_args
    return server.main_gpu(argv) if args.kind == "gpu" else server.main_usage(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpuhub", description=__doc__.split("\n\n")[0])
    p.add_argument("--site", help="site config YAML (default: $GPUHUB_SITE_CONFIG or examples/site.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("check-config", help="validate the site config and summarise it")
    s.set_defaults(func=cmd_check_config)

    s = sub.add_parser("run", help="serve the hub in the foreground (Ctrl-C stops it; servers keep running)")
    s.add_argument("--config", default="jupyterhub_config.py")
    s.add_argument("jupyterhub_args", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_run)

    img = sub.add_parser("images", help="curated images").add_subparsers(dest="images_cmd", required=True)
    s = img.add_parser("build", help="build images offline (all, or the names given)")
    s.add_argument("names", nargs="*")
    s.add_argument("--missing", action="store_true", help="only those not built yet")
    s.add_argument("--catalog", action="store_true", help="the images the site config's catalog names")
    s.add_argument("--all", action="store_true", help="every curated image (also the bench baseline)")
    s.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    s.set_defaults(func=cmd_images_build)
    s = img.add_parser("lock", help="regenerate images/NAME/requirements.lock (needs PyPI)")
    s.add_argument("names", nargs="+")
    s.set_defaults(func=cmd_images_lock)

    q = sub.add_parser("quota", help="organizations' GPU use").add_subparsers(dest="quota_cmd", required=True)
    s = q.add_parser("status", help="per org: GPUs in use/limit, budget; per device: holder")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=cmd_quota_status)

    b = sub.add_parser("billing", help="billing from the usage ledger").add_subparsers(dest="billing_cmd", required=True)
    s = b.add_parser("statement", help="statement for one month")
    s.add_argument("--period", default=datetime.now().strftime("%Y-%m"), help="YYYY-MM in the site timezone")
    s.add_argument("--org")
    s.add_argument("--format", choices=("json", "csv", "html"), default="json")
    s.add_argument("--output", "-o")
    s.set_defaults(func=cmd_billing_statement)

    co = sub.add_parser("course", help="nbgrader courses").add_subparsers(dest="course_cmd", required=True)
    s = co.add_parser("list", help="courses, their org, image and member counts")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=cmd_course_list)
    s = co.add_parser("members", help="a course's instructors and students (site config + IdP groups)")
    s.add_argument("course")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=cmd_course_members)
    s = co.add_parser("servers", help="a course's members' running servers and GPU use")
    s.add_argument("course")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=cmd_course_servers)

    e = sub.add_parser("exporter", help="Prometheus exporters").add_subparsers(dest="kind", required=True)
    for kind in ("gpu", "usage"):
        s = e.add_parser(kind, help=f"serve the {kind} exporter (`gpuhub exporter {kind} --help` for its flags)",
                         add_help=False)
        s.set_defaults(func=cmd_exporter)  # its flags are parsed by exporters.server (see main)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.func is cmd_exporter:
        args.exporter_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except SiteConfigError as e:
        print(f"gpuhub: site config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
