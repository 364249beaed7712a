"""Python side of the test OIDC provider: install, start, edit accounts, stop.

Used by tests/auth (scripted logins with requests) and tests/browser (Playwright).
Missing node/npm is an error, never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from tests.procs import stop_group

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


class ProviderError(RuntimeError):
    """The test OIDC provider cannot be installed or started; the message says why."""


def require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if not path:
        raise ProviderError(f"{name} is not on PATH; {hint}")
    return path


def ensure_installed() -> None:
    """`npm ci` into tests/oidc_provider/node_modules when oidc-provider is missing."""
    require_tool("node", "install Node.js 20+ (apt-get install nodejs npm)")
    npm = require_tool("npm", "install npm (apt-get install npm)")
    if (HERE / "node_modules" / "oidc-provider" / "package.json").exists():
        return
    proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise ProviderError(f"npm ci in {HERE} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def proxy_command() -> str:
    """configurable-http-proxy: the one scripts/setup.sh links into .venv/bin, else on PATH."""
    local = ROOT / ".venv" / "bin" / "configurable-http-proxy"
    found = str(local) if local.exists() else shutil.which("configurable-http-proxy")
    if not found:
        raise ProviderError("configurable-http-proxy not found in .venv/bin or on PATH; run `make setup-test`")
    return found


class OIDCProvider:
    """One running provider.mjs with one confidential client and editable accounts."""

    def __init__(
        self,
        workdir: Path,
        *,
        redirect_uris: list[str],
        client_id: str = "gpuhub",
        client_secret: str = "test-client-secret-0123456789",
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.accounts_file = self.workdir / "accounts.json"
        self.log_file = self.workdir / "provider.log"
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris = list(redirect_uris)
        self.accounts: dict[str, dict] = {}
        self.proc: subprocess.Popen | None = None
        self.issuer: str | None = None
        self._write()

    # -- accounts (the file is re-read by the provider on every lookup)

    def _write(self) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.workdir, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.accounts, f, ensure_ascii=False)
        os.replace(tmp, self.accounts_file)

    def set_account(self, login: str, *, password: str | None = None, sub: str | None = None, **claims) -> str:
        """Create or replace an account; returns its password (default 'pw-<login>')."""
        password = password or f"pw-{login}"
        claims.setdefault("preferred_username", login)
        self.accounts[login] = {"password": password, "claims": claims, **({"sub": sub} if sub else {})}
        self._write()
        return password

    def update_claims(self, login: str, **claims) -> None:
        self.accounts[login]["claims"].update(claims)
        self._write()

    # -- process

    def start(self, timeout: float = 30.0) -> str:
        ensure_installed()
        env = {
            **os.environ,
            "OIDC_ACCOUNTS_FILE": str(self.accounts_file),
            "OIDC_CLIENT_ID": self.client_id,
            "OIDC_CLIENT_SECRET": self.client_secret,
            "OIDC_REDIRECT_URIS": ",".join(self.redirect_uris),
        }
        log = open(self.log_file, "w")  # noqa: SIM115 - the provider writes to it for its whole life
        self.proc = subprocess.Popen(
            ["node", str(HERE / "provider.mjs")],
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            cwd=HERE,
            text=True,
            start_new_session=True,
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not line or not line[0].strip():
            self.stop()
            raise ProviderError(f"OIDC provider did not start within {timeout}s:\n{self.logs()}")
        self.issuer = json.loads(line[0])["issuer"]
        # keep draining stdout into the log
        threading.Thread(target=self._drain, args=(log,), daemon=True).start()
        return self.issuer

    def _drain(self, log) -> None:
        for text in self.proc.stdout:
            log.write(text)
            log.flush()

    def logs(self, tail: int = 20000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_group(self.proc, 10)
