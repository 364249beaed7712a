"""``gpuhub-export`` / ``gpuhub-import`` (images/base-notebook/gpuhub-lab/gpuhub_lab/airlock.py) against a stand-in
for the gpuhub-airlock service on loopback: what the researcher types, what reaches the service, what they read.

The script runs as the image runs it: a separate ``python -S`` process (no site-packages: it must need nothing
but the standard library) with the environment a hub server gives it (``JUPYTERHUB_API_TOKEN``,
``GPUHUB_AIRLOCK_URL``, ``GPUHUB_PROJECT``, ``HOME``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.harness import ROOT

LAB = ROOT / "images" / "base-notebook" / "gpuhub-lab"
PREFIX = "/services/gpuhub-airlock/"
TOKEN = "server-token-0123456789abcdef"
CSV = b"age_band,patients\n40-49,3\n50-59,41\n"


class StandIn:
    """The service's contract, canned, on ``host`` (loopback, or a Docker bridge's gateway for a container): records
    each call; ``answers[(method, path)] = (status, body)``."""

    def __init__(self, host: str = "127.0.0.1"):
        self.calls: list[dict] = []
        self.answers: dict[tuple[str, str], tuple[int, object]] = {}
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                stand_in.calls.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(raw) if raw else None,
                    }
                )
                status, body = stand_in.answers.get((self.command, self.path), (404, "<html>not found</html>"))
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
                if isinstance(body, dict) and "rule" in body:
                    self.send_header("X-Gpuhub-Rule", body["rule"])
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}{PREFIX}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def service():
    s = StandIn()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    (h / "results").mkdir(parents=True)
    (h / "results" / "table.csv").write_bytes(CSV)
    return h


def request_view(**kw) -> dict:
    view = {
        "id": 7,
        "project": "cohort",
        "direction": "export",
        "requester": "alice",
        "state": "in_review",
        "path": "results/table.csv",
        "name": "table.csv",
        "why": "table 2",
        "sha256": hashlib.sha256(CSV).hexdigest(),
        "size": len(CSV),
        "needed": 2,
        "checks": [
            {
                "rule": "cell-count",
                "passed": False,
                "detail": "1 cell below 10",
                "location": "line 2, column 'patients'",
            },
            {"rule": "file-type", "passed": True, "detail": "csv", "location": None},
        ],
        "reviews": [],
        "history": [],
    }
    return {**view, **kw}


def run(
    argv: list[str], home, service: StandIn | None, cwd=None, script: str = "export", **env
) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": str(home), "JUPYTERHUB_API_TOKEN": TOKEN, "GPUHUB_PROJECT": "cohort"}
    if service is not None:
        base["GPUHUB_AIRLOCK_URL"] = service.url
    base.update(env)
    base = {k: v for k, v in base.items() if v is not None}
    code = f"import sys; sys.path.insert(0, {str(LAB)!r}); import gpuhub_lab.airlock as a; sys.exit(a.{script}_main())"
    return subprocess.run(
        [sys.executable, "-S", "-c", code, *argv], env=base, cwd=cwd or home, capture_output=True, text=True, timeout=60
    )


def test_export_sends_the_home_relative_path_the_reason_and_the_real_sha256_with_the_servers_token(home, service):
    service.answers[("POST", PREFIX + "api/exports")] = (201, request_view())
    r = run(["table.csv", "--why", "table 2 of the paper"], home, service, cwd=home / "results")
    assert r.returncode == 0, r.stderr
    (call,) = service.calls
    assert call["method"] == "POST" and call["path"] == PREFIX + "api/exports"
    assert call["auth"] == f"token {TOKEN}"
    assert call["body"] == {
        "project": "cohort",
        "path": "results/table.csv",
        "why": "table 2 of the paper",
        "sha256": hashlib.sha256(CSV).hexdigest(),
    }
    assert "export request 7: in_review" in r.stdout
    assert "needs 2 steward approval(s)" in r.stdout
    assert "cell-count at line 2, column 'patients': 1 cell below 10" in r.stdout


def test_project_flag_overrides_and_json_prints_the_services_answer(home, service):
    service.answers[("POST", PREFIX + "api/exports")] = (201, request_view(project="trial"))
    r = run([str(home / "results" / "table.csv"), "--why", "x", "--project", "trial", "--json"], home, service)
    assert r.returncode == 0, r.stderr
    assert service.calls[0]["body"]["project"] == "trial"
    assert json.loads(r.stdout)["project"] == "trial"


def test_a_refusal_prints_the_rule_id_and_the_services_message_and_exits_1(home, service):
    message = "alice is not a member of project cohort; ask a steward to add you"
    service.answers[("POST", PREFIX + "api/exports")] = (
        403,
        {"status": 403, "rule": "airlock-not-member", "message": message},
    )
    r = run(["results/table.csv", "--why", "x"], home, service)
    assert r.returncode == 1
    assert r.stderr.strip() == f"gpuhub-export: refused (airlock-not-member): {message}"
    assert r.stdout == ""


def test_a_non_json_error_still_names_a_rule_and_the_status(home, service):
    service.answers[("POST", PREFIX + "api/exports")] = (502, "<html>Bad gateway</html>")
    r = run(["results/table.csv", "--why", "x"], home, service)
    assert r.returncode == 1
    assert "refused (airlock-http): the airlock service answered 502: <html>Bad gateway</html>" in r.stderr


@pytest.mark.parametrize(
    "setup, argv, rule",
    [
        ("outside", ["{outside}", "--why", "x"], "airlock-path"),
        ("escape", ["../secret.csv", "--why", "x"], "airlock-path"),
        ("link", ["results/link.csv", "--why", "x"], "airlock-path"),
        ("none", ["results", "--why", "x"], "airlock-path"),
        ("none", ["results/table.csv", "--why", "  "], "airlock-why"),
    ],
)
def test_what_cannot_pass_is_refused_here_with_its_rule_and_nothing_is_sent(home, service, tmp_path, setup, argv, rule):
    outside = tmp_path / "secret.csv"
    outside.write_bytes(CSV)
    if setup == "link":  # a link in the home pointing out of it: the service could not read it either
        (home / "results" / "link.csv").symlink_to(outside)
    r = run([a.format(outside=outside) for a in argv], home, service)
    assert r.returncode == 1
    assert f"refused ({rule}):" in r.stderr
    assert service.calls == []


def test_no_airlock_address_no_token_or_no_project_each_say_what_to_do(home, service):
    r = run(["results/table.csv", "--why", "x"], home, None)
    assert r.returncode == 1 and "refused (airlock-url): this server was not given the airlock's address" in r.stderr
    r = run(["results/table.csv", "--why", "x"], home, service, JUPYTERHUB_API_TOKEN=None)
    assert r.returncode == 1 and "refused (airlock-token): JUPYTERHUB_API_TOKEN is unset" in r.stderr
    r = run(["results/table.csv", "--why", "x"], home, service, GPUHUB_PROJECT=None)
    assert r.returncode == 1 and "refused (airlock-unknown-project): no project" in r.stderr and "--project" in r.stderr
    assert service.calls == []


def test_an_unreachable_service_is_named_with_its_address(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    url = f"http://127.0.0.1:{port}{PREFIX}"
    r = run(["results/table.csv", "--why", "x"], home, None, GPUHUB_AIRLOCK_URL=url)
    assert r.returncode == 1
    assert f"refused (airlock-unreachable): the airlock service at {url}api/exports did not answer" in r.stderr


def test_status_shows_the_request_with_its_reviews(home, service):
    review = {"reviewer": "steve", "decision": "approve", "reason": "aggregated", "at": "2026-12-02T01:00:00Z"}
    service.answers[("GET", PREFIX + "api/exports/7")] = (200, request_view(reviews=[review]))
    r = run(["--status", "7"], home, service)
    assert r.returncode == 0, r.stderr
    assert service.calls[0]["method"] == "GET" and service.calls[0]["auth"] == f"token {TOKEN}"
    assert "export request 7: in_review" in r.stdout
    assert "approve by steve at 2026-12-02T01:00:00Z: aggregated" in r.stdout


def test_usage_errors_exit_2_without_a_call(home, service):
    r = run(["results/table.csv"], home, service)
    assert r.returncode == 2 and "give FILE and --why" in r.stderr
    assert service.calls == []


def test_import_posts_to_the_imports_api_with_the_ordinary_home_path(home, service):
    service.answers[("POST", PREFIX + "api/imports")] = (
        201,
        request_view(direction="import", id=3, state="checks_done"),
    )
    argv = ["results/table.csv", "--why", "reference codes", "--project", "cohort"]
    r = run(argv, home, service, script="import", GPUHUB_PROJECT=None)
    assert r.returncode == 0, r.stderr
    assert service.calls[0]["path"] == PREFIX + "api/imports"
    assert service.calls[0]["body"]["path"] == "results/table.csv"
    assert "import request 3: checks_done" in r.stdout


def test_the_image_installs_both_commands():
    scripts = tomllib.loads((LAB / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "gpuhub-export": "gpuhub_lab.airlock:export_main",
        "gpuhub-import": "gpuhub_lab.airlock:import_main",
    }
