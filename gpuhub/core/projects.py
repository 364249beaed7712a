"""Secure project workspaces in the site config: ``projects.KEY`` and ``audit`` (see :mod:`gpuhub.core.site`).

A project is a data-governed room: its members work on its datasets (mounted read-only) in project servers
charged to its ``org``, from ``starts`` through the whole ``expires`` day in the site time zone, after accepting
its data use agreement (DUA). This module only reads and validates the YAML; who may start what is decided in
:mod:`quota.projects`, where the membership overlay the stewards keep in the database is applied.

Validated at load like the rest of the site config: every error names the key path, what was given and what is
allowed. Re-identification keys ("additional information", PIPA Art. 28-4) are never a dataset: ``kind: key`` is
refused, so a key can never be mounted next to the pseudonymised data it re-identifies.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from gpuhub.core import naming
from gpuhub.core.siteconfig_reader import SiteConfigError, _key_ok, _Reader

# The documented legal bases for processing a project's data (README: "projects"); the site config names one.
LEGAL_BASES: dict[str, str] = {
    "pipa-28-2-research": "PIPA Art. 28-2(1): pseudonymised information for scientific research, without consent",
    "pipa-28-2-statistics": "PIPA Art. 28-2(1): pseudonymised information for compiling statistics",
    "pipa-28-2-public-interest": "PIPA Art. 28-2(1): pseudonymised information for archiving in the public interest",
    "consent": "PIPA Art. 15(1)1: the data subjects consented to this use",
    "pipa-15-1-law": "PIPA Art. 15(1)2: a law specifically allows it, or it is needed to meet a legal obligation",
    "pipa-15-1-public-duty": "PIPA Art. 15(1)3: a public institution's duties under a law",
    "pipa-15-1-contract": "PIPA Art. 15(1)4: needed for a contract with the data subjects",
}
DATASET_KINDS = ("data", "key")
KEY_REFUSED = (
    "re-identification keys (PIPA Art. 28-4 'additional information') are never mounted in a project; "
    "keep them apart, with their own access control, and list only the pseudonymised data here"
)
# Host paths a dataset may never be: the host's own system folders and the Docker engine (a read-only bind of its
# socket still lets a container drive the engine).
SYSTEM_PATHS = ("/proc", "/sys", "/dev", "/run", "/var/run", "/etc", "/boot", "/root", "/var/lib/docker")
_VOLUME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}$")  # Docker's volume name rule
DEFAULT_AUDIT_RETENTION_DAYS = 730  # the PIPC minimum for the access logs of sensitive data


@dataclass(frozen=True)
class Dataset:
    """One dataset of a project, mounted read-only at ``/data/NAME`` in its project servers."""

    name: str
    source: str  # an absolute host path (bind mount) or a Docker volume name
    description: str = ""
    kind: str = "data"  # always "data": "key" is refused at load
    identifier_columns: tuple[str, ...] = ()

    @property
    def is_host_path(self) -> bool:
        return self.source.startswith("/")


@dataclass(frozen=True)
class Project:
    key: str
    display_name: str
    org: str  # charged: its caps, budget and queue apply
    stewards: tuple[str, ...]
    members: tuple[str, ...]
    members_idp_groups: tuple[str, ...]
    datasets: dict[str, Dataset]
    purpose: str
    legal_basis: str  # a key of LEGAL_BASES
    starts: date
    expires: date  # the last open day (site time zone)
    images: tuple[str, ...]
    dua_text: str
    max_response_mb: float = 5.0
    export_approvals: int = 2
    import_approvals: int = 1
    retention_days_after_expiry: int = 0
    expiry_notice_minutes: float = 30.0

    @property
    def dua_sha256(self) -> str:
        """The hash a member accepts (``accept_dua``): sha256 hex of the DUA text, UTF-8."""
        return hashlib.sha256(self.dua_text.encode("utf-8")).hexdigest()

    def opens_at(self, tz: tzinfo | str) -> datetime:
        """``starts`` at 00:00 in ``tz`` (the site time zone)."""
        return _midnight(self.starts, tz)

    def closes_at(self, tz: tzinfo | str) -> datetime:
        """The first instant the project is closed: the day after ``expires`` at 00:00 in ``tz``."""
        return _midnight(self.expires + timedelta(days=1), tz)

    def is_listed_member(self, user: str, groups: frozenset[str] | set[str] = frozenset()) -> bool:
        """Listed in ``members`` or in one of ``members_idp_groups`` (the config only; stewards are not implied)."""
        return user in self.members or bool(set(groups) & set(self.members_idp_groups))


@dataclass(frozen=True)
class AuditSettings:
    retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS  # audit rows younger than this are never deleted
    records_retention_days: int = 1095  # project records (acceptances, membership) after the project closes


def _midnight(day: date, tz: tzinfo | str) -> datetime:
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    return datetime.combine(day, time(0, 0), tzinfo=zone)


# ---------------------------------------------------------------- parsing


def _date(r: _Reader, name: str) -> date:
    where = r.key(name)
    value = r.get(name, object, allowed="a date YYYY-MM-DD in the site time zone")
    if isinstance(value, datetime):  # YAML reads 2027-01-01 12:00 as a timestamp
        raise SiteConfigError(f"{where}: {value!r} has a time of day; write the date only, YYYY-MM-DD")
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise SiteConfigError(f"{where}: expected a date YYYY-MM-DD in the site time zone, e.g. 2027-03-31; got {value!r}")


def _dataset(where: str, name: Any, spec: Any) -> Dataset:
    _key_ok(where.rsplit(".", 1)[0], name)
    if isinstance(spec, str):
        spec = {"source": spec}
    d = _Reader(spec, where)
    kind = d.get("kind", str, "data", check=lambda v: v in DATASET_KINDS, allowed="data")
    if kind == "key":
        raise SiteConfigError(f"{where}.kind: 'key' is refused: {KEY_REFUSED}")
    source = d.get("source", str, allowed="an absolute host path (/srv/data/x) or a Docker volume name")
    if source.startswith("/"):
        if any(part in ("..", ".") for part in source.split("/")) or "//" in source:
            raise SiteConfigError(
                f"{where}.source: {source!r} is not a plain absolute path; write it without '.', '..' or '//'"
            )
        plain = source.rstrip("/") or "/"
        if plain == "/" or any(plain == s or plain.startswith(s + "/") for s in SYSTEM_PATHS) or "docker.sock" in plain:
            raise SiteConfigError(
                f"{where}.source: {source!r} is the host's root, a system folder or the Docker engine; "
                "mount only the dataset's own folder (e.g. /srv/projects/KEY/NAME)"
            )
    elif not _VOLUME_RE.match(source):
        raise SiteConfigError(
            f"{where}.source: {source!r} is neither an absolute host path nor a Docker volume name; "
            "write a path starting with '/' (e.g. /srv/projects/cohort) or a volume name (letters, digits, '_.-')"
        )
    ds = Dataset(
        name=name,
        source=source,
        description=d.get("description", str, ""),
        kind=kind,
        identifier_columns=d.str_list("identifier_columns"),
    )
    d.done()
    return ds


def _dua(r: _Reader, base: Path) -> str:
    where = r.key("dua")
    allowed = "the data use agreement: its text, or {file: path relative to the site config}"
    value = r.get("dua", object, allowed=allowed)
    if isinstance(value, dict):
        f = _Reader(value, where)
        rel = f.get("file", str, allowed="a path relative to the site config's folder")
        f.done()
        path = Path(rel) if Path(rel).is_absolute() else base / rel
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise SiteConfigError(f"{where}.file: cannot read {path}: {e.strerror}; check the path") from None
        except UnicodeDecodeError:
            raise SiteConfigError(f"{where}.file: {path} is not UTF-8 text; save it as UTF-8") from None
    elif isinstance(value, str):
        text = value
    else:
        raise SiteConfigError(f"{where}: expected {allowed}, got {value!r}")
    if not text.strip():
        raise SiteConfigError(f"{where}: the data use agreement is empty; write the text members must accept")
    return text


def _at_least(low):
    return lambda v: v >= low


def _images(p: _Reader, org: str, orgs: dict, images: dict) -> tuple[str, ...]:
    """``images``: catalog keys the org may use (default: all the org's)."""
    allowed = orgs[org].images
    chosen = p.str_list("images") or tuple(allowed)
    for i, img in enumerate(chosen):
        if img not in images:
            raise SiteConfigError(
                f"{p.key('images')}[{i}]: {img!r} is not in the image catalog; catalog keys: {_names(images)}"
            )
        if img not in allowed:
            raise SiteConfigError(
                f"{p.key('images')}[{i}]: {img!r} is not allowed for organization {org!r}; allowed: {_names(allowed)}"
            )
    return chosen


def _people(p: _Reader) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(stewards, members): hub usernames; at least one steward."""
    stewards, members = p.str_list("stewards"), p.str_list("members")
    if not stewards:
        raise SiteConfigError(f"{p.key('stewards')}: list at least one data steward (the usernames who manage members)")
    naming.check_listed_usernames(
        [(f"{p.key('stewards')}[{i}]", u) for i, u in enumerate(stewards)]
        + [(f"{p.key('members')}[{i}]", u) for i, u in enumerate(members)],
        SiteConfigError,
    )
    return stewards, members


def _project(key: str, spec: Any, orgs: dict, images: dict, base: Path) -> Project:
    where = f"projects.{key}"
    p = _Reader(spec, where)
    org = p.get("org", str, allowed=f"the organization charged for the project's servers; declared: {_names(orgs)}")
    if org not in orgs:
        raise SiteConfigError(f"{where}.org: {org!r} is not an organization key; declared: {_names(orgs)}")
    project_images = _images(p, org, orgs, images)
    basis = p.get(
        "legal_basis", str, check=lambda v: v in LEGAL_BASES, allowed=" | ".join(LEGAL_BASES) + " (see the README)"
    )
    datasets_spec = p.get("datasets", dict, {}, allowed="a mapping of dataset name: {source, description}")
    datasets = {str(n): _dataset(f"{where}.datasets.{n}", n, s) for n, s in datasets_spec.items()}
    stewards, members = _people(p)
    purpose = p.get("purpose", str, allowed="the purpose of processing, in words (PIPA: stated and limited)")
    if not purpose.strip():
        raise SiteConfigError(f"{where}.purpose: write the purpose of processing; it may not be empty")
    project = Project(
        key=key,
        display_name=p.get("display_name", str, key),
        org=org,
        stewards=stewards,
        members=members,
        members_idp_groups=p.str_list("members_idp_groups"),
        datasets=datasets,
        purpose=purpose,
        legal_basis=basis,
        starts=_date(p, "starts"),
        expires=_date(p, "expires"),
        images=project_images,
        dua_text=_dua(p, base),
        max_response_mb=p.get("max_response_mb", float, 5.0, check=lambda v: v > 0, allowed="megabytes > 0"),
        export_approvals=p.get("export_approvals", int, 2, check=_at_least(1), allowed="an integer >= 1"),
        import_approvals=p.get("import_approvals", int, 1, check=_at_least(1), allowed="an integer >= 1"),
        retention_days_after_expiry=p.get(
            "retention_days_after_expiry", int, 0, check=_at_least(0), allowed="whole days >= 0"
        ),
        expiry_notice_minutes=p.get("expiry_notice_minutes", float, 30.0, check=_at_least(0), allowed="minutes >= 0"),
    )
    p.done()
    if project.expires < project.starts:
        raise SiteConfigError(
            f"{where}.expires: {project.expires} is before starts {project.starts}; "
            "the project is open from starts through the whole expires day"
        )
    return project


def parse_projects(data: Any, orgs: dict, images: dict, base: Path) -> dict[str, Project]:
    """The ``projects`` section; ``base`` is the site config's folder (``dua: {file: …}`` is relative to it)."""
    r = _Reader(data, "projects")
    out: dict[str, Project] = {}
    for key, spec in r.data.items():
        _key_ok("projects", key)
        r.seen.add(key)
        out[key] = _project(key, spec, orgs, images, base)
    return out


def parse_audit(data: Any) -> AuditSettings:
    """The ``audit`` section."""
    r = _Reader(data, "audit")
    a = AuditSettings(
        retention_days=r.get(
            "retention_days",
            int,
            DEFAULT_AUDIT_RETENTION_DAYS,
            check=lambda v: v >= DEFAULT_AUDIT_RETENTION_DAYS,
            allowed=f"whole days >= {DEFAULT_AUDIT_RETENTION_DAYS} (the minimum for sensitive data's access logs)",
        ),
        records_retention_days=r.get(
            "records_retention_days",
            int,
            1095,
            check=lambda v: v >= 1095,
            allowed="whole days >= 1095 (processing records are kept at least 3 years after the project ends)",
        ),
    )
    r.done()
    return a


def _names(items) -> str:
    items = list(items)
    return ", ".join(items) if items else "(none)"


__all__ = [
    "DATASET_KINDS",
    "LEGAL_BASES",
    "AuditSettings",
    "Dataset",
    "Project",
    "parse_audit",
    "parse_projects",
]
