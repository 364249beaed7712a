"""``{base_url}gpuhub/notice``: the one notice (or none) the hub has set for this server.

- ``GET``: any identity allowed on this server (the user's Lab page) reads ``{"notice": {...} | null}``.
- ``POST`` (JSON body, see :func:`gpuhub_lab.notice.validate`) sets it, ``DELETE`` clears it: only a hub *service*
  whose token may access this server (gpuhub-idle, scope ``access:servers``), never a user's own
  token, so what the page shows always comes from the hub.

The notice lives in this process's memory: a restarted server has none until the hub sets it again.
One still here :data:`STALE_SECONDS` after its stop time is dropped (the idle service restarted and
forgot to clear it: the server is running, so it was not culled).
"""

from __future__ import annotations

import json
import time

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from gpuhub_lab.notice import validate

SETTING = "gpuhub_lab_notice"
STALE_SECONDS = 300


class NoticeHandler(APIHandler):
    auth_resource = "gpuhub"

    def _require_hub_service(self) -> None:
        hub_user = getattr(self.current_user, "hub_user", None)  # set under JupyterHub's single-user auth
        if hub_user is not None and hub_user.get("kind") != "service":
            raise web.HTTPError(
                403,
                "only the hub's idle service sets or clears the gpuhub notice (a service token with "
                "access:servers); a user's own token cannot",
            )

    @web.authenticated
    @authorized
    def get(self):
        self.set_header("Cache-Control", "no-store")
        notice = self.settings.get(SETTING)
        if notice is not None and time.time() > notice["cull_at"] + STALE_SECONDS:
            self.settings.pop(SETTING, None)
            notice = None
        self.finish(json.dumps({"notice": notice}))

    @web.authenticated
    @authorized
    def post(self):
        self._require_hub_service()
        try:
            notice = validate(json.loads(self.request.body or b"null"))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise web.HTTPError(400, f"gpuhub notice: {e}") from None
        notice["set_at"] = time.time()
        self.settings[SETTING] = notice
        self.finish(json.dumps({"notice": notice}))

    @web.authenticated
    @authorized
    def delete(self):
        self._require_hub_service()
        self.settings.pop(SETTING, None)
        self.set_status(204)
        self.finish()
