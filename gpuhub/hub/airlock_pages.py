"""The airlock's pages under ``/services/gpuhub-airlock/`` (issue 14 item 5), signed in with the hub's OAuth.

- ``{prefix}``: per project the signed-in user stewards, the requests awaiting review (the automatic checks'
  findings, the requester's reason, an approve/reject form) and the decided ones; then the user's own requests.
  Someone who stewards nothing and asked for nothing sees an empty page that says how requests are made.
- ``{prefix}requests/ID``: one request: the preview (a CSV as a table with the flagged cells marked, a figure
  inline, text), every finding, the reviews and the full history, and the form. A steward decides from here.
- ``{prefix}requests/ID/file``: the quarantined bytes for the preview (stewards of the project only, never the
  requester: a preview outside the room would be an export without review); served with a sandboxing CSP so
  an svg or an html-looking text never runs in the page's origin.
- ``{prefix}requests/ID/review`` (POST, xsrf-checked form): the decision, through the same store call and release
  as the REST API (:func:`gpuhub.hub.airlock_service.review_and_release`).
- ``{prefix}requests/ID/download``: the one-time download of an approved export by its requester when
  ``airlock.export_release`` is ``download`` (recorded as the release; again: 410 Gone).
- ``{prefix}requests/ID/cancel`` and ``.../revoke`` (POST, xsrf-checked forms): the requester cancels a request
  without a decision, a steward revokes an approved one not yet released, through the store calls the REST API's
  ``POST .../cancel`` and ``.../revoke`` make (the rules live in :mod:`quota.airlock`, nowhere else).

Who sees what is the store's rule (:meth:`quota.airlock_store.AirlockStore.get`): the requester and the project's
stewards; anyone else gets 404, so a request of another project does not even show that it exists. Review
controls are shown only where :func:`can_review` says the store would take the review. Korean and English from
the catalogs (:mod:`gpuhub.hub.i18n`): the language this page's switch chose (its own cookie, scoped to the
service), else ``Accept-Language``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
from pathlib import Path
from urllib.parse import quote

import jinja2
from jupyterhub.services.auth import HubOAuthCallbackHandler, HubOAuthenticated
from tornado import web

from gpuhub.hub import airlock_texts as texts
from gpuhub.hub import i18n
from quota import airlock as al

TEMPLATES = Path(__file__).parent / "templates"
PREVIEW_ROWS = 200  # rows of a CSV shown on the page (the findings still cover the whole file)
PREVIEW_TEXT = 64 * 1024  # characters of a text file shown
IMAGE_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
TEXT_TYPES = ("txt", "json", "ipynb", "md", "py", "r", "tsv")
CELL_AT = re.compile(r"line (\d+), column (?:'(.*)'|#(\d+))")
LINE_AT = re.compile(r"line (\d+)")
SANDBOX = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=jinja2.StrictUndefined
)


def can_review(view, user: str, site) -> bool:
    """The store would take ``user``'s review of ``view``: a steward of its project, not its requester, not yet
    reviewed by them, and the request awaits review."""
    project = site.projects.get(view.project)
    return (
        project is not None
        and user in project.stewards
        and user != view.requester
        and view.state in al.REVIEWABLE
        and user not in {r["reviewer"] for r in view.reviews}
    )


def kind_of(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext == "csv":
        return "csv"
    if ext in IMAGE_TYPES:
        return "image"
    if ext == "pdf":
        return "pdf"
    return "text" if ext in TEXT_TYPES else "none"


def flagged_cells(checks: list[dict]) -> dict[tuple[int, str], dict]:
    """(file line, column name or ``#n``) -> the finding (``rule``, ``detail``: the page says the rule's sentence
    in its language, then the detail), for every failed finding located at a cell."""
    out = {}
    for c in checks:
        m = CELL_AT.match(c.get("location") or "") if not c["passed"] else None
        if m:
            col = m.group(2) if m.group(2) is not None else f"#{m.group(3)}"
            out[(int(m.group(1)), col)] = {"rule": c["rule"], "detail": c["detail"]}
    return out


def csv_preview(body: bytes, checks: list[dict]) -> dict:
    """The first rows of a CSV as cells, each marked with the finding at it (if any)."""
    text = body.decode("utf-8-sig", errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0] if rows else []
    flags = flagged_cells(checks)
    names = [h if h.strip() else f"#{i + 1}" for i, h in enumerate(header)]
    out = []
    for ri, row in enumerate(rows[1 : PREVIEW_ROWS + 1]):
        line = ri + 2
        out.append(
            {
                "line": line,
                "cells": [
                    {"value": v, "flag": flags.get((line, names[ci] if ci < len(names) else f"#{ci + 1}"))}
                    for ci, v in enumerate(row)
                ],
            }
        )
    return {"header": header, "rows": out, "more": max(0, len(rows) - 1 - PREVIEW_ROWS)}


def text_preview(body: bytes, checks: list[dict]) -> dict:
    flagged = {}
    for c in checks:
        m = LINE_AT.search(c.get("location") or "") if not c["passed"] else None
        if m:
            flagged[int(m.group(1))] = {"rule": c["rule"], "detail": c["detail"]}
    text = body.decode("utf-8", errors="replace")
    cut = len(text) > PREVIEW_TEXT
    lines = text[:PREVIEW_TEXT].splitlines()
    return {"lines": [{"n": i + 1, "text": t, "flag": flagged.get(i + 1)} for i, t in enumerate(lines)], "cut": cut}


class _Page(HubOAuthenticated, web.RequestHandler):
    def initialize(self, store, auth, volumes, prefix: str, hub_prefix: str):
        self.store, self.hub_auth, self.volumes = store, auth, volumes
        self.prefix, self.hub_prefix = prefix, hub_prefix

    @property
    def site(self):
        return self.store.site

    def messages(self) -> i18n.Messages:
        return i18n.Messages(i18n.request_locale(self), self.site.tz)

    @property
    def user(self) -> str:
        return self.current_user["name"]

    def render_page(self, template: str, status: int = 200, **values) -> None:
        t = self.messages()
        html = _env.get_template(template).render(
            t=t,
            _=t.gettext,
            user=self.user,
            prefix=self.prefix,
            hub_prefix=self.hub_prefix,
            xsrf=self.xsrf_token.decode() if isinstance(self.xsrf_token, bytes) else self.xsrf_token,
            uri=self.request.uri,
            states=STATE_NAMES,
            finding_texts=texts.FINDINGS,
            **values,
        )
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Content-Security-Policy", "frame-ancestors 'self'; form-action 'self'")
        self.finish(html)

    def write_error(self, status_code: int, **kwargs) -> None:
        t = self.messages()
        exc = kwargs.get("exc_info", (None, None))[1]
        text = getattr(exc, "log_message", None) or t.gettext("Something went wrong.")
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(f"{status_code}: {text}")


STATE_NAMES = {
    al.SUBMITTED: i18n.N_("submitted"),
    al.CHECKS_DONE: i18n.N_("checks done"),
    al.IN_REVIEW: i18n.N_("in review"),
    al.APPROVED: i18n.N_("approved"),
    al.REJECTED: i18n.N_("rejected"),
    al.CANCELLED: i18n.N_("cancelled"),
    al.REVOKED: i18n.N_("revoked"),
    al.RELEASED: i18n.N_("released"),
}


# what the page says first about a refused review (the rule's English sentence and id follow it)
REFUSALS = {
    "airlock-reason-required": i18n.N_(
        "Write a reason: approving over a failed automatic check, and any rejection, needs one."
    ),
    "airlock-own-request": i18n.N_("You asked for this request, so another steward must review it (two-person rule)."),
    "airlock-already-reviewed": i18n.N_("You already reviewed this request; a different steward gives the next one."),
    "airlock-not-reviewable": i18n.N_("This request no longer awaits review."),
    "airlock-not-steward": i18n.N_("Only the project's stewards review its requests."),
}
WORDS = (i18n.N_("export"), i18n.N_("import"), i18n.N_("approve"), i18n.N_("reject"))  # shown through _()


class ListPage(_Page):
    """Pending and decided requests per stewarded project, then the user's own."""

    @web.authenticated
    async def get(self):
        user = self.user
        views = await asyncio.to_thread(self.store.list, user)
        projects = []
        for key, project in self.site.projects.items():
            if user not in project.stewards:
                continue
            mine = [v for v in views if v.project == key]
            projects.append(
                {
                    "key": key,
                    "display_name": project.display_name,
                    "pending": [v for v in mine if v.state in al.OPEN][::-1],
                    "decided": [v for v in mine if v.state not in al.OPEN][::-1],
                }
            )
        own = [v for v in views if v.requester == user][::-1]
        reviewable = {v.id for v in views if can_review(v, user, self.site)}
        self.render_page("airlock_list.html", projects=projects, own=own, reviewable=reviewable)


