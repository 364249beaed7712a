"""While the hub database cannot be used, the hub answers 503 with a message naming ``hub.db_url`` and the fix.

Why: JupyterHub keeps its users, tokens and login cookies in ``hub.db_url`` (and gpuhub its ledger). When that
database is down (PostgreSQL stopped) or cannot be written (SQLite's state disk full), JupyterHub 6.1 answers
in ways that hide the cause: ``BaseHandler.prepare`` catches the failed token or cookie lookup, logs it and goes
on without a user, so a spawn is refused with **403 "Missing or invalid credentials."**; and a database error
raised inside a handler (JupyterHub's own ``db.commit()`` at the start of ``User.spawn``) becomes tornado's bare
**500 "Internal Server Error"**. Neither tells a user to wait nor an operator what to fix.

How: JupyterHub has no hook for database errors, and its handlers cannot be replaced by configuration
(``extra_handlers`` come after its own routes and are deprecated). Tornado's documented override points for
"refuse the request before the handler runs" and "answer an error" are ``RequestHandler.prepare`` and
``RequestHandler.send_error``; JupyterHub's pages and API handlers all inherit them from
``jupyterhub.handlers.base.BaseHandler``. :func:`install` wraps three methods of that one class, once per
process, each a thin layer around JupyterHub's own code, which still runs unchanged (logging, rollback):

- ``get_current_user``: remembers a database error of the user lookup (then re-raises it, as before);
- ``prepare``: after JupyterHub's own ``prepare``, a remembered database error is raised as the 503;
- ``send_error``: a database error that escaped a handler (a 500) is answered as the 503 instead.

The 503 carries ``Retry-After``. The REST API answers JSON ``{"status": 503, "message": ...}`` in English (as
every REST answer); pages show the message in the request's language (:mod:`gpuhub.hub.i18n`). Only errors
that mean "the database cannot be used now" count (:func:`is_database_outage`); an ``IntegrityError`` or a
programming error stays JupyterHub's 500. Nothing here changes what is decided: requests without a user lookup
(the login page without a cookie) are served as before, and a refused request has changed nothing.
"""

from __future__ import annotations

import functools

from sqlalchemy import exc as sa_exc
from tornado import web

from gpuhub.hub import i18n

RETRY_AFTER_S = 30
MESSAGE = i18n.N_(
    "The hub's database (hub.db_url) cannot be used: {detail}. Nothing was started or changed, and running "
    "servers keep working. Fix (operators): make the database that hub.db_url names in the site config usable "
    "again (PostgreSQL running and reachable; for SQLite, free space and write access in hub.state_dir), then "
    "try again."
)
_ATTR = "_gpuhub_db_error"  # on a handler: the database error of its user lookup


def is_database_outage(exc: BaseException | None) -> bool:
    """True for errors that mean the database cannot be used now: unreachable, disk full, locked, dropped
    connection, pool exhausted, or the session left unusable by such an error."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.PendingRollbackError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def detail_of(exc: BaseException) -> str:
    """The driver's own first line ("database or disk is full", "connection ... refused"), never the SQL
    statement or its parameters (SQLAlchemy's ``str`` appends both; they may hold a token's prefix)."""
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return (lines[0] if lines else type(orig).__name__)[:200]


def outage_error(exc: BaseException, lang: str | None = None) -> web.HTTPError:
    """The 503 for ``exc``: the English message (REST, logs); with ``lang``, the page's text in that language."""
    detail = detail_of(exc)
    err = web.HTTPError(503, MESSAGE.format(detail=detail), reason="Hub Database Unavailable")
    err.headers = {"Retry-After": str(RETRY_AFTER_S)}  # both of JupyterHub's write_error set these
    if lang is not None:
        err.jupyterhub_message = i18n.Messages(lang).gettext(MESSAGE).format(detail=detail)
    return err


def _error_for(handler, exc: BaseException) -> web.HTTPError:
    from jupyterhub.apihandlers.base import APIHandler

    return outage_error(exc, None if isinstance(handler, APIHandler) else i18n.request_locale(handler))


def _rollback(handler) -> None:
    """Leave JupyterHub's shared session usable; a rollback on a dead connection may itself fail."""
    try:
        handler.db.rollback()
    except Exception:  # noqa: BLE001 - the original error is the one reported
        handler.log.debug("gpuhub: rollback after a database error failed too", exc_info=True)


def _wrap_get_current_user(original):
    @functools.wraps(original)
    async def get_current_user(self):
        try:
            return await original(self)
        except Exception as e:
            if is_database_outage(e):
                setattr(self, _ATTR, e)
            raise

    return get_current_user


def _wrap_prepare(original):
    @functools.wraps(original)
    async def prepare(self):
        try:
            await original(self)
        finally:
            failed = getattr(self, _ATTR, None)
            if failed is not None:  # the request cannot be authorized: say why instead of "invalid credentials"
                _rollback(self)
                raise _error_for(self, failed) from failed

    return prepare


def _wrap_send_error(original):
    @functools.wraps(original)
    def send_error(self, status_code: int = 500, **kwargs):
        exc_info = kwargs.get("exc_info")
        exc = exc_info[1] if exc_info else None
        if is_database_outage(exc):
            _rollback(self)
            err = _error_for(self, exc)
            kwargs["exc_info"] = (type(err), err, exc.__traceback__)
            status_code = 503
        return original(self, status_code, **kwargs)

    return send_error


def install() -> bool:
    """Wrap JupyterHub's ``BaseHandler`` methods (see the module docstring); False when already installed."""
    from jupyterhub.handlers.base import BaseHandler

    if getattr(BaseHandler, "_gpuhub_db_guard", False):
        return False
    BaseHandler.get_current_user = _wrap_get_current_user(BaseHandler.get_current_user)
    BaseHandler.prepare = _wrap_prepare(BaseHandler.prepare)
    BaseHandler.send_error = _wrap_send_error(BaseHandler.send_error)
    BaseHandler._gpuhub_db_guard = True
    return True
