"""JupyterLab in the user's language: at spawn, the server's translation setting is set to the hub's language.

The language is the one of the request that starts the server (:func:`gpuhub.hub.i18n.request_locale`: the
navbar choice, else ``Accept-Language``; from the form or the REST API alike). Once the server answers, the
spawner calls :func:`select` (before the user is sent to it), which puts ``locale`` into the user's
``@jupyterlab/translation-extension:plugin`` settings through the server's own settings API, with the server's
token, keeping the other keys of that setting. So ``GET /user/NAME/lab/api/settings/@jupyterlab/
translation-extension:plugin`` shows ``ko_KR`` for a Korean user, and Lab opens in Korean; the user may still
switch in Lab (until the next start, which applies the hub's language again). It is only set to a language
pack the server has installed (``lab/api/translations``); an image without the Korean pack stays English.
Nothing here can fail a spawn: a server without JupyterLab, or one that does not answer, is logged and left.
"""

from __future__ import annotations

import json

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from gpuhub.hub import i18n

PLUGIN = "@jupyterlab/translation-extension:plugin"


async def select(spawner, ip: str, port: int) -> str | None:
    """Set the started server's JupyterLab locale to the spawn request's language; the locale set, or None."""
    lang = i18n.request_locale(spawner.handler)
    locale = i18n.LAB_LOCALES[lang]
    base = f"http://{ip}:{port}{spawner.server.base_url}lab/api/"
    headers = {"Authorization": f"token {spawner.api_token}", "Content-Type": "application/json"}
    client = AsyncHTTPClient()

    async def call(method: str, path: str, body: dict | None = None) -> dict:
        req = HTTPRequest(
            base + path,
            method=method,
            headers=headers,
            body=None if body is None else json.dumps(body),
            request_timeout=5,
            follow_redirects=False,
        )
        r = await client.fetch(req)
        return json.loads(r.body or b"{}")

    try:
        packs = (await call("GET", "translations")).get("data", {})
        if locale != "en" and locale not in packs:
            spawner.log.info(
                "%s: no %s language pack in the image; JupyterLab stays English", spawner._log_name, locale
            )
            return None
        current = await call("GET", f"settings/{PLUGIN}")
        raw = dict(current.get("settings") or {})
        if raw.get("locale") == locale:
            return locale
        raw["locale"] = locale
        await call("PUT", f"settings/{PLUGIN}", {"raw": json.dumps(raw, indent=2)})
    except (HTTPClientError, OSError, ValueError) as e:
        spawner.log.warning("%s: could not set JupyterLab's language to %s: %s", spawner._log_name, locale, e)
        return None
    return locale
