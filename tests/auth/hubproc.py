"""A real JupyterHub subprocess with tests/auth/hub_config.py, and a scripted OIDC login."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, quote, urlencode, urljoin, urlparse, urlunparse

import requests

from tests.auth.sites import write_site
from tests.oidc_provider.harness import proxy_command
from tests.procs import free_port, stop_group

HERE = Path(__file__).resolve().parent
SECRET_ENV = "GPUHUB_TEST_OIDC_SECRET"


class HubFailed(RuntimeError):
    pass


class AuthHub:
    """jupyterhub -f tests/auth/hub_config.py on 127.0.0.1:<port>."""

    def __init__(
        self,
        workdir: Path,
        site: dict,
        *,
        port: int,
        secret: str | None,
        refresh_age: int = 300,
        extra_env: dict | None = None,
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        site = json.loads(json.dumps(site))
        site["hub"]["bind_url"] = self.url
        site["hub"]["state_dir"] = str(self.workdir / "state")
        self.site_path = write_site(site, self.workdir / "site.yaml")
        self.token = secrets.token_hex(16)
        self.log_file = self.workdir / "hub.log"
        self.env = {
            **os.environ,
            "GPUHUB_SITE_CONFIG": str(self.site_path),
            "GPUHUB_TEST_API_TOKEN": self.token,
            "GPUHUB_TEST_HUB_PORT": str(free_port()),
            "GPUHUB_TEST_PROXY_API_PORT": str(free_port()),
            "GPUHUB_TEST_PROXY_COMMAND": proxy_command(),
            "GPUHUB_TEST_AUTH_REFRESH_AGE": str(refresh_age),
            "GPUHUB_DEMO_PASSWORD": "demo-password-123",
            "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
            **(extra_env or {}),
        }
        self.env.pop(SECRET_ENV, None)
        if secret is not None:
            self.env[SECRET_ENV] = secret
        self.proc: subprocess.Popen | None = None

    def _popen(self) -> None:
        with open(self.log_file, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(HERE / "hub_config.py")],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start(self, timeout: float = 60.0) -> None:
        self._popen()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HubFailed(f"hub exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise HubFailed(f"hub did not answer within {timeout}s:\n{self.logs()}")

    def run_until_exit(self, timeout: float = 60.0) -> int:
        """Start the hub expecting it to refuse to start; returns its exit status."""
        self._popen()
        try:
            return self.proc.wait(timeout)
        finally:
            self.stop()

    def logs(self, tail: int = 30000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_group(self.proc, 15)

    # -- REST API as the admin service

    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = {"Authorization": f"token {self.token}"}
        return requests.request(method, f"{self.url}/hub/api{path}", headers=headers, timeout=10, **kw)

    def user(self, name: str) -> dict | None:
        r = self.api("GET", f"/users/{quote(name, safe='')}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()


# ---------------------------------------------------------------- scripted login


def tamper_state(callback_url: str) -> str:
    """The callback URL with a forged (well-formed, wrong) OAuth state."""
    parts = urlparse(callback_url)
    query = parse_qs(parts.query)
    forged = base64.urlsafe_b64encode(json.dumps({"state_id": "0" * 32}).encode()).decode()
    query["state"] = [forged]
    return urlunparse(parts._replace(query=urlencode(query, doseq=True)))


def idp_login(
    session: requests.Session, hub_url: str, login: str, password: str, *, on_callback=None
) -> requests.Response:
    """GET /hub/oauth_login -> provider login form -> POST login -> POST consent ->
    /hub/oauth_callback. Returns the hub's answer to the callback (not followed)."""
    r = session.get(f"{hub_url}/hub/oauth_login", allow_redirects=False, timeout=10)
    assert r.status_code == 302, (r.status_code, r.text[:500])
    url = r.headers["Location"]
    for _ in range(20):
        if url.startswith(f"{hub_url}/hub/oauth_callback"):
            if on_callback:
                url = on_callback(url)
            return session.get(url, allow_redirects=False, timeout=30)
        r = session.get(url, allow_redirects=False, timeout=10)
        if r.is_redirect:
            url = urljoin(url, r.headers["Location"])
            continue
        assert r.status_code == 200, (url, r.status_code, r.text[:1000])
        action = re.search(r'<form[^>]*action="([^"]+)"', r.text)
        assert action, r.text[:1000]
        form_url = urljoin(url, html.unescape(action.group(1)))
        data = {"login": login, "password": password} if 'name="login"' in r.text else {}
        r = session.post(form_url, data=data, allow_redirects=False, timeout=10)
        assert r.is_redirect, (form_url, r.status_code, r.text[:1000])
        url = urljoin(form_url, r.headers["Location"])
    raise AssertionError("login did not reach the hub callback in 20 steps")
