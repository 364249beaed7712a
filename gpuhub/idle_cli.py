"""``gpuhub idle status`` and ``gpuhub idle exempt``: the operators' view of idle culling.

``add_parsers(subparsers)`` adds the ``idle`` command to the gpuhub CLI (handlers read ``args.site``).
Status comes from what gpuhub-idle last wrote (``<state_dir>/idle-status.json``, every check);
exemptions go to ``<state_dir>/idle-exemptions.json``, which gpuhub-idle reads at every check.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from gpuhub.core.operator_errors import OperatorError
from gpuhub.core.operator_errors import guarded as _guarded
from gpuhub.core.site import load_site, site_config_path
from gpuhub.hub.idle_state import EXEMPTIONS_FILE, STATUS_FILE, read_json, write_json
from quota import idle


class UsageError(OperatorError):
    """Printed as ``gpuhub: error: ...`` with exit status 2."""


def _site(args):
    return load_site(getattr(args, "site", None) or site_config_path())


def _fmt_in(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    return "now" if t <= now else idle.describe(t - now)


def status_rows(status: dict, now: float) -> list[dict]:
    rows = []
    for key, s in sorted(status.get("servers", {}).items()):
        state = (
            "exempt"
            if s.get("exempt")
            else "warned"
            if s.get("warned")
            else "no data"
            if s.get("idle_seconds") is None
            else s.get("reason") or "active"
        )
        rows.append(
            {
                "server": key,
                "org": s.get("org") or "",
                "gpus": ",".join(s.get("devices", [])),
                "idle": idle.describe(s.get("idle_seconds")),
                "timeout": idle.describe(s.get("timeout_seconds")),
                "to_warning": "-" if s.get("warned") or s.get("exempt") else _fmt_in(s.get("warn_at"), now),
                "to_cull": "-" if s.get("exempt") else _fmt_in(s.get("cull_at"), now),
                "state": state,
            }
        )
    return rows


def cmd_idle_status(args) -> int:
    site = _site(args)
    status = read_json(Path(site.hub.state_dir) / STATUS_FILE, None)
    now = time.time()
    if status is None:
        raise UsageError(
            f"no idle status in {Path(site.hub.state_dir) / STATUS_FILE}: gpuhub-idle has not run; "
            "start the hub (it starts the service) and try again"
        )
    if args.format == "json":
        print(json.dumps({**status, "rows": status_rows(status, now)}, indent=2, default=str))
        return 0
    age = now - float(status.get("at", 0))
    if age > 3 * float(status.get("interval", 30)):
        print(f"note: the idle status is {idle.describe(age)} old: is the hub (and gpuhub-idle) running?")
    rows = status_rows(status, now)
    cols = ["server", "org", "gpus", "idle", "timeout", "to_warning", "to_cull", "state"]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(r[c].ljust(widths[c]) for c in cols))
    if not rows:
        print("(no running GPU servers)")
    return 0


def exempt(site, target: str | None, org: str | None, hours: float, now: float | None = None) -> str:
    """Write the exemption; returns what was done (one line). Raises UsageError."""
    now = time.time() if now is None else now
    if hours < 0:
        raise UsageError(f"--hours {hours:g}: must be >= 0 (0 removes the exemption)")
    if bool(target) == bool(org):
        raise UsageError("give either USER[/SERVER] or --org ORG (exactly one)")
    if org is not None:
        if org not in site.organizations:
            raise UsageError(
                f"--org {org!r}: not an organization in the site config; "
                f"declared: {', '.join(site.organizations) or '(none)'}"
            )
        section, key, what = "orgs", org, f"organization {org}"
    else:
        user, slash, server = target.partition("/")
        if not user or "/" in server:
            raise UsageError(
                f"{target!r}: expected USER (all their servers), USER/ (the default server) or USER/SERVER"
            )
        key = f"{user}/{server}" if slash else f"{user}/*"
        section = "servers"
        what = f"{user}'s server {server or 'default'}" if slash else f"all of {user}'s servers"
    path = Path(site.hub.state_dir) / EXEMPTIONS_FILE
    data = read_json(path, {})
    data.setdefault("servers", {})
    data.setdefault("orgs", {})
    for sec in ("servers", "orgs"):  # drop expired ones while we are here
        data[sec] = {k: v for k, v in data[sec].items() if float(v) > now}
    if hours == 0:
        data[section].pop(key, None)
        write_json(path, data)
        return f"{what}: exemption removed"
    data[section][key] = now + hours * 3600
    write_json(path, data)
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now + hours * 3600))
    return f"{what}: exempt from idle culling until {until}"


def cmd_idle_exempt(args) -> int:
    print(exempt(_site(args), args.target, args.org, args.hours))
    return 0


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser("idle", help="idle culling: status and exemptions")
    sub = p.add_subparsers(dest="idle_cmd", required=True)
    s = sub.add_parser("status", help="each GPU server's idle time, the time to the warning and to the cull")
    s.add_argument("--format", choices=("table", "json"), default="table")
    s.set_defaults(func=_guarded(cmd_idle_status))
    s = sub.add_parser("exempt", help="keep a server, a user's servers or an org from being culled for N hours")
    s.add_argument("target", nargs="?", help="USER (all their servers), USER/ (default server) or USER/SERVER")
    s.add_argument("--org", help="exempt every server of this organization instead")
    s.add_argument("--hours", type=float, required=True, help="how long (0 removes the exemption)")
    s.set_defaults(func=_guarded(cmd_idle_exempt))
