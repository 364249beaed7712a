"""``gpuhub service project-proxy``: the download filter in front of project servers, run by the hub.

The hub starts this as a managed service (``c.JupyterHub.services``, a command and no URL: nothing routes to it
through the hub). It ties its life to the hub's (the parent-death signal is the entry point's first act, then
one check that the parent still is the hub), writes nginx.conf (:func:`gpuhub.host.project_proxy.render_nginx_conf`)
into the filter's folder (:meth:`ProxyPaths.for_state_dir`: ``/run/gpuhub/project-proxy-HASH`` for a root hub,
else ``STATE_DIR/project-proxy``), runs nginx as its child in the foreground (nginx gets the parent-death signal
too, so a killed service never leaves it holding the port), and turns each line nginx writes to the blocked log
into an audit row (``request.blocked``: project, account = the server's user, source = the client address, target
= the path, detail = rule, size, method, query, status). It exits when nginx exits (the hub's log shows nginx's
own error), and stops nginx when it is stopped. The routes file is the spawner's (it sets a route after the
container is up and removes it at stop); this service only makes sure the file exists.

Lines are read from an offset kept beside the log (``blocked.log.offset``, written after each row), so a restart
neither loses nor repeats a refusal; a log that shrank (rotated by hand) is read from its start.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from gpuhub.core.site import Site
from gpuhub.host.process import set_parent_death_signal
from gpuhub.host.project_proxy import ProxyLimits, ProxyPaths, RoutesFile, limit_bytes, render_nginx_conf
from quota.audit import AuditLog
from quota.projects import AUDIT_REQUEST_BLOCKED

log = logging.getLogger("gpuhub.project-proxy")
NAME = "gpuhub-project-proxy"
HUB_PID_ENV = "GPUHUB_HUB_PID"  # set by the hub for its managed services (gpuhub.hub.hubconfig)
NGINX_ENV = "GPUHUB_NGINX"  # another nginx binary (default: nginx on PATH, else /usr/sbin/nginx)
POLL_SECONDS = 0.25


def nginx_binary() -> str:
    found = os.environ.get(NGINX_ENV) or shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(found).is_file():
        raise SystemExit(
            f"[E {NAME}] nginx not found ({found}): the project download filter needs Debian's nginx with njs; "
            "install it with `apt-get install nginx-light libnginx-mod-http-js` (scripts/setup.sh does)"
        )
    return found


def prepare(site: Site, paths: ProxyPaths) -> None:
    """Write nginx.conf for ``site`` and make sure the routes file and the folders nginx needs exist."""
    for d in (paths.runtime_dir.parent, paths.runtime_dir, paths.temp):
        d.mkdir(parents=True, exist_ok=True)
    for d in (paths.runtime_dir, paths.temp):
        d.chmod(0o755)  # nginx's workers (nobody, when the hub runs as root) read the routes and the socket here
    RoutesFile(paths.routes).ensure()  # kept as it is if there: the hub's running servers keep their routes
    limits = ProxyLimits.for_limits([limit_bytes(p.max_response_mb) for p in site.projects.values()])
    conf = render_nginx_conf(site.hub.project_proxy_port, paths.routes, paths.blocked_log, limits, paths.runtime_dir)
    paths.conf.write_text(conf)
    (paths.runtime_dir / "filter.sock").unlink(missing_ok=True)  # a stale socket would stop nginx binding it


def _nginx_child() -> None:
    os.setpgrp()  # its own group: its workers can be found (and stopped) even after the master is gone
    set_parent_death_signal(signal.SIGTERM)  # we die -> nginx's fast shutdown, workers included


def start_nginx(paths: ProxyPaths, binary: str | None = None) -> subprocess.Popen:
    """nginx in the foreground, as this process's child, in a process group of its own."""
    cmd = [binary or nginx_binary(), "-p", str(paths.runtime_dir), "-c", str(paths.conf), "-e", "stderr"]
    return subprocess.Popen(cmd, preexec_fn=_nginx_child)