class RequestPage(_Page):
    """One request: preview, findings, reviews, history and the review form."""

    async def _view(self, request_id: str):
        try:
            return await asyncio.to_thread(self.store.get, int(request_id), self.user)
        except al.AirlockRefusal as e:
            raise web.HTTPError(404, self.messages().gettext("There is no request %(id)s that you may see.") % {
                "id": request_id}) from e  # fmt: skip

    async def _quarantined(self, view) -> Path | None:
        """The copy under review, for a steward who is not the requester, while the request awaits review: a
        rejected, revoked or cancelled file is reachable by no path, an approved one only where it was released."""
        if view.state not in al.REVIEWABLE:
            return None
        try:
            return await asyncio.to_thread(self.store.quarantined_path, view.id, self.user)
        except al.AirlockRefusal:
            return None

    async def _preview(self, view) -> dict:
        path = await self._quarantined(view)
        if path is None:
            return {"kind": "hidden" if view.state in al.REVIEWABLE else "decided"}
        kind = kind_of(view.name)
        if kind == "csv":
            return {"kind": kind, **csv_preview(await asyncio.to_thread(path.read_bytes), view.checks)}
        if kind == "text":
            return {"kind": kind, **text_preview(await asyncio.to_thread(path.read_bytes), view.checks)}
        return {"kind": kind}

    @web.authenticated
    async def get(self, request_id: str, error: str | None = None, status: int = 200, action: str = "review"):
        view = await self._view(request_id)
        preview = await self._preview(view)
        steward = self.user in self.site.projects[view.project].stewards
        self.render_page(
            "airlock_request.html",
            status=status,
            r=view,
            preview=preview,
            error=error,
            error_title=texts.NOT_DONE[action],
            can_review=can_review(view, self.user, self.site),
            can_cancel=self.user == view.requester and view.state in al.OPEN,
            can_revoke=steward and view.state == al.APPROVED,
            can_download=self.user == view.requester
            and view.state == al.APPROVED
            and view.direction == al.EXPORT
            and self.site.airlock.export_release == "download",
            is_steward=steward,
        )

    async def refused(self, request_id: str, e: al.AirlockRefusal, action: str, said: dict) -> None:
        """The request page again with the refusal: the translated sentence first (``said`` by rule id), then the
        rule's English sentence and id (in English the rule's own sentence says it all)."""
        t = self.messages()
        first = t.gettext(said[e.rule]) + " " if e.rule in said and t.lang != i18n.DEFAULT else ""
        await RequestPage.get(self, request_id, error=f"{first}{e.message} ({e.rule})", status=e.status, action=action)


