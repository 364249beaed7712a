"""jupyterhub-idle-culler for CPU-only servers, configured (not rewritten) for gpuhub.

``python -m gpuhub.hub.idle_http --timeout=N --cull-every=M`` runs the ecosystem's culler
(:class:`jupyterhub_idle_culler.IdleCuller`) with one addition through its documented
``cull_arbiter_hook``: GPU servers (``user_options.gpus > 0``) are never its business (they are
gpuhub-idle's, :mod:`gpuhub.hub.idle_service`), and a CPU-only server's limit is its org's or
course's ``idle_http_timeout_minutes`` (``--timeout`` is the smallest of them all). Each cull it
decides is noted in ``<state_dir>/idle-http-culls.json`` so gpuhub-idle can name the ledger's
end_reason ``http-idle``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from jupyterhub_idle_culler import IdleCuller

from gpuhub.hub import runtime
from gpuhub.hub.idle_state import HTTP_CULLS_FILE, read_json, write_json
from gpuhub.hub.quota_service import bind_to_hub
from quota import idle


def holds_gpus(options: dict | None) -> bool:
    """True for a GPU server, and for anything we cannot read as a GPU count (never cull on a guess)."""
    try:
        return int((options or {}).get("gpus") or 0) > 0
    except (TypeError, ValueError):
        return True


def arbiter(*, inactive, inactive_limit, server, **_):
    options = server.get("user_options") or {}
    if inactive is None or holds_gpus(options):
        return False
    site = runtime.site(os.environ["GPUHUB_SITE_CONFIG"])
    user, _, name = server.get("full_name", "/").partition("/")
    org = options.get("org")
    if not org:
        orgs = site.orgs_of(user)
        org = orgs[0] if len(orgs) == 1 else None
    if inactive.total_seconds() < idle.http_timeout_seconds(site, user, org):
        return False
    path = Path(site.hub.state_dir) / HTTP_CULLS_FILE
    now = time.time()
    intents = [i for i in read_json(path, []) if now - float(i.get("at", 0)) < 3600][-500:]
    write_json(path, intents + [{"key": f"{user}/{name}", "user": user, "server": name, "org": org, "at": now}])
    return True


def main(argv=None) -> None:
    ppid = os.getppid()  # first, before any work: the hub that started us (see quota_service.bind_to_hub)
    bind_to_hub(ppid, name="jupyterhub-idle-culler")
    IdleCuller.launch_instance(argv, cull_arbiter_hook=arbiter)


if __name__ == "__main__":
    main()
