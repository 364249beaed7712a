"""The researcher's side of the airlock (issue 14 item 1): ``gpuhub-export`` / ``gpuhub-import`` and the client
that the JupyterLab entry "Request export…" uses through :mod:`gpuhub_lab.airlock_handlers`.

Standard library only (the console scripts must start fast in a read-only image and the hub's tests run this file
directly). Both talk to the hub service ``gpuhub-airlock`` (contract: gpuhub/hub/airlock_service.openapi.yaml)
with the server's own hub token, ``$JUPYTERHUB_API_TOKEN``:

- the service's address is ``$GPUHUB_AIRLOCK_URL`` (its prefix, e.g. ``http://GATEWAY:PORT/services/gpuhub-airlock/``),
  set by the hub in every server that may reach it; it is never guessed, because a project server's only door is
  the one its firewall opens (gpuhub.host.project_network);
- the project is ``$GPUHUB_PROJECT`` (what the spawner sets in a project server), or ``--project``;
- the path sent is relative to the home folder (``$HOME``: the project home in a project server, the ordinary home
  elsewhere). The service copies the bytes from the volume itself; the sha256 computed here is only sent so the
  service can say when what it read differs from what the researcher saw.

Every refusal prints the service's rule id (``airlock-*``) and its message, which names the fix; the exit status
is 1 for a refusal, 2 for a usage error (argparse's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

SERVICE = "gpuhub-airlock"
TIMEOUT_S = 120  # the service copies and checks the file before it answers (a 16 MB CSV: seconds)
EXPORTS, IMPORTS = "exports", "imports"


class AirlockError(Exception):
    """A refusal (the service's ``{"status", "rule", "message"}``) or a client-side one with its own rule id."""

    def __init__(self, rule: str, message: str, status: int = 0):
        super().__init__(f"{rule}: {message}")
        self.rule, self.message, self.status = rule, message, status


def service_url(env=os.environ) -> str:
    url = env.get("GPUHUB_AIRLOCK_URL", "").strip()
    if not url:
        raise AirlockError(
            "airlock-url",
            "this server was not given the airlock's address (GPUHUB_AIRLOCK_URL is unset): the hub sets it only "
            "when the gpuhub-airlock service is configured; ask an operator, or restart the server from the hub",
        )
    return url.rstrip("/") + "/"


def _token(env) -> str:
    token = env.get("JUPYTERHUB_API_TOKEN", "")
    if not token:
        raise AirlockError(
            "airlock-token",
            "JUPYTERHUB_API_TOKEN is unset: run this inside your hub server (its terminal or a notebook), "
            "where the hub gives the server its own token",
        )
    return token


def call(method: str, url: str, token: str, body: dict | None = None, timeout: float = TIMEOUT_S) -> dict:
    """One JSON call to the service; a refusal becomes :class:`AirlockError` with the service's rule id."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"token {token}")
    req.add_header("Accept", "application/json")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as e:
        raise _refusal(e) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise AirlockError(
            "airlock-unreachable",
            f"the airlock service at {url} did not answer ({reason}); try again in a minute, and if it "
            "persists ask an operator whether gpuhub-airlock is running",
        ) from None


def _refusal(e: urllib.error.HTTPError) -> AirlockError:
    raw = e.read()
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("rule"), str):
        return AirlockError(body["rule"], str(body.get("message", "")), e.code)
    rule = e.headers.get("X-Gpuhub-Rule") or "airlock-http"
    text = raw.decode("utf-8", "replace").strip()[:300] or e.reason
    return AirlockError(rule, f"the airlock service answered {e.code}: {text}", e.code)


def relative_path(file: str | os.PathLike, home: str | os.PathLike) -> str:
    """``file`` (absolute, or relative to the working folder) as a path inside ``home``, or AirlockError: the
    service reads only from the home volume, so anything else (``/data``, ``/tmp``) cannot be requested."""
    home_p = Path(home).resolve()
    path = Path(file).expanduser()
    path = (Path.cwd() / path) if not path.is_absolute() else path
    real = path.resolve()
    try:
        rel = real.relative_to(home_p)
    except ValueError:
        raise AirlockError(
            "airlock-path",
            f"{file} is not inside your home folder {home_p}: only files there can pass the airlock; "
            f"copy it under {home_p} first",
        ) from None
    if not real.is_file():
        raise AirlockError("airlock-path", f"{file} is not a file (give the path of one file, e.g. results/table.csv)")
    return rel.as_posix()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def local_file(file: str | os.PathLike, home: str | os.PathLike) -> tuple[str, str]:
    """(path relative to ``home``, its sha256 as read here), or AirlockError for a path outside ``home``."""
    rel = relative_path(file, home)
    return rel, sha256_of(Path(home).resolve() / rel)


def submit(direction: str, path: str, why: str, project: str, env=os.environ, sha256: str | None = None) -> dict:
    """POST the request (``path`` relative to the home folder); the service's answer, the new request."""
    if not (why or "").strip():
        raise AirlockError("airlock-why", 'say why the file should pass the airlock (--why "table 2 of the paper")')
    if not project:
        raise AirlockError(
            "airlock-unknown-project",
            "no project: this is not a project server (GPUHUB_PROJECT is unset); pass --project KEY",
        )
    body = {"project": project, "path": path, "why": why}
    if sha256:
        body["sha256"] = sha256
    return call("POST", f"{service_url(env)}api/{direction}", _token(env), body)


def status(direction: str, request_id: int, env=os.environ) -> dict:
    return call("GET", f"{service_url(env)}api/{direction}/{int(request_id)}", _token(env))


def describe(req: dict) -> str:
    """What the researcher reads after a submit or --status: id, state, the file, the checks' findings."""
    lines = [
        f"{req.get('direction', 'export')} request {req.get('id')}: {req.get('state')}",
        f"  file    {req.get('path')} ({req.get('size')} bytes, sha256 {req.get('sha256')})",
        f"  project {req.get('project')}; needs {req.get('needed')} steward approval(s)",
    ]
    failed = [c for c in req.get("checks") or [] if not c.get("passed")]
    if failed:
        lines.append(f"  {len(failed)} check(s) flagged it (the stewards see these and decide):")
        for c in failed:
            where = f" at {c['location']}" if c.get("location") else ""
            lines.append(f"    - {c.get('rule')}{where}: {c.get('detail')}")
    elif req.get("checks"):
        lines.append("  the automatic checks found nothing")
    for r in req.get("reviews") or []:
        lines.append(f"  {r.get('decision')} by {r.get('reviewer')} at {r.get('at')}: {r.get('reason')}")
    return "\n".join(lines)


def _parser(direction: str) -> argparse.ArgumentParser:
    verb = "export" if direction == EXPORTS else "import"
    where = "out of your project" if direction == EXPORTS else "into a project"
    p = argparse.ArgumentParser(
        prog=f"gpuhub-{verb}",
        description=f"Ask the project's stewards to let FILE {where} through the airlock (gpuhub-airlock). The "
        "service copies the file from your home volume itself, checks it, and shows it to the stewards.",
    )
    p.add_argument("file", nargs="?", help="the file, inside your home folder")
    p.add_argument("--why", help="why it should pass (the stewards read this)")
    p.add_argument("--project", help="the project key (default: $GPUHUB_PROJECT, this project server's)")
    p.add_argument("--status", type=int, metavar="ID", help="show request ID instead of submitting")
    p.add_argument("--json", action="store_true", help="print the service's JSON answer")
    return p


def main(direction: str, argv: list[str] | None = None, env=os.environ) -> int:
    p = _parser(direction)
    args = p.parse_args(argv)
    if args.status is None and (not args.file or args.why is None):
        p.error('give FILE and --why "..." (or --status ID)')
    try:
        if args.status is not None:
            req = status(direction, args.status, env)
        else:
            rel, digest = local_file(args.file, env.get("HOME") or Path.home())
            req = submit(direction, rel, args.why, args.project or env.get("GPUHUB_PROJECT", ""), env, digest)
    except AirlockError as e:
        print(
            f"gpuhub-{'export' if direction == EXPORTS else 'import'}: refused ({e.rule}): {e.message}", file=sys.stderr
        )
        return 1
    print(json.dumps(req, indent=1) if args.json else describe(req))
    return 0


def export_main() -> int:
    return main(EXPORTS)


def import_main() -> int:
    return main(IMPORTS)


if __name__ == "__main__":
    sys.exit(main(IMPORTS if "import" in Path(sys.argv[0]).name else EXPORTS))