class FileHandler(RequestPage):
    """The quarantined bytes for the preview, sandboxed; 404 for anyone but a steward who is not the requester."""

    @web.authenticated
    async def get(self, request_id: str):
        view = await self._view(request_id)
        path = await self._quarantined(view)
        if path is None:
            raise web.HTTPError(404, self.messages().gettext("The file of request %(id)s is not shown: only a steward "
                "other than the requester sees it, while it awaits review.") % {"id": request_id})  # fmt: skip
        ext = view.name.rsplit(".", 1)[-1].lower()
        self.set_header("Content-Type", IMAGE_TYPES.get(ext, "application/pdf" if ext == "pdf" else "text/plain"))
        self.set_header("Content-Security-Policy", SANDBOX)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.finish(await asyncio.to_thread(path.read_bytes))


class ReviewForm(RequestPage):
    """POST decision + reason from the page; the page again with the refusal, or back to the request."""

    @web.authenticated
    async def post(self, request_id: str):
        from gpuhub.hub.airlock_service import review_and_release

        view = await self._view(request_id)
        decision, reason = self.get_body_argument("decision", ""), self.get_body_argument("reason", "").strip()
        try:
            await asyncio.to_thread(
                review_and_release, self.store, self.volumes, view.id, self.user, decision, reason,
                self.request.remote_ip,
            )  # fmt: skip
        except al.AirlockRefusal as e:
            await self.refused(request_id, e, "review", REFUSALS)
            return
        self.redirect(f"{self.prefix}requests/{view.id}")


