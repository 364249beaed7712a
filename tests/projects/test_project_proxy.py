"""The download filter (``gpuhub service project-proxy``: real nginx + njs) in front of real upstreams on loopback.

Two upstreams: a tiny HTTP server in this process (it records what reached it, and serves crafted replies: a
binary contents model, oversize and chunked bodies) and a real Jupyter server (``jupyter server`` in the
base-notebook image, ``base_url=/user/u/nb/``, a token) with a dataset in its root. The service runs as it does
under the hub (same command, a site config of its own, SQLite audit log) so each refusal must show up as an audit
row and the chain must verify. nginx's latency for a contents read is measured against the Jupyter server.
"""

from __future__ import annotations

import collections
import http.client
import http.server
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest
import requests
import websocket
import yaml

from gpuhub.host.project_proxy import MIB, ProxyLimits, ProxyPaths, RoutesFile, render_nginx_conf
from gpuhub.hub.project_proxy_service import BlockedLogTail, drain
from quota.audit import AuditLog
from tests.harness import BASE_IMAGE
from tests.procs import free_port
from tests.projects.projectkit import site_data

ROOT = Path(__file__).resolve().parents[2]
TAG = uuid.uuid4().hex[:8]
TOKEN = uuid.uuid4().hex
LIMIT = 64 * 1024  # the tiny upstream's route
NB_LIMIT = 256 * 1024  # the Jupyter server's route
AIRLOCK = "downloads leave a project only through the export airlock"
CLIENT = {"X-Forwarded-For": "198.51.100.7, 10.0.0.9"}  # the last entry is what the proxy in front saw


# ------------------------------------------------------------------------------------------ upstreams


