"""Reading one YAML mapping with errors that name the key path (used by :mod:`gpuhub.core.site`)."""

from __future__ import annotations

import re
from typing import Any

KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,38}$")


class SiteConfigError(ValueError):
    """The site config is invalid; the message says where and how to fix it."""


class _Reader:
    """Reads one mapping, remembering its key path for error messages."""

    def __init__(self, data: Any, path: str):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SiteConfigError(f"{path or '<top level>'}: expected a mapping, got {data!r}")
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def get(self, name: str, kind, default=..., *, check=None, allowed: str = ""):
        self.seen.add(name)
        where = self.key(name)
        if name not in self.data or self.data[name] is None and default is not ...:
            if default is ...:
                raise SiteConfigError(f"{where}: required key is missing ({allowed or kind.__name__})")
            return default
        value = self.data[name]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
            want = allowed or getattr(kind, "__name__", str(kind))
            raise SiteConfigError(f"{where}: expected {want}, got {value!r}")
        if check is not None and not check(value):
            raise SiteConfigError(f"{where}: {value!r} is not allowed; allowed: {allowed}")
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        return self.get(name, str, default, check=lambda v: v in choices, allowed=" | ".join(choices))

    def str_list(self, name: str) -> tuple[str, ...]:
        value = self.get(name, list, [], allowed="a list of strings")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise SiteConfigError(f"{self.key(name)}[{i}]: expected a string, got {item!r}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            known = ", ".join(sorted(self.seen))
            raise SiteConfigError(f"{self.key(unknown[0])}: unknown key; allowed here: {known}")


def _key_ok(section: str, key: Any) -> str:
    if not isinstance(key, str) or not KEY_RE.match(key):
        raise SiteConfigError(
            f"{section}.{key}: invalid key {key!r}; use lowercase letters, digits and '-', "
            "starting with a letter or digit, at most 39 characters"
        )
    return key


def _nonneg(v) -> bool:
    return v >= 0


def _positive(v) -> bool:
    return v > 0
