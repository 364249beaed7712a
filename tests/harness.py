"""A real JupyterHub process with gpuhub's config, for integration tests.

``HubProcess`` writes a site config into a temp dir, starts ``jupyterhub -f
jupyterhub_config.py`` as a subprocess on free loopback ports, and offers the REST calls
the tests need (spawn with ``user_options``, wait ready, run code in a kernel through the
proxy). Cleanup removes containers and volumes by the test instance's label/prefix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import requests
import websocket
import yaml

from tests.procs import free_port, stop_group

ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "gpuhub/base-notebook:latest"


def default_site(instance: str, port: int, state: Path) -> dict:
    return {
        "timezone": "Asia/Seoul",
        "hub": {
            "bind_url": f"http://127.0.0.1:{port}",
            "state_dir": str(state),
            "auth": {"type": "shared-password"},
            "admin_users": ["operator"],
            "network": f"{instance}-users",
            "instance": instance,
            "api_port": free_port(),
            "proxy_api_port": free_port(),
            "quota_service_port": free_port(),
            "airlock_service_port": free_port(),  # sites with projects run gpuhub-airlock there
        },
        "gpus": {
            "runtime": "none",
            "inventory": "static",
            "devices": [
                {"uuid": "GPU-sim-h100-0", "model": "H100"},
                {"uuid": "GPU-sim-h100-1", "model": "H100"},
                {"uuid": "GPU-sim-a100-0", "model": "A100"},
                {"uuid": "GPU-sim-a100-1", "model": "A100"},
            ],
            "models": {"H100": {"weight": 1.0}, "A100": {"weight": 0.6}},
            "max_gpus_per_user": 2,
        },
        "images": {"python": {"image": BASE_IMAGE, "display_name": "Python (simulated GPUs)"}},
        "organizations": {
            "gist-ai": {
                "display_name": "GIST AI Lab",
                "members": ["alice", "bob"],
                "gpu_limit": 2,
                "gpu_hours_per_month": 100,
                "max_gpus_per_server": 2,
            },
            "cnuh-radiology": {
                "display_name": "CNUH Radiology",
                "members": ["carol", "bob"],
                "gpu_limit": 1,
                "gpu_hours_per_month": 40,
                "max_gpus_per_server": 1,
            },
        },
        "containers": {"mem_limit": "1G", "cpu_limit": 1.0, "pids_limit": 256},
        "quota": {"enforce_interval_seconds": 2, "reconcile_interval_seconds": 5, "grace_seconds": 2},
    }


class HubProcess:
    """One hub subprocess and its containers."""

    password = "test-password-123"
    config_file = ROOT / "jupyterhub_config.py"  # bench/spawn.py's stock hub runs another

    def __init__(self, tmp: Path, site: dict | None = None, *, instance: str | None = None, db_url: str | None = None):
        self.instance = instance or f"gpuhubtest{uuid.uuid4().hex[:6]}"
        self.tmp = Path(tmp)
        self.port = free_port()
        self.state = self.tmp / "state"
        self.site = site or default_site(self.instance, self.port, self.state)
        self.site["hub"]["instance"] = self.instance
        self.site["hub"]["bind_url"] = f"http://127.0.0.1:{self.port}"
        if db_url:
            self.site["hub"]["db_url"] = db_url
        self.site_path = self.tmp / "site.yaml"
        self.site_path.write_text(yaml.safe_dump(self.site))
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = uuid.uuid4().hex
        self.log_path = self.tmp / "hub.log"
        self.proc: subprocess.Popen | None = None
        self.docker = docker.from_env()

    # -------------------------------------------------------------- process

    def cli_json(self, *argv: str):
        """``gpuhub ARGV --format json`` on this hub's site, as an operator runs it (it must succeed)."""
        out = subprocess.run(
            [sys.executable, "-m", "gpuhub", *argv, "--format", "json"],
            env=self.env(), cwd=self.tmp, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(
            GPUHUB_SITE_CONFIG=str(self.site_path),
            GPUHUB_DEMO_PASSWORD=self.password,
            GPUHUB_ADMIN_TOKEN=self.admin_token,
            PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
        )
        return env

    def start(self, timeout: float = 60) -> HubProcess:
        self.state.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the hub writes to it for its whole life
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyterhub"), "-f", str(self.config_file)],
            cwd=self.tmp,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=1).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"hub did not answer within {timeout} s:\n{self.log_tail()}")

    def kill9(self) -> None:
        """kill -9 the hub and, with it, the proxy it started (its process group)."""
        assert self.proc
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.kill_proxy()

    def stop(self) -> None:
        stop_group(self.proc, 20)

    def kill_proxy(self) -> None:
        """A proxy left by a killed hub (JupyterHub runs it in its own session)."""
        pid_file = self.state / "jupyterhub-proxy.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass

    def cleanup(self) -> None:
        self.stop()
        self.kill_proxy()
        for c in self.containers(all=True):
            c.remove(force=True)
        for v in self.docker.volumes.list(filters={"name": f"{self.instance}-"}):
            try:
                v.remove(force=True)
            except docker.errors.APIError:
                pass
        networks = {f"{self.instance}-users", self.site.get("hub", {}).get("network") or f"{self.instance}-users"}
        for n in self.docker.networks.list(names=sorted(networks)):
            if n.name not in networks:  # Docker's name filter matches substrings
                continue
            try:
                n.remove()
            except docker.errors.APIError:
                pass

    def log_tail(self, n: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no hub log)"

    def log_lines(self, needle: str, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no hub log)"
        return "\n".join([line for line in lines if needle in line][-n:])

    def dump_logs(self) -> str:
        parts = [f"--- hub log ({self.log_path})", self.log_tail(200)]
        for c in self.containers(all=True):
            parts += [f"--- container {c.name} ({c.status})", c.logs(tail=60).decode(errors="replace")]
        return "\n".join(parts)

    # -------------------------------------------------------------- docker view

    def containers(self, all: bool = False, **labels) -> list:
        filters = [f"gpuhub.hub={self.instance}"] + [f"gpuhub.{k}={v}" for k, v in labels.items()]
        out = []
        # The low-level list does not inspect, so a container Docker is auto-removing right now
        # cannot make the listing fail; those that vanish before the inspect are skipped.
        for row in self.docker.api.containers(all=all, filters={"label": filters}):
            try:
                out.append(self.docker.containers.get(row["Id"]))
            except docker.errors.NotFound:
                pass
        return out

    def wait_containers_gone(self, timeout: float = 30, **labels) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.containers(all=True, **labels):
                return
            time.sleep(0.1)
        raise AssertionError(
            f"containers {labels} still there after {timeout} s: "
            f"{[c.name for c in self.containers(all=True, **labels)]}"
        )

    # -------------------------------------------------------------- REST

    def api(self, method: str, path: str, token: str | None = None, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {token or self.admin_token}"
        return requests.request(
            method, f"{self.url}/hub/api{path}", headers=headers, timeout=kw.pop("timeout", 30), **kw
        )

    def ensure_user(self, name: str) -> None:
        r = self.api("GET", f"/users/{name}")
        if r.status_code == 404:
            r = self.api("POST", f"/users/{name}")
            assert r.status_code == 201, r.text

    def spawn(self, user: str, options: dict | None = None, server: str = "") -> requests.Response:
        self.ensure_user(user)
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        return self.api("POST", path, json=options or {}, timeout=120)

    def wait_ready(self, user: str, server: str = "", timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api("GET", f"/users/{user}").json()
            srv = model.get("servers", {}).get(server)
            if srv and srv.get("ready"):
                return srv
            if srv is None and model.get("pending") is None and time.monotonic() > deadline - timeout + 2:
                raise AssertionError(f"{user}'s server vanished while starting: {model}\n{self.log_lines(user)}")
            time.sleep(0.2)
        raise AssertionError(f"{user}'s server not ready in {timeout} s:\n{self.log_tail()}")

    def stop_server(self, user: str, server: str = "", timeout: float = 60) -> None:
        path = f"/users/{user}/servers/{server}" if server else f"/users/{user}/server"
        r = self.api("DELETE", path)
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            srv = self.api("GET", f"/users/{user}").json().get("servers", {}).get(server)
            if not srv:
                return
            time.sleep(0.2)
        raise AssertionError(f"{user}'s server did not stop in {timeout} s")

    def user_token(self, user: str) -> str:
        r = self.api("POST", f"/users/{user}/tokens", json={"note": "test", "expires_in": 3600})
        assert r.status_code in (200, 201), r.text
        return r.json()["token"]

    def run_code(self, user: str, code: str, server: str = "", timeout: float = 30) -> str:
        """Execute ``code`` in a new kernel through the proxy; return what it printed (tracebacks too)."""
        prefix = f"{self.url}/user/{user}/{server + '/' if server else ''}"
        return execute(prefix, self.user_token(user), code, username=user, timeout=timeout)


def execute(
    prefix: str,
    token: str,
    code: str,
    *,
    username: str = "test",
    timeout: float = 30,
    strict: bool = False,
    keep_kernel: bool = False,
    kernel: str = "python3",
) -> str:
    """Run ``code`` in a new ``kernel`` (kernelspec name) of the single-user server at ``prefix`` (its
    base URL, ending in "/") over the kernel websocket; return what it printed.

    ``strict``: a kernel error or no reply within ``timeout`` raises AssertionError (otherwise the
    traceback is part of the output and the output so far is returned). ``keep_kernel``: leave
    the kernel running (by default it is deleted afterwards).
    """
    h = {"Authorization": f"token {token}"}
    r = requests.post(f"{prefix}api/kernels", headers=h, json={"name": kernel}, timeout=30)
    assert r.status_code == 201, (r.status_code, r.text[:500])
    kid = r.json()["id"]
    ws = websocket.create_connection(
        f"{prefix.replace('http', 'ws', 1)}api/kernels/{kid}/channels",
        header=[f"Authorization: token {token}"],
        timeout=timeout,
    )
    try:
        msg_id = uuid.uuid4().hex
        ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "username": username,
                        "session": uuid.uuid4().hex,
                        "msg_type": "execute_request",
                        "version": "5.3",
                        "date": "",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "channel": "shell",
                    "buffers": [],
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                }
            )
        )
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                traceback = "\n".join(msg["content"]["traceback"])
                if strict:
                    raise AssertionError(traceback)
                out.append(traceback)
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
        if strict:
            raise AssertionError(f"no reply from kernel {kid} in {timeout} s")
        return "".join(out)
    finally:
        ws.close()
        if not keep_kernel:
            requests.delete(f"{prefix}api/kernels/{kid}", headers=h, timeout=10)


def login(hub: HubProcess, user: str, password: str | None = None) -> requests.Session:
    """A browser-like session logged in through the hub's login form (shared password)."""
    s = requests.Session()
    r = s.get(f"{hub.url}/hub/login", timeout=10)
    xsrf = s.cookies.get("_xsrf", path="/hub/") or s.cookies.get("_xsrf")
    r = s.post(
        f"{hub.url}/hub/login",
        data={"username": user, "password": password or hub.password, "_xsrf": xsrf},
        timeout=30,
        allow_redirects=True,
    )
    assert r.ok and "/hub/login" not in r.url, (r.status_code, r.url)
    return s
