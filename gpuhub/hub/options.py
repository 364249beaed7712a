"""The spawn request contract: ``user_options`` from the HTML form and the REST API.

``{"image": <catalog key>, "gpus": <int >= 0>, "gpu_model": <model key, optional>,
"org": <org key, optional when the user has exactly one>}``

Both paths go through :func:`validate_options`, so a tampered REST body gets exactly the
checks the form gets. Quota rules that need the database (free devices, caps, budgets)
live in ``quota/``; this module checks what the request itself can break.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuhub.core.site import Site

ALLOWED_KEYS = ("image", "gpus", "gpu_model", "org")
MAX_STRING = 200


class OptionsError(Exception):
    """A spawn request that cannot be honoured; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, rule: str, message: str):
        super().__init__(message)
        self.status = status
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class SpawnRequest:
    """A validated spawn request."""

    user: str
    server_name: str
    image: str  # catalog key
    gpus: int
    gpu_model: str | None
    org: str | None

    @property
    def server_key(self) -> str:
        return f"{self.user}/{self.server_name}"


def _string(options: dict, key: str) -> str | None:
    value = options.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise OptionsError(400, f"{key}-type", f"option {key!r} must be a string, got {type(value).__name__}")
    if len(value) > MAX_STRING:
        raise OptionsError(400, f"{key}-length", f"option {key!r} is longer than {MAX_STRING} characters")
    return value


def _gpu_count(value) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise OptionsError(400, "gpus-type", f"option 'gpus' must be a whole number >= 0, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit() or len(text) > 4:
            raise OptionsError(400, "gpus-type", f"option 'gpus' must be a whole number >= 0, got {value[:40]!r}")
        return int(text)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise OptionsError(400, "gpus-type", f"option 'gpus' must be a whole number >= 0, got {value!r}")
    if value < 0:
        raise OptionsError(400, "gpus-negative", f"option 'gpus' must be >= 0, got {value}")
    return value


def validate_options(
    options: dict | None,
    site: Site,
    *,
    user: str,
    server_name: str = "",
    groups: frozenset[str] = frozenset(),
    default_image: str | None = None,
) -> SpawnRequest:
    """Check a spawn request against the site config; raise :class:`OptionsError` on the first problem."""
    options = dict(options or {})
    unknown = sorted(str(k) for k in options if k not in ALLOWED_KEYS)
    if unknown:
        raise OptionsError(
            400, "unknown-option",
            f"unknown spawn option {unknown[0][:40]!r}; allowed options: {', '.join(ALLOWED_KEYS)}",
        )

    image = _string(options, "image") or default_image or next(iter(site.images))
    if image not in site.images:
        raise OptionsError(
            400, "unknown-image",
            f"image {image[:40]!r} is not in the catalog; choose one of: {', '.join(site.images)}",
        )

    gpus = _gpu_count(options.get("gpus"))
    model = _string(options, "gpu_model")
    if model is not None and model not in site.gpus.models:
        raise OptionsError(
            400, "unknown-gpu-model",
            f"GPU model {model[:40]!r} is not offered here; models: {', '.join(site.gpus.models) or '(none)'}",
        )

    orgs = site.orgs_of(user, groups)
    org = _string(options, "org")
    if org is not None:
        if org not in site.organizations:
            raise OptionsError(
                400, "unknown-org",
                f"organization {org[:40]!r} does not exist; yours: {', '.join(orgs) or '(none)'}",
            )
        if org not in orgs:
            raise OptionsError(
                403, "not-a-member",
                f"{user} is not a member of organization {org}; yours: {', '.join(orgs) or '(none)'}; "
                "ask the organization's operator to add you",
            )
    elif len(orgs) == 1:
        org = orgs[0]
    elif len(orgs) > 1:
        raise OptionsError(
            400, "org-required",
            f"{user} belongs to several organizations ({', '.join(orgs)}); choose which one to charge with 'org'",
        )

    if org is None:
        if gpus > 0:
            raise OptionsError(
                403, "no-organization",
                f"{user} is in no organization, so GPU servers cannot be charged; ask an operator to add you "
                "to an organization, or start with 0 GPUs",
            )
        if not site.hub.allow_cpu_without_org:
            raise OptionsError(
                403, "no-organization",
                f"{user} is in no organization and this site allows no servers without one "
                "(hub.allow_cpu_without_org is false); ask an operator to add you",
            )
    else:
        spec = site.organizations[org]
        if image not in spec.images:
            raise OptionsError(
                403, "image-not-allowed",
                f"organization {org} may not use image {image}; allowed: {', '.join(spec.images)}",
            )
        if gpus > spec.max_gpus_per_server:
            raise OptionsError(
                400, "max-gpus-per-server",
                f"{gpus} GPUs requested but organization {org} allows at most {spec.max_gpus_per_server} "
                "per server (max_gpus_per_server); request fewer",
            )
    if gpus > 0 and not site.images[image].gpu:
        raise OptionsError(400, "cpu-only-image", f"image {image} is CPU-only; request 0 GPUs or a GPU image")
    return SpawnRequest(user=user, server_name=server_name, image=image, gpus=gpus, gpu_model=model, org=org)


def options_from_form(formdata: dict[str, list[str]]) -> dict:
    """Turn the HTML form's fields into the ``user_options`` dict, without judging them."""

    def first(key):
        values = formdata.get(key) or [""]
        return values[0]

    options = {"image": first("image"), "gpus": first("gpus") or "0"}
    if first("gpu_model"):
        options["gpu_model"] = first("gpu_model")
    if first("org"):
        options["org"] = first("org")
    return options
