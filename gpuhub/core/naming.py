"""Names: hub usernames from identity-provider claims, and Docker container names.

Pure functions, no configuration, no I/O. Everything that turns an identity or a server into a
name goes through here, so the guarantees below hold in one place.

Alphabet
    A *safe name* is 1-32 characters of ``[a-z0-9]`` with single separators ``.``, ``_`` or
    ``-`` between them (no separator first, last or twice in a row). Safe names are valid
    JupyterHub usernames, URL path segments without escaping, and Docker container/volume name
    components.

:func:`normalize_username` (claim value -> hub username)
    * A claim that already is a safe name is returned unchanged: ``alice`` -> ``alice``.
    * Anything else is *escaped*: a readable, lossy prefix, then ``--``, then 10 characters of
      base32(SHA-256(claim)). ``Alice`` -> ``alice--<hash>``, ``김민수`` -> ``gimminsu--<hash>``
      (Revised Romanization of the Hangul), ``Kim.Min-Su@GIST.ac.kr`` ->
      ``kim.min-su-gist--<hash>``.
    * Injective: safe names never contain ``--`` and escaped names always do, so a safe name
      never equals an escaped one; two escaped names are equal only if their 50-bit hashes
      (and prefixes) collide. So ``Alice`` and ``alice`` are two different users; they are the
      same hub user only if the identity provider sends the same claim value, i.e. it says so.
      (The authenticator additionally binds a hub username to the IdP's ``sub``; see
      :mod:`gpuhub.hub.auth`.)
    * The claim is first put in Unicode NFC, so canonically equivalent spellings of the same
      text (precomposed vs. decomposed Hangul, for instance) are the same username. No case
      folding, no NFKC: ``Ａlice`` (full-width) and ``Alice`` stay distinct.
    * Deterministic and stable across releases: changing this function renames users.
    * The empty claim is refused (ValueError).

:func:`container_name`
    ``gpuhub-<user>`` for the default server, ``gpuhub-<user>__<server>`` for a named server
    (``prefix=`` replaces ``gpuhub``, e.g. with the hub instance name; keep it fixed per hub).
    Neither part can contain ``__`` (safe names have no doubled separator, escaped names only
    ``--``), so the split is unambiguous and ``user--foo`` (escaped to ``user-foo--<hash>``) never
    meets user ``user`` with server ``foo`` (``gpuhub-user__foo``). Hub usernames produced by
    :func:`normalize_username` are used as they are; any other string is escaped first. Names are
    at most 63 characters with the default prefix (longer prefixes add their extra length).

Home volumes are not named here, on purpose
    DockerSpawner names them from the ``volumes`` template ``{prefix}-home-{username}``
    (:func:`gpuhub.hub.hubconfig.apply_spawner`) with its own escaping of the username (since
    DockerSpawner 12: ``[a-z0-9]`` kept, any other character as ``-`` + hex, so ``kim.min-su`` ->
    ``gpuhub-home-kim-2emin-2dsu``). That is what every existing user's home volume is called. A
    name built from the safe name instead would differ for every username with a separator, which
    includes every escaped one (``--``), so switching would give those users an empty home and
    leave their data behind in the old volume. Containers are disposable, so their names can be
    ours; volumes keep DockerSpawner's.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata

USERNAME_MAX_LENGTH = 32
SERVER_NAME_MAX_LENGTH = 22
HASH_LENGTH = 10
ESCAPE_MARK = "--"
SERVER_SEPARATOR = "__"
DEFAULT_PREFIX = "gpuhub"
_PREFIX_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*\Z")

_SAFE = r"[a-z0-9]+(?:[._-][a-z0-9]+)*"
_SAFE_RE = re.compile(rf"{_SAFE}\Z")
_ESCAPED_RE = re.compile(rf"(?:{_SAFE})--[a-z2-7]{{{HASH_LENGTH}}}\Z")
_SEPARATOR_RUN_RE = re.compile(r"[._-]{2,}")

#: Regex (for ``Authenticator.username_pattern``) matching exactly the safe names.
SAFE_USERNAME_PATTERN = rf"^(?=.{{1,{USERNAME_MAX_LENGTH}}}$){_SAFE}$"
#: Regex matching every value :func:`normalize_username` can return (safe or escaped).
USERNAME_PATTERN = rf"^(?=.{{1,{USERNAME_MAX_LENGTH}}}$)(?:{_SAFE})(?:--[a-z2-7]{{{HASH_LENGTH}}})?$"

# Revised Romanization of Korean, letter by letter (no sound-change rules): enough for a
# readable prefix; the hash carries the identity.
_INITIALS = ["g", "kk", "n", "d", "tt", "r", "m", "b", "pp", "s", "ss", "-", "j", "jj", "ch", "k", "t", "p", "h"]
_MEDIALS = [
    "a",
    "ae",
    "ya",
    "yae",
    "eo",
    "e",
    "yeo",
    "ye",
    "o",
    "wa",
    "wae",
    "oe",
    "yo",
    "u",
    "wo",
    "we",
    "wi",
    "yu",
    "eu",
    "ui",
    "i",
]
_FINALS = [
    "",
    "k",
    "k",
    "k",
    "n",
    "n",
    "n",
    "t",
    "l",
    "k",
    "m",
    "l",
    "l",
    "l",
    "p",
    "l",
    "m",
    "p",
    "p",
    "t",
    "t",
    "ng",
    "t",
    "t",
    "k",
    "t",
    "p",
    "t",
]


def _romanize_hangul(ch: str) -> str | None:
    code = ord(ch) - 0xAC00
    if not 0 <= code < 11172:
        return None
    initial = _INITIALS[code // 588]
    return ("" if initial == "-" else initial) + _MEDIALS[(code % 588) // 28] + _FINALS[code % 28]


def _ascii_fold(text: str) -> str:
    """Lowercase ASCII approximation: Hangul romanized, accents dropped, the rest '-'."""
    out = []
    for ch in text:
        roman = _romanize_hangul(ch)
        if roman is not None:
            out.append(roman)
            continue
        for part in unicodedata.normalize("NFKD", ch):
            if unicodedata.combining(part):
                continue
            part = part.lower()
            out.append(part if part.isascii() and (part.isalnum() or part in "._-") else "-")
    return "".join(out)


def _readable_prefix(text: str, room: int) -> str:
    """A safe name of at most ``room`` characters that resembles ``text`` (may be lossy)."""
    local, at, domain = text.rpartition("@")
    if at and local and domain:
        # an email: local part plus the first label of the domain (kim.min-su-gist)
        text = f"{local}-{domain.split('.')[0]}"
    folded = _SEPARATOR_RUN_RE.sub("-", _ascii_fold(text)).strip("._-")[:room].rstrip("._-")
    return folded or "u"


def _digest(text: str) -> str:
    raw = hashlib.sha256(text.encode("utf-8")).digest()
    return base64.b32encode(raw).decode("ascii").lower()[:HASH_LENGTH]


def _slug(text: str, max_length: int) -> str:
    if len(text) <= max_length and _SAFE_RE.match(text):
        return text
    room = max_length - len(ESCAPE_MARK) - HASH_LENGTH
    return f"{_readable_prefix(text, room)}{ESCAPE_MARK}{_digest(text)}"


def is_safe_name(name: str) -> bool:
    """True for a safe name (see the module docstring) of at most 32 characters."""
    return isinstance(name, str) and len(name) <= USERNAME_MAX_LENGTH and bool(_SAFE_RE.match(name))


def is_normalized_username(name: str) -> bool:
    """True if ``name`` has the shape of a :func:`normalize_username` result (safe or escaped)."""
    return (
        isinstance(name, str)
        and len(name) <= USERNAME_MAX_LENGTH
        and bool(_SAFE_RE.match(name) or _ESCAPED_RE.match(name))
    )


def check_listed_usernames(where, error: type[Exception]) -> None:
    """Raise ``error`` for the first ``(key path, name)`` whose name the hub could never have."""
    for path, name in where:
        if not is_normalized_username(name):
            raise error(
                f"{path}: {name!r} is not a gpuhub username; use the name the hub shows "
                f"(lowercase letters, digits and single '.', '_' or '-', at most {USERNAME_MAX_LENGTH} "
                f"characters; e.g. {normalize_username(name or '?')!r})"
            )


def normalize_username(claim: str) -> str:
    """The hub username for an identity-provider claim value (injective; see the module doc)."""
    if not isinstance(claim, str):
        raise TypeError(f"a username claim must be a string, got {type(claim).__name__}")
    text = unicodedata.normalize("NFC", claim)
    if not text:
        raise ValueError("an empty username cannot be normalized")
    return _slug(text, USERNAME_MAX_LENGTH)


def _user_part(user: str) -> str:
    return user if is_normalized_username(user) else normalize_username(user)


def server_slug(server_name: str) -> str:
    """Docker-safe, injective form of a named server's name (at most 22 characters)."""
    if not server_name:
        raise ValueError("the default server has no server slug; pass server_name='' to container_name")
    return _slug(unicodedata.normalize("NFC", server_name), SERVER_NAME_MAX_LENGTH)


def is_name_prefix(prefix: str) -> bool:
    """A valid ``prefix`` for :func:`container_name` (the hub instance)."""
    return isinstance(prefix, str) and bool(_PREFIX_RE.match(prefix))


def _check_prefix(prefix: str) -> str:
    if not is_name_prefix(prefix):
        raise ValueError(f"name prefix {prefix!r}: use lowercase letters, digits and single '-'")
    return prefix


def container_name(user: str, server_name: str = "", *, prefix: str = DEFAULT_PREFIX) -> str:
    """Container name of ``user``'s server (``server_name`` "" = the default server).

    ``prefix`` (default "gpuhub"; e.g. the hub instance) must be the same for every name one
    hub makes; names are injective for a fixed prefix.
    """
    name = f"{_check_prefix(prefix)}-{_user_part(user)}"
    if server_name:
        name += SERVER_SEPARATOR + server_slug(server_name)
    return name
