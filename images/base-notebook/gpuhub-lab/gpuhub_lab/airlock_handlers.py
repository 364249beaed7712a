"""``{base_url}gpuhub/airlock``: what the JupyterLab entry "Request export…" calls (the server side of it).

- ``GET  gpuhub/airlock``              -> ``{"project": KEY | null, "configured": bool}``: the Lab page shows the
  entry only in a project server (``$GPUHUB_PROJECT``) whose hub gave it the airlock's address.
- ``POST gpuhub/airlock/exports``      ``{"path", "why"}`` -> the service's answer (201 the request, or its refusal
  ``{"status", "rule", "message"}`` with the same status).
- ``GET  gpuhub/airlock/exports/ID``   -> the request.

Why a hop through this server and not a call from the page: the page holds no hub token for the service, and the
project comes from this server's environment, never from the page. The call itself is :mod:`gpuhub_lab.airlock`
(the same client as ``gpuhub-export``), run in a thread so the server's event loop never waits on it. Only the
identity that may use this server (its owner's Lab page) reaches these handlers (``@authorized``).
"""

from __future__ import annotations

import asyncio
import json
import os

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from gpuhub_lab import airlock


class _Airlock(APIHandler):
    auth_resource = "gpuhub"

    def _answer(self, status: int, body: dict) -> None:
        self.set_status(status)
        self.set_header("Cache-Control", "no-store")
        if body.get("rule"):
            self.set_header("X-Gpuhub-Rule", body["rule"])
        self.finish(json.dumps(body))

    async def _run(self, fn, *args, ok: int = 200) -> None:
        try:
            self._answer(ok, await asyncio.to_thread(fn, *args))
        except airlock.AirlockError as e:
            status = e.status if 400 <= e.status < 600 else (503 if e.rule == "airlock-unreachable" else 400)
            self._answer(status, {"status": status, "rule": e.rule, "message": e.message})


def _owner_only(handler: APIHandler) -> bool:
    """Only the server's owner asks in their own name: the request goes out with this server's token, so anyone
    else the hub lets in (an admin, a hub service, a user the server is shared with) is refused here (403)."""
    hub_user = getattr(handler.current_user, "hub_user", None)  # set under JupyterHub's single-user auth
    owner = os.environ.get("JUPYTERHUB_USER")
    if hub_user is None or (hub_user.get("kind") == "user" and hub_user.get("name") == owner):
        return True
    handler._answer(
        403,
        {
            "status": 403,
            "rule": "airlock-owner",
            "message": f"only {owner} asks the airlock from this server (the request carries the server's own "
            "token); ask from your own server",
        },
    )
    return False


class InfoHandler(_Airlock):
    @web.authenticated
    @authorized
    def get(self):
        self._answer(
            200,
            {
                "project": os.environ.get("GPUHUB_PROJECT") or None,
                "configured": bool(os.environ.get("GPUHUB_AIRLOCK_URL")),
            },
        )


class ExportsHandler(_Airlock):
    @web.authenticated
    @authorized
    async def post(self):
        if not _owner_only(self):
            return
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("path"), str) or not isinstance(body.get("why"), str):
            self._answer(400, {"status": 400, "rule": "airlock-json", "message": 'send {"path": "...", "why": "..."}'})
            return
        await self._run(self._submit, body["path"], body["why"], ok=201)

    def _submit(self, path: str, why: str) -> dict:
        # the file browser's path is relative to the server's root folder, the home folder (the project home)
        root = self.settings.get("server_root_dir") or os.path.expanduser("~")
        rel, digest = airlock.local_file(os.path.join(root, path.lstrip("/")), root)
        return airlock.submit(airlock.EXPORTS, rel, why, os.environ.get("GPUHUB_PROJECT", ""), sha256=digest)


class ExportHandler(_Airlock):
    @web.authenticated
    @authorized
    async def get(self, request_id: str):
        if not _owner_only(self):
            return
        await self._run(airlock.status, airlock.EXPORTS, int(request_id))


def handlers(base_url: str) -> list[tuple]:
    from jupyter_server.utils import url_path_join

    root = url_path_join(base_url, "gpuhub", "airlock")
    return [
        (root, InfoHandler),
        (url_path_join(root, "exports"), ExportsHandler),
        (url_path_join(root, "exports", "([0-9]{1,12})"), ExportHandler),
    ]
