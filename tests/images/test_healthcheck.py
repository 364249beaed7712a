"""The images' HEALTHCHECK probe (images/base-notebook/gpuhub-healthcheck), run here against a local server.

tests/images/test_terminal.py sees real user containers turn "healthy"; here the cases a live
server does not show: the port and prefix come from $JUPYTERHUB_SERVICE_URL, a wrong answer or no
server is unhealthy, and the probe carries no token (it must not count as user activity).
"""

from __future__ import annotations

import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parents[2] / "images" / "base-notebook" / "gpuhub-healthcheck"


class Jupyter(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802
        Jupyter.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(200 if self.path == "/user/ann/api" else 404)
        self.end_headers()
        try:
            self.wfile.write(b'{"version": "2.21.1"}')
        except ConnectionResetError:
            pass  # the probe reads the status line and hangs up, as it does against the real server

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Jupyter)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Jupyter.seen.clear()
    yield httpd.server_address[1]
    httpd.shutdown()


def probe(url: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "JUPYTERHUB_SERVICE_URL": url}
    return subprocess.run(["bash", str(PROBE)], env=env, capture_output=True, text=True, timeout=20)


def test_healthy_when_the_server_answers_its_prefix(server):
    assert probe(f"http://0.0.0.0:{server}/user/ann/").returncode == 0  # the spawner's wildcard: probed on loopback
    assert probe(f"http://127.0.0.1:{server}/user/ann").returncode == 0  # no trailing slash
    assert Jupyter.seen == [("/user/ann/api", None)] * 2  # no token: no activity recorded


def test_unhealthy_on_a_wrong_answer_or_no_server(server):
    r = probe(f"http://0.0.0.0:{server}/user/bob/")
    assert r.returncode == 1 and "GET /user/bob/api: HTTP/1.0 404" in r.stdout, r
    assert probe("http://127.0.0.1:9/user/ann/").returncode == 1  # nothing listens