def audit_row(line: str) -> dict | None:
    """The :meth:`AuditLog.append` arguments for one blocked-log line (None for a line that is not one)."""
    try:
        e = json.loads(line)
    except ValueError:
        return None
    if not isinstance(e, dict) or not e.get("rule"):
        return None
    forwarded = [a.strip() for a in str(e.get("forwarded_for") or "").split(",") if a.strip()]
    size = str(e.get("size") or "")
    return {
        "project": e.get("project") or None,
        "account": e.get("user") or None,
        # the proxy in front (CHP) appends the address it saw: the last entry is the one a client cannot forge
        "source": forwarded[-1] if forwarded else e.get("remote_addr") or None,
        "target": e.get("path") or None,
        "detail": {
            "rule": e["rule"],
            "size": int(size) if size.isdigit() else (size or None),
            "method": e.get("method"),
            "query": e.get("args") or None,
            "status": int(e["status"]) if str(e.get("status", "")).isdigit() else None,
            "forwarded_for": e.get("forwarded_for") or None,
            "prefix": e.get("prefix"),
            "at": e.get("time"),
        },
    }


class BlockedLogTail:
    """Reads whole new lines of the blocked log from a persisted position (inode and offset, in
    ``blocked.log.offset``); ``commit`` moves it past a line. A log replaced or truncated is read from its start."""

    def __init__(self, path: Path):
        self.path = path
        self.offset_path = path.with_name(path.name + ".offset")
        try:
            ino, offset = self.offset_path.read_text().split()
            self.inode, self.offset = int(ino), int(offset)
        except (FileNotFoundError, ValueError):
            self.inode, self.offset = 0, 0

    def lines(self):
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if st.st_ino != self.inode or st.st_size < self.offset:  # replaced or truncated: start over
            self.inode, self.offset = st.st_ino, 0
        base = self.offset  # fixed here: commit() moves self.offset while the caller iterates
        if st.st_size == base:
            return
        with open(self.path, "rb") as f:
            f.seek(base)
            data = f.read(st.st_size - base)
        pos = 0
        while (end := data.find(b"\n", pos)) >= 0:  # a line nginx is still writing waits for its newline
            yield data[pos:end].decode("utf-8", "replace"), base + end + 1
            pos = end + 1

    def commit(self, offset: int) -> None:
        self.offset = offset
        tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
        tmp.write_text(f"{self.inode} {offset}\n")
        os.replace(tmp, self.offset_path)


def drain(tail: BlockedLogTail, audit: AuditLog) -> int:
    """Append one audit row per new blocked line; returns how many."""
    n = 0
    for line, end in tail.lines():
        row = audit_row(line)
        if row is not None:
            audit.append(AUDIT_REQUEST_BLOCKED, **row)
            n += 1
            log.info("blocked %s %s (%s)", row["account"], row["target"], row["detail"]["rule"])
        tail.commit(end)
    return n


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop nginx (SIGTERM: fast shutdown), then any worker a killed master left behind (its group)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def check_parent(ppid_at_start: int | None) -> None:
    """Exit at once if the hub that started us is already gone (the parent-death signal only covers later)."""
    hub_pid = int(os.environ.get(HUB_PID_ENV) or 0) or ppid_at_start or os.getppid()
    if os.getppid() != hub_pid:
        print(f"[W {NAME}] the hub (pid {hub_pid}) that started this service is gone; exiting", file=sys.stderr)
        os._exit(0)


def main(site: Site, ppid_at_start: int | None = None) -> int:
    """Run the filter until nginx exits or we are stopped; returns the exit status."""
    check_parent(ppid_at_start)
    logging.basicConfig(level=logging.INFO, format=f"[%(levelname).1s %(asctime)s {NAME}] %(message)s")
    paths = ProxyPaths.for_state_dir(site.hub.state_dir)
    prepare(site, paths)
    audit = AuditLog.from_url(site.hub.database_url)
    tail = BlockedLogTail(paths.blocked_log)
    drain(tail, audit)  # what an earlier run left unaudited
    proc = start_nginx(paths)
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    log.info("filtering project servers on 127.0.0.1:%d (nginx pid %d)", site.hub.project_proxy_port, proc.pid)
    try:
        while not stopping and proc.poll() is None:
            try:
                drain(tail, audit)
            except Exception:  # noqa: BLE001 - the database may be restarting; the offset keeps the line
                log.exception("could not audit a blocked request yet; retrying")
                time.sleep(2)
            time.sleep(POLL_SECONDS)
    finally:
        stop(proc)
        drain(tail, audit)
    if not stopping:
        log.error(
            "nginx exited with status %s; stopping (its error is above; 'Address already in use' means another "
            "process holds 127.0.0.1:%d: stop it or set hub.project_proxy_port)",
            proc.returncode,
            site.hub.project_proxy_port,
        )
        return 1
    return 0
