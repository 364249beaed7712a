"""Start cost of single-user images: wall time and CPU-seconds from container start to ready.

Runs each image the way gpuhub's spawner does (arbitrary numeric --user, read-only root, tmpfs
/tmp, HOME volume owned by that UID, capabilities dropped, no-new-privileges, the JUPYTERHUB_*
environment of a real spawn) without a hub: a fake hub API on the docker0 gateway answers the
single-user server's start-up version check (``GET $JUPYTERHUB_API_URL``, which blocks the start
and makes the server exit after 5 failed attempts) and its activity posts.

Ready = ``GET http://<container ip>:8888/user/<name>/api`` answers 200 (what the hub waits for).
CPU = the container's cgroup v1 ``cpuacct.usage`` at that moment, and again ``--settle`` seconds
later (work the server does just after it answers).

    .venv/bin/python bench/image_start.py [--runs 5] [--json out.json] [--course-student] IMAGE [IMAGE ...]
    e.g. bench/image_start.py gpuhub/stock-notebook gpuhub/base-notebook

``--course-student``: start each server as a student of a course (the hub's course config on
``JUPYTER_CONFIG_PATH``, as gpuhub.hub.courses writes it), so nbgrader's extensions load; without it
the user is in no course and the images leave nbgrader off.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker

from gpuhub.hub import courses

HUB_VERSION = "6.1.1"
CGROUP_CPUACCT = Path("/sys/fs/cgroup/cpuacct/docker")
BENCH_LABEL = "gpuhub.bench"  # never gpuhub.managed: the quota reconciler owns those


class FakeHubAPI(BaseHTTPRequestHandler):
    """Just enough of /hub/api for a single-user server: the version check at start, activity
    posts, and ``GET /hub/api/user`` so requests carrying a registered token are authorized."""

    requests: list[str] = []
    tokens: dict[str, str] = {}  # API token -> user name

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-JupyterHub-Version", HUB_VERSION)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        FakeHubAPI.requests.append(f"GET {self.path}")
        if self.path.split("?")[0].rstrip("/") == "/hub/api/user":
            auth = self.headers.get("Authorization", "")
            token = auth.split(None, 1)[1] if auth.lower().startswith(("token ", "bearer ")) else ""
            user = FakeHubAPI.tokens.get(token)
            if user is None:
                self.send_response(403)
                self.send_header("X-JupyterHub-Version", HUB_VERSION)
                self.end_headers()
                return
            scopes = [f"access:servers!user={user}", f"access:servers!server={user}/", f"read:users!user={user}"]
            self._reply(
                {"kind": "user", "name": user, "admin": False, "groups": [], "scopes": scopes, "session_id": None}
            )
            return
        self._reply({"version": HUB_VERSION})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        FakeHubAPI.requests.append(f"POST {self.path}")
        self._reply({})

    def log_message(self, *args) -> None:
        pass


def bridge_gateway(client: docker.DockerClient) -> str:
    net = client.networks.get("bridge")
    for cfg in net.attrs["IPAM"]["Config"] or []:
        if cfg.get("Gateway"):
            return cfg["Gateway"]
        if cfg.get("Subnet"):
            return str(next(ipaddress.ip_network(cfg["Subnet"]).hosts()))
    return "172.17.0.1"


def start_fake_hub(ip: str) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer((ip, 0), FakeHubAPI)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://{ip}:{server.server_address[1]}"


def spawn_env(hub_url: str, user: str) -> dict[str, str]:
    """The environment DockerSpawner gives a single-user server (jupyterhub 6.1 Spawner.get_env)."""
    prefix = f"/user/{user}/"
    token = "fake-" + os.urandom(12).hex()
    FakeHubAPI.tokens[token] = user
    scopes = json.dumps([f"access:servers!server={user}/", f"access:servers!user={user}"])
    return {
        "JUPYTERHUB_API_TOKEN": token,
        "JPY_API_TOKEN": token,
        "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}",
        "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED": "0",
        "JUPYTERHUB_HOST": "",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
        "JUPYTERHUB_OAUTH_SCOPES": scopes,
        "JUPYTERHUB_OAUTH_ACCESS_SCOPES": scopes,
        "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES": "[]",
        "JUPYTERHUB_USER": user,
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_API_URL": f"{hub_url}/hub/api",
        "JUPYTERHUB_ACTIVITY_URL": f"{hub_url}/hub/api/users/{user}/activity",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:8888{prefix}",
        "JUPYTERHUB_PUBLIC_URL": "",
        "JUPYTERHUB_PUBLIC_HUB_URL": "",
    }


def cpu_seconds(container_id: str) -> float:
    return int((CGROUP_CPUACCT / container_id / "cpuacct.usage").read_text()) / 1e9


def create_like_spawner(
    client,
    image: str,
    hub_url: str,
    uid: int,
    home: Path,
    *,
    read_only: bool = True,
    user: str | None = None,
    labels: dict | None = None,
    env: dict | None = None,
    volumes: dict | None = None,
    group_add: list[str] | None = None,
):
    """A created (not started) container configured the way gpuhub's spawner runs one (``env``,
    ``volumes``, ``group_add``: what the courses hook adds for a course member)."""
    user = user or f"bench{uid}"
    return client.containers.create(
        image,
        user=f"{uid}:{uid}",
        environment={**spawn_env(hub_url, user), **(env or {})},
        read_only=read_only,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=256m"},
        volumes={str(home): {"bind": "/home/jovyan", "mode": "rw"}, **(volumes or {})},
        group_add=group_add,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=512,
        mem_limit="4g",
        labels={BENCH_LABEL: "1", **(labels or {})},
        detach=True,
    )


def server_url(container) -> str:
    """``http://<ip>:8888/user/<name>/`` of a started container."""
    container.reload()
    env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
    return f"http://{container.attrs['NetworkSettings']['IPAddress']}:8888{env['JUPYTERHUB_SERVICE_PREFIX']}"


