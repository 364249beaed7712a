"""The spawn request contract: ``user_options`` from the HTML form and the REST API.

``{"image": <catalog key>, "gpus": <int >= 0>, "gpu_model": <model key, optional>,
"org": <org key, optional when the user has exactly one>}``, and for a server of a secure project (the named
server KEY) ``"project": KEY`` and ``"accept_dua": <sha256 hex of the project's current DUA text>``
(:func:`project_option`; admitted by :func:`quota.projects.check_project`, see :mod:`gpuhub.hub.projects`).

This module only reads the shape: :func:`parse_options` refuses unknown keys, values of the wrong
type, overlong strings and negative counts, and turns the rest into one
:class:`quota.policy.AllocationRequest`. Whether the request may be granted (membership, catalog,
models, caps, budgets, free devices) is decided by :mod:`quota.policy` alone, for the form and the
REST API alike; :func:`validate_options` is both steps in one call. Refusals are
:class:`quota.policy.Refusal` with one rule id from the policy's table.
"""

from __future__ import annotations

import re

from quota.policy import MAX_STRING, AllocationRequest, Refusal, Rule, check, check_gpus

ALLOWED_KEYS = ("image", "gpus", "gpu_model", "org", "project", "accept_dua")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_STRING_RULES = {  # option -> (wrong type, too long)
    "image": (Rule.IMAGE_TYPE, Rule.IMAGE_LENGTH),
    "org": (Rule.ORG_TYPE, Rule.ORG_LENGTH),
    "gpu_model": (Rule.GPU_MODEL_TYPE, Rule.GPU_MODEL_LENGTH),
}


def _string(options: dict, key: str) -> str | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    wrong_type, too_long = _STRING_RULES[key]
    if not isinstance(value, str):
        raise wrong_type.refuse(type=type(value).__name__)
    if len(value) > MAX_STRING:
        raise too_long.refuse(limit=MAX_STRING)
    return value


def project_option(options: dict | None) -> tuple[str | None, str | None]:
    """(project key, the DUA hash offered) of ``options``; (None, None) for an ordinary server. A project that is
    not a string is refused as unknown, an ``accept_dua`` that is not a sha256 hex as a mismatch (both 400)."""
    options = options if isinstance(options, dict) else {}
    key, offered = options.get("project"), options.get("accept_dua")
    if key is None or key == "":
        return None, None
    if not isinstance(key, str) or len(key) > MAX_STRING:
        raise Rule.PROJECT_UNKNOWN.refuse(project=str(key)[:40], yours="(name one of your projects, a string)")
    if offered is None or offered == "":
        return key, None
    if not isinstance(offered, str) or not _SHA256.match(offered.lower()):
        raise Rule.PROJECT_DUA_MISMATCH.refuse(project=key)
    return key, offered.lower()


def _gpu_count(value) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or len(text) > 4:
            raise Rule.GPUS_TYPE.refuse(value=repr(value[:40]))
        return int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    bad = check_gpus(value)
    if bad is not None:
        raise bad
    return value


def parse_options(
    options: dict | None, *, user: str, server_name: str = "", groups: frozenset[str] = frozenset()
) -> AllocationRequest:
    """The request ``options`` describe, or raise :class:`Refusal` for a malformed one (always 400)."""
    options = dict(options or {})
    unknown = sorted(str(k) for k in options if k not in ALLOWED_KEYS)
    if unknown:
        raise Rule.UNKNOWN_OPTION.refuse(option=unknown[0][:40], allowed=", ".join(ALLOWED_KEYS))
    image = _string(options, "image")
    gpus = _gpu_count(options.get("gpus"))
    model = _string(options, "gpu_model")
    org = _string(options, "org")
    project, _ = project_option(options)
    return AllocationRequest(
        user=user,
        server_name=server_name,
        org=org,
        image=image,
        gpus=gpus,
        gpu_model=model,
        groups=frozenset(groups),
        project=project,
    )


def validate_options(
    options: dict | None, site, *, user: str, server_name: str = "", groups: frozenset[str] = frozenset()
) -> AllocationRequest:
    """:func:`parse_options`, then :func:`quota.policy.check`: the request with its organization and image
    resolved, or raise the :class:`Refusal` of the first rule it breaks that needs only the site config."""
    checked = check(site, parse_options(options, user=user, server_name=server_name, groups=groups))
    if isinstance(checked, Refusal):
        raise checked
    return checked


def options_from_form(formdata: dict[str, list[str]]) -> dict:
    """Turn the HTML form's fields into the ``user_options`` dict, without judging them; the "Wait in line"
    checkbox becomes ``"queue"`` (a bool; left out when the form had no such field: the default, true)."""

    def first(key):
        values = formdata.get(key) or [""]
        return values[0]

    options = {"image": first("image"), "gpus": first("gpus") or "0"}
    if first("gpu_model"):
        options["gpu_model"] = first("gpu_model")
    if first("project"):  # the project picker: its organization is the project's, so 'org' is left out
        options["project"] = first("project")
        if first("accept_dua"):
            options["accept_dua"] = first("accept_dua")
    elif first("org"):
        options["org"] = first("org")
    if formdata.get("queue"):  # the form's hidden queue=0, then its checkbox's 1 when checked (gpuhub_form.html)
        options["queue"] = "1" in formdata["queue"]  # "queue" is read by gpuhub.hub.queue_wait.queue_wanted
    return options