class Upstream(http.server.ThreadingHTTPServer):
    """Answers by path; ``seen`` lists the paths that reached it."""

    daemon_threads = True

    def __init__(self):
        self.seen: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def target(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _send(self, body: bytes, ctype="application/json", headers=()):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", "seen=1; Path=/")
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.seen.append(self.path)
        path = self.path.split("?")[0]
        if path.endswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(3 * LIMIT // 4096):
                self.wfile.write(b"1000\r\n" + b"y" * 4096 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif "/api/contents/" in path:
            binary = path.endswith(".bin")
            n = 2 * LIMIT if "big" in path else 10
            model = {"name": path.rsplit("/", 1)[1], "type": "file", "format": "base64" if binary else "text"}
            self._send(json.dumps({**model, "content": "a" * n}).encode())
        elif path.endswith("/big"):
            self._send(b"x" * (2 * LIMIT), "text/plain")
        elif path.endswith("/gzip"):
            self._send(b"\x1f\x8b\x08 gzip bytes", "text/plain", [("Content-Encoding", "gzip")])
        else:
            self._send(b"hello " + path.encode(), "text/plain", [("X-Upstream", "tiny")])

    def do_HEAD(self):
        self.server.seen.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self):
        self.server.seen.append(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._send(json.dumps({"saved": len(body)}).encode())


@pytest.fixture(scope="module")
def upstream():
    srv = Upstream()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


# ------------------------------------------------------------------------------------------ the service


class Service:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.db_url = f"sqlite:///{tmp / 'hub.sqlite'}"
        state = tmp / "state"
        hub = {"state_dir": str(state), "db_url": self.db_url, "project_proxy_port": self.port, "admin_users": ["root"]}
        self.site = tmp / "site.yaml"
        self.site.write_text(yaml.safe_dump(site_data(hub=hub)))
        self.paths = ProxyPaths.for_state_dir(state)
        self.routes = RoutesFile(self.paths.routes)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "service.log"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gpuhub", "service", "project-proxy", "--site", str(self.site)]

    def start(self) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if k != "GPUHUB_HUB_PID"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, self.proc, self.log)
        return self.proc

    def audit_rows(self, rule: str | None = None, timeout: float = 10.0, at_least: int = 1, under: str = "/") -> list:
        """The ``request.blocked`` rows (of ``rule``, for paths under ``under``), once there are ``at_least``."""
        log = AuditLog.from_url(self.db_url)
        give_up = time.monotonic() + timeout
        while True:
            rows = [
                r for r in log.rows()
                if r.action == "request.blocked" and (not rule or r.detail["rule"] == rule)
                and (r.target or "").startswith(under)
            ]  # fmt: skip
            if len(rows) >= at_least or time.monotonic() > give_up:
                return rows
            time.sleep(0.2)


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        assert proc.poll() is None, f"the service exited with {proc.returncode}:\n{log.read_text()}"
        try:
            requests.get(f"http://127.0.0.1:{port}/", timeout=1)
            return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError(f"the filter never listened on {port}:\n{log.read_text()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def service(tmp_path_factory, upstream):
    svc = Service(tmp_path_factory.mktemp("proxy"))
    svc.start()
    svc.routes.set("/user/u/p/", upstream.target, project="cohort", max_response_bytes=LIMIT)
    yield svc
    stop(svc.proc)
    shutil.rmtree(svc.paths.runtime_dir, ignore_errors=True)
    assert svc.proc.returncode == 0, svc.log.read_text()


def get(service, path, **kw):
    return requests.get(service.url + path, headers=CLIENT, timeout=10, **kw)


# ------------------------------------------------------------------------------------------ the tiny upstream


F = "/user/u/p/files/data.csv"  # what each of the spellings below is, once nginx has decoded and normalised it


@pytest.mark.parametrize(
    "path, rule, target",
    [
        (F, "files-download", F),
        ("/user/u/p/%66iles/data.csv", "files-download", F),  # percent-encoded
        ("/user/u/p/api/../files/data.csv", "files-download", F),  # dot segments
        ("/user/u/p//Files/data.csv", "files-download", "/user/u/p/Files/data.csv"),  # case, double slash
        ("/user/u/p/nbconvert/html/a.ipynb?download=true", "nbconvert-download", "/user/u/p/nbconvert/html/a.ipynb"),
        ("/user/u/p/view/data.csv", "view-download", "/user/u/p/view/data.csv"),
        ("/user/u/p/api/contents/data.csv?format=base64", "contents-base64", "/user/u/p/api/contents/data.csv"),
        (
            "/user/u/p/api/contents/d.csv?type=file&format=base64&content=1",
            "contents-base64",
            "/user/u/p/api/contents/d.csv",
        ),
        ("/user/u/p/api/contents/e.csv?format=%62ase64", "contents-base64", "/user/u/p/api/contents/e.csv"),
    ],
)
def test_download_paths_are_refused_before_the_server(service, upstream, path, rule, target):
    seen, audited = len(upstream.seen), len(service.audit_rows(rule, timeout=0))
    r = requests.get(service.url + path, headers=CLIENT, timeout=10)
    assert r.status_code == 403, r.text
    assert f"rule {rule}" in r.text and AIRLOCK in r.text
    assert len(upstream.seen) == seen, "a refused request reached the server"
    rows = service.audit_rows(rule, at_least=audited + 1)
    assert len(rows) == audited + 1, f"no audit row for {path}"
    row = rows[-1]
    assert (row.project, row.account, row.source, row.target) == ("cohort", "u", "10.0.0.9", target)
    assert row.detail["rule"] == rule and row.detail["method"] == "GET" and row.detail["status"] == 403


@pytest.mark.parametrize("raw", ["/user/u/p/files/a/../../api/contents/x.csv", "/user/u/p/files/a/%2e%2e/%2E%2E/lab"])
def test_dot_segments_are_refused(service, upstream, raw):
    """nginx would check the normalised path (contents, lab) while the server routes the raw one (files)."""
    seen = len(upstream.seen)
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    conn.request("GET", raw)  # sent as written (no client-side normalisation)
    r = conn.getresponse()
    assert r.status == 403 and "rule dot-segments" in r.read().decode()
    assert len(upstream.seen) == seen
    conn.close()


def test_binary_and_oversize_contents_reads_are_403_and_audited(service):
    r = get(service, "/user/u/p/api/contents/scan.bin")  # no format asked: the server answers base64
    assert r.status_code == 403 and "rule contents-base64" in r.text
    r = get(service, "/user/u/p/api/contents/big.csv?format=text")
    assert r.status_code == 403 and "rule response-too-large" in r.text and str(LIMIT) in r.text
    [row] = [x for x in service.audit_rows("response-too-large") if x.target.endswith("/big.csv")]
    assert row.detail["size"] > LIMIT and row.detail["status"] == 403 and row.detail["query"] == "format=text"
    assert AuditLog.from_url(service.db_url).verify().ok


def test_a_small_text_read_and_a_save_pass_unchanged(service):
    r = get(service, "/user/u/p/api/contents/data.csv?format=text&type=file")
    assert r.status_code == 200
    assert r.json() == {"name": "data.csv", "type": "file", "format": "text", "content": "a" * 10}
    assert r.headers["Content-Type"] == "application/json" and r.cookies.get("seen") == "1"
    r = requests.head(service.url + "/user/u/p/api/contents/data.csv?format=text", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    r = requests.put(service.url + "/user/u/p/api/contents/a.ipynb", data=b"n" * (2 * LIMIT), timeout=10)
    assert r.status_code == 200 and r.json() == {"saved": 2 * LIMIT}  # request bodies are not limited
    r = get(service, "/user/u/p/lab")
    assert r.status_code == 200 and r.text == "hello /user/u/p/lab" and r.headers["X-Upstream"] == "tiny"


def test_other_oversize_responses_lose_their_body(service):
    r = get(service, "/user/u/p/big")
    # njs 0.7.9 cannot change a proxied status line: the body is replaced and the rule is in a header
    assert r.headers["X-Gpuhub-Blocked"] == "response-too-large"
    assert len(r.content) < 1000 and "rule response-too-large" in r.text and "x" * 100 not in r.text
    r = get(service, "/user/u/p/chunked")  # no Content-Length: counted and cut at the limit
    sent, _, note = r.text.partition("\n")
    assert set(sent) == {"y"} and LIMIT - 4096 <= len(sent) <= LIMIT, len(sent)
    assert "rule response-too-large" in note and note.rstrip().endswith(f"{AIRLOCK}.")
    r = get(service, "/user/u/p/gzip")
    assert r.headers["X-Gpuhub-Blocked"] == "encoded-response" and b"\x1f\x8b" not in r.content
    [big] = service.audit_rows(under="/user/u/p/big")
    assert big.detail["rule"] == "response-too-large" and big.detail["size"] == 2 * LIMIT
    [chunked] = service.audit_rows(under="/user/u/p/chunked")
    assert chunked.detail["rule"] == "response-too-large" and chunked.detail["size"] > LIMIT
    [gz] = service.audit_rows(under="/user/u/p/gzip")
    assert gz.detail["rule"] == "encoded-response"


def test_unknown_prefix_404s_and_a_removed_route_stops_at_once(service, upstream):
    r = get(service, "/user/nobody/x/api/contents")
    assert r.status_code == 404 and "no project server is routed at /user/nobody/x/" in r.text
    service.routes.set("/user/v/q/", upstream.target, project="cohort", max_response_bytes=LIMIT)
    assert get(service, "/user/v/q/lab").text == "hello /user/v/q/lab"
    assert service.routes.remove("/user/v/q/")
    r = get(service, "/user/v/q/lab")
    assert r.status_code == 404
    assert set(service.routes.all()) == {"/user/u/p/"}


def test_routes_file_is_rewritten_whole(tmp_path):
    routes = RoutesFile(tmp_path / "routes.json")
    routes.set("/user/a%40b/k/", "http://10.1.2.3:8888", project="k", max_response_bytes=5 * MIB)
    assert routes.all()["/user/a%40b/k/"] == {
        "target": "http://10.1.2.3:8888", "project": "k", "user": "a@b", "max_response_bytes": 5 * MIB,
    }  # fmt: skip
    assert oct((tmp_path / "routes.json").stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(ValueError, match="http://IP:PORT"):
        routes.set("/user/a/k/", "http://10.1.2.3:8888/x", project="k", max_response_bytes=1)
    with pytest.raises(ValueError, match="starts and ends with '/'"):
        routes.set("/user/a/k", "http://10.1.2.3:8888", project="k", max_response_bytes=1)
    with pytest.raises(ValueError, match="plain path"):
        render_nginx_conf(1, '/tmp/a"b', "/tmp/log", ProxyLimits(), "/tmp/run")


# ------------------------------------------------------------------------------------------ a real Jupyter server


@pytest.fixture(scope="module")
def notebook(service, tmp_path_factory):
    """``jupyter server`` from the base-notebook image, routed as /user/u/nb/; a dataset CSV in its root."""
    work = tmp_path_factory.mktemp("work")
    (work / "cohort.csv").write_text("pid,age\n" + "".join(f"{i},{40 + i % 30}\n" for i in range(100)))
    (work / "big.csv").write_text("pid,age\n" + "1234567,42\n" * (NB_LIMIT // 10))
    (work / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    work.chmod(0o777)
    client = docker.from_env()
    container = client.containers.run(
        BASE_IMAGE,
        ["jupyter", "server", "--ip=0.0.0.0", "--port=8888", "--ServerApp.base_url=/user/u/nb/",
         f"--IdentityProvider.token={TOKEN}", "--ServerApp.root_dir=/home/jovyan/work"],
        name=f"gpuhub-test-proxy-{TAG}", labels={"gpuhub.test-run": TAG}, detach=True,
        volumes={str(work): {"bind": "/home/jovyan/work", "mode": "rw"}},
    )  # fmt: skip
    try:
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        direct = f"http://{ip}:8888"
        give_up = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{direct}/user/u/nb/api/status?token={TOKEN}", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < give_up, container.logs().decode()[-3000:]
            time.sleep(0.5)
        service.routes.set("/user/u/nb/", direct, project="cohort", max_response_bytes=NB_LIMIT)
        yield direct
    finally:
        container.remove(force=True)


def nb(service, method, path, **kw):
    headers = {"Authorization": f"token {TOKEN}", **CLIENT}
    return requests.request(method, f"{service.url}/user/u/nb/{path}", headers=headers, timeout=30, **kw)


def test_jupyter_downloads_are_403_and_audited(service, notebook):
    audited = collections.Counter(r.detail["rule"] for r in service.audit_rows(timeout=0, under="/user/u/nb/"))
    for path, rule in (
        ("files/cohort.csv", "files-download"),
        ("files/cohort.csv?download=1", "files-download"),
        ("view/cohort.csv", "view-download"),
        ("nbconvert/script/cohort.csv", "nbconvert-download"),
        ("api/contents/cohort.csv?type=file&format=base64", "contents-base64"),
        ("api/contents/scan.png", "contents-base64"),  # a binary file: the server picks base64 itself
        ("api/contents/big.csv?type=file&format=text", "response-too-large"),
    ):
        r = nb(service, "GET", path)
        assert r.status_code == 403, (path, r.status_code, r.text[:200])
        assert f"rule {rule}" in r.text, (path, r.text)
        assert "pid,age" not in r.text and "1234567" not in r.text
        rows = service.audit_rows(rule, at_least=audited[rule] + 1, under="/user/u/nb/")
        assert len(rows) == audited[rule] + 1, f"no audit row for {path}"
        audited[rule] += 1
        row = rows[-1]
        assert (row.project, row.account, row.source) == ("cohort", "u", "10.0.0.9")
        assert row.target == "/user/u/nb/" + path.split("?")[0]
    # the same server answers them when asked directly: the filter, not the server, refused
    assert requests.get(f"{notebook}/user/u/nb/files/cohort.csv?token={TOKEN}", timeout=10).text.startswith("pid,age")
    verdict = AuditLog.from_url(service.db_url).verify()
    assert verdict.ok, verdict


def test_jupyter_text_read_save_and_kernel_websocket_pass(service, notebook):
    r = nb(service, "GET", "api/contents/cohort.csv?type=file&format=text&content=1")
    assert r.status_code == 200 and r.json()["content"].startswith("pid,age\n0,40\n")
    model = {"type": "notebook", "format": "json", "content": {
        "cells": [{"cell_type": "code", "source": "print(6 * 7)", "metadata": {}, "outputs": [],
                   "execution_count": None}],
        "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}  # fmt: skip
    r = nb(service, "PUT", "api/contents/analysis.ipynb", json=model)
    assert r.status_code in (200, 201), r.text
    r = nb(service, "GET", "api/contents/analysis.ipynb")
    assert r.status_code == 200 and r.json()["content"]["cells"][0]["source"] == "print(6 * 7)"
    kernel = nb(service, "POST", "api/kernels", json={"name": "python3"}).json()["id"]
    try:
        ws = websocket.create_connection(
            f"ws://127.0.0.1:{service.port}/user/u/nb/api/kernels/{kernel}/channels?token={TOKEN}", timeout=60
        )
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "u", "session": uuid.uuid4().hex, "msg_type": "execute_request",
                       "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": "print(6 * 7)", "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True},
        }))  # fmt: skip
        out = ""
        give_up = time.monotonic() + 60
        while "42" not in out and time.monotonic() < give_up:
            m = json.loads(ws.recv())
            if m.get("parent_header", {}).get("msg_id") == msg_id and m["msg_type"] == "stream":
                out += m["content"]["text"]
        ws.close()
        assert out.strip() == "42"
    finally:
        nb(service, "DELETE", f"api/kernels/{kernel}")


def test_jupyterlab_page_and_every_static_asset_pass_at_the_default_limit(service, notebook):
    """The UI survives the filter: /lab and all of JupyterLab's static files, byte for byte, under 5 MiB."""
    container = docker.from_env().containers.get(f"gpuhub-test-proxy-{TAG}")
    static = "/opt/gpuhub/venv/share/jupyter/lab/static"
    listing = container.exec_run(["find", static, "-type", "f", "-printf", "%P %s\n"]).output.decode().split()
    files = dict(zip(listing[::2], map(int, listing[1::2]), strict=True))
    assert len(files) > 50 and max(files.values()) < 5 * MIB, "a JupyterLab asset over the default limit"
    service.routes.set("/user/u/nb/", notebook, project="cohort", max_response_bytes=5 * MIB)
    try:
        session = requests.Session()
        r = session.get(f"{service.url}/user/u/nb/lab?token={TOKEN}", timeout=30)
        assert r.status_code == 200 and "jupyter-config-data" in r.text
        for name, size in files.items():
            r = session.get(f"{service.url}/user/u/nb/static/lab/{name}", timeout=30)
            assert r.status_code == 200 and "X-Gpuhub-Blocked" not in r.headers, (name, r.status_code)
            assert len(r.content) == size, name
    finally:
        service.routes.set("/user/u/nb/", notebook, project="cohort", max_response_bytes=NB_LIMIT)


def test_nginx_latency_for_a_contents_read(service, notebook, capsys):
    """p50 over 200 contents reads, direct vs through the filter (a subrequest and a second hop), interleaved so
    both see the same machine load; and a plain pass-through request for comparison."""
    session = requests.Session()
    contents = "/user/u/nb/api/contents/cohort.csv?type=file&format=text&content=1"

    def p50s(path, n=200):
        times: dict[str, list[float]] = {notebook: [], service.url: []}
        for _ in range(n):
            for base, seen in times.items():
                t = time.perf_counter()
                r = session.get(base + path, headers={"Authorization": f"token {TOKEN}"}, timeout=10)
                seen.append(time.perf_counter() - t)
                assert r.status_code == 200
        return [statistics.median(v) * 1000 for v in times.values()]

    p50s(contents, 20)  # warm up both
    direct, through = p50s(contents)
    plain = p50s("/user/u/nb/api/status")
    with capsys.disabled():
        print(f"\ncontents GET p50 over 200: direct {direct:.2f} ms, through nginx {through:.2f} ms, "
              f"added {through - direct:.2f} ms; /api/status (plain pass-through): direct {plain[0]:.2f} ms, "
              f"through nginx {plain[1]:.2f} ms, added {plain[1] - plain[0]:.2f} ms")  # fmt: skip
    assert through - direct < 20, (direct, through)


# ------------------------------------------------------------------------------------------ process lifetime


def test_service_dies_with_its_parent(tmp_path):
    """A hub killed with SIGKILL takes the service and its nginx along (parent-death signal), freeing the port."""
    svc = Service(tmp_path)
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import subprocess, sys, time\n"
            f"p = subprocess.Popen({svc.command()!r}, stdout=open({str(svc.log)!r}, 'ab'), stderr=subprocess.STDOUT)\n"
            "print(p.pid, flush=True)\ntime.sleep(600)\n")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        child = int(parent.stdout.readline())
        wait_for_port(svc.port, parent, svc.log)
        nginx = int(svc.paths.pid.read_text())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(5)
        give_up = time.monotonic() + 15
        while (alive(child) or alive(nginx)) and time.monotonic() < give_up:
            time.sleep(0.1)
        assert not alive(child), "the service outlived its parent"
        assert not alive(nginx), "nginx outlived the service"
        with pytest.raises(requests.ConnectionError):
            requests.get(svc.url + "/", timeout=2)
    finally:
        if parent.poll() is None:
            parent.kill()
        shutil.rmtree(svc.paths.runtime_dir, ignore_errors=True)


def test_service_exits_when_nginx_dies(tmp_path):
    svc = Service(tmp_path)
    proc = svc.start()
    try:
        os.kill(int(svc.paths.pid.read_text()), signal.SIGKILL)
        assert proc.wait(15) == 1
        assert "nginx exited" in svc.log.read_text()
    finally:
        stop(proc)
        shutil.rmtree(svc.paths.runtime_dir, ignore_errors=True)


def test_blocked_log_lines_are_audited_once_across_restarts(tmp_path):
    class Rows(list):
        def append(self, action, **row):
            super().append((action, row["target"], row["detail"]["rule"]))

    def line(n):
        return json.dumps({"rule": "files-download", "path": f"/user/u/p/files/{n}", "user": "u"}) + "\n"

    log, audit = tmp_path / "blocked.log", Rows()
    log.write_text(line(1) + line(2) + line(3))
    assert drain(BlockedLogTail(log), audit) == 3
    tail = BlockedLogTail(log)  # a restarted service: starts at the saved offset
    assert drain(tail, audit) == 0
    with open(log, "a") as f:
        f.write(line(4)[:20])  # nginx still writing this line
    assert drain(tail, audit) == 0
    with open(log, "a") as f:
        f.write(line(4)[20:] + "not json\n")
    assert drain(tail, audit) == 1
    log.write_text(line(5))  # truncated: read from the start
    assert drain(BlockedLogTail(log), audit) == 1
    log.rename(tmp_path / "blocked.log.1")  # rotated: a new file, longer than the old offset
    log.write_text(line(6) + line(7) + line(8))
    assert drain(BlockedLogTail(log), audit) == 3
    assert [t for _, t, _ in audit] == [f"/user/u/p/files/{n}" for n in range(1, 9)]
    assert {a for a, _, _ in audit} == {"request.blocked"}


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