def wait_ready(container, timeout: float, t0: float | None = None) -> float:
    """Poll ``<prefix>api`` until it answers 200; returns seconds since t0."""
    t0 = time.monotonic() if t0 is None else t0
    url = server_url(container) + "api"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, OSError):
            pass
        if time.monotonic() - t0 > timeout:
            container.reload()
            logs = container.logs(tail=30).decode(errors="replace")
            raise RuntimeError(f"{container.image.tags} not ready in {timeout} s (status {container.status}):\n{logs}")
        time.sleep(0.02)


def course_student(folder: Path) -> dict:
    """create_like_spawner() arguments of a course student: the course config written into ``folder``."""
    for rel, text in {**courses.member_config_files(), **courses.container_files()}.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {
        "env": {"JUPYTER_CONFIG_PATH": courses.CONFIG_DIR, "GPUHUB_COURSES": "bench101:student"},
        "volumes": {str(folder): {"bind": courses.CONFIG_DIR, "mode": "ro"}},
    }


def one_start(client, image: str, hub_url: str, uid: int, settle: float, timeout: float, **extra) -> dict:
    home = Path(tempfile.mkdtemp(prefix="gpuhub-bench-home-"))
    os.chown(home, uid, uid)
    container = create_like_spawner(client, image, hub_url, uid, home, **extra)
    try:
        t0 = time.monotonic()
        container.start()
        wall = wait_ready(container, timeout, t0)
        cpu_ready = cpu_seconds(container.id)
        time.sleep(settle)
        cpu_settled = cpu_seconds(container.id)
        return {"wall_s": wall, "cpu_ready_s": cpu_ready, "cpu_settled_s": cpu_settled}
    finally:
        container.remove(force=True)
        shutil.rmtree(home, ignore_errors=True)


def summarize(runs: list[dict], key: str) -> dict:
    vals = sorted(r[key] for r in runs)
    return {"p50": statistics.median(vals), "min": vals[0], "max": vals[-1]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="+")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after ready for the second CPU reading")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--uid", type=int, default=23456, help="first UID (each run uses the next one)")
    ap.add_argument("--json", type=Path, help="write the raw runs and summaries here")
    ap.add_argument("--course-student", action="store_true", help="start as a course student (nbgrader on)")
    args = ap.parse_args(argv)
    config = Path(tempfile.mkdtemp(prefix="gpuhub-bench-course-"))
    extra = course_student(config) if args.course_student else {}

    client = docker.from_env()
    server, hub_url = start_fake_hub(bridge_gateway(client))
    results = {}
    uid = args.uid
    try:
        who = "a course student" if args.course_student else "in no course"
        print(f"fake hub API at {hub_url}; {args.runs} runs per image, read-only root, --user <uid>:<uid>, {who}")
        settled = f"CPU+{args.settle}s"
        print(f"{'image':32} {'size':>7} {'wall p50':>9} {'wall max':>9} {'CPU@ready':>10} {settled:>9}")
        for image in args.images:
            size = client.images.get(image).attrs["Size"] / 1e6
            one_start(client, image, hub_url, uid, 0, args.timeout, **extra)  # warm the page cache, not counted
            runs = []
            for _ in range(args.runs):
                uid += 1
                runs.append(one_start(client, image, hub_url, uid, args.settle, args.timeout, **extra))
            s = {k: summarize(runs, k) for k in ("wall_s", "cpu_ready_s", "cpu_settled_s")}
            results[image] = {"size_mb": size, "runs": runs, "summary": s}
            print(
                f"{image:32} {size:6.0f}M {s['wall_s']['p50']:8.2f}s {s['wall_s']['max']:8.2f}s "
                f"{s['cpu_ready_s']['p50']:9.2f}s {s['cpu_settled_s']['p50']:8.2f}s"
            )
    finally:
        server.shutdown()
        shutil.rmtree(config, ignore_errors=True)
    hub_calls = sorted({re.sub(r"/users/[^/]+/", "/users/<name>/", r.split("?")[0]) for r in FakeHubAPI.requests})
    print(f"hub API calls seen: {', '.join(hub_calls)}")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "hub_calls": hub_calls}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