REVOKE_REFUSALS = {**REFUSALS, **texts.REFUSALS, "airlock-reason-required": i18n.N_("Write a reason: a revocation "
    "needs one; the requester and the other stewards read it.")}  # fmt: skip


class ActionForm(RequestPage):
    """POST ``cancel`` (the requester, no reason) or ``revoke`` (a steward, ``reason``) from the request page:
    :meth:`AirlockStore.cancel` / :meth:`AirlockStore.revoke`, the calls behind the REST API's POST .../cancel and
    .../revoke, so the page and the API follow one rule. Back to the request (its history shows the step)."""

    @web.authenticated
    async def post(self, request_id: str, action: str):
        view = await self._view(request_id)
        ip = self.request.remote_ip
        try:
            if action == "cancel":
                await asyncio.to_thread(self.store.cancel, view.id, self.user, ip)
            else:
                reason = self.get_body_argument("reason", "").strip()
                await asyncio.to_thread(self.store.revoke, view.id, self.user, reason, ip)
        except al.AirlockRefusal as e:
            await self.refused(request_id, e, action, REVOKE_REFUSALS)
            return
        self.redirect(f"{self.prefix}requests/{view.id}")


class DownloadHandler(RequestPage):
    """The one-time download of an approved export (``airlock.export_release: download``), for its requester:
    :meth:`AirlockStore.download` records the release (audit chain) as it reads the bytes. Once downloaded, or
    revoked, the link answers 410 Gone; anyone but the requester gets 403, and who may not see the request 404."""

    @web.authenticated
    async def get(self, request_id: str):
        view = await self._view(request_id)
        t = self.messages()
        try:
            _, body = await asyncio.to_thread(self.store.download, view.id, self.user, self.request.remote_ip)
        except al.AirlockRefusal as e:
            status = 410 if e.rule == "airlock-not-releasable" else e.status
            said = e.rule in texts.REFUSALS and t.lang != i18n.DEFAULT  # English: the rule's sentence says it all
            first = t.gettext(texts.REFUSALS[e.rule]) + " " if said else ""
            raise web.HTTPError(status, f"{first}{e.message} ({e.rule})") from None
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Disposition", f"attachment; filename*=UTF-8''{quote(view.name)}")
        self.set_header("Content-Security-Policy", SANDBOX)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.finish(body)


class LanguageForm(_Page):
    """POST ``lang``: this service's own language cookie (the hub's is scoped to /hub/), then back."""

    @web.authenticated
    def post(self):
        lang = self.get_body_argument("lang", "")
        if lang not in i18n.LANGUAGES:
            raise web.HTTPError(400, f"language {lang!r} is not offered; choose one of: {', '.join(i18n.LANGUAGES)}")
        self.set_cookie(i18n.COOKIE, lang, path=self.prefix, expires_days=365, samesite="Lax", httponly=True)
        back = self.get_body_argument("next", "")
        self.redirect(back if back.startswith(self.prefix) and "//" not in back and "\\" not in back else self.prefix)


def handlers(prefix: str, args: dict) -> list[tuple]:
    page = {**args, "prefix": prefix}
    return [
        (prefix, ListPage, page),
        (prefix + r"requests/([0-9]{1,12})", RequestPage, page),
        (prefix + r"requests/([0-9]{1,12})/file", FileHandler, page),
        (prefix + r"requests/([0-9]{1,12})/review", ReviewForm, page),
        (prefix + r"requests/([0-9]{1,12})/(cancel|revoke)", ActionForm, page),
        (prefix + r"requests/([0-9]{1,12})/download", DownloadHandler, page),
        (prefix + "language", LanguageForm, page),
        (prefix + "oauth_callback", HubOAuthCallbackHandler, {}),
    ]
