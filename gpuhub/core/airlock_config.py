"""The airlock's site config: ``airlock:`` (pure; read by :mod:`gpuhub.core.site`, kept as ``Site.airlock``).

Keys (README "Site config reference"); errors name the key path, what was given and what is allowed:

- ``quarantine_dir`` (default ``STATE_DIR/airlock``): where the service keeps the files under review, on the hub's
  host, outside every container; relative paths are taken from the site config's folder.
- ``retention_days`` (default 30): a rejected, revoked or cancelled request's quarantined file is deleted this
  many days after its decision (the request's records stay).
- ``export_types`` (default csv, txt, json, png, svg, pdf, ipynb) and ``import_types`` (default py, r, ipynb,
  txt, md, csv, json, yaml, yml, toml, sql, sh): file name extensions (lower case, no dot) the type check passes.
- ``max_file_mb`` (default 16) and ``max_csv_rows`` (default 5000): the size and row checks (OpenSAFELY's rules).
- ``max_copy_mb`` (default 256): above this the service refuses to copy the file into quarantine at all.
- ``min_cell_count``, ``dominance_n``, ``dominance_k``, ``zeros_are_disclosive``: the table checks; defaults are
  ACRO's own (``safe_threshold``, ``safe_nk_n``, ``safe_nk_k``, ``zeros_are_disclosive`` in the installed
  ``acro/default.yaml``), read from the file, not copied here.
- ``export_release`` (default ``home``): how an approved export leaves quarantine: ``home`` writes it at once into
  the requester's ordinary home (``~/exports/PROJECT/NAME``); ``download`` keeps it approved until the requester
  downloads it, once, from the airlock page (a second download is 410 Gone; a steward may revoke it until then).
- ``helper_image`` (default: the first catalog image): the image of the short-lived, never-started container the
  service creates to read a file from a volume (``docker cp`` semantics); any local image will do.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from gpuhub.core.siteconfig_reader import SiteConfigError, _positive, _Reader

EXPORT_TYPES = ("csv", "txt", "json", "png", "svg", "pdf", "ipynb")
IMPORT_TYPES = ("py", "r", "ipynb", "txt", "md", "csv", "json", "yaml", "yml", "toml", "sql", "sh")
DEFAULT_RETENTION_DAYS = 30
EXPORT_RELEASES = ("home", "download")
_ACRO_KEYS = ("safe_threshold", "safe_nk_n", "safe_nk_k", "zeros_are_disclosive", "blocked_extensions")


@lru_cache(maxsize=1)
def acro_defaults() -> dict[str, Any]:
    """ACRO's risk appetite from the installed package's ``default.yaml`` (found without importing acro, which
    pulls in pandas and statsmodels: the site config loads on every hub and CLI start)."""
    spec = importlib.util.find_spec("acro")
    if spec is None or not spec.submodule_search_locations:
        raise SiteConfigError("airlock: the 'acro' package is not installed; install gpuhub's dependencies")
    path = Path(next(iter(spec.submodule_search_locations))) / "default.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    missing = [k for k in _ACRO_KEYS if k not in data]
    if missing:
        raise SiteConfigError(f"airlock: {path} lacks {', '.join(missing)}; install the acro version gpuhub pins")
    return {k: data[k] for k in _ACRO_KEYS}


def _pinned_acro_defaults() -> dict[str, Any]:
    """ACRO's defaults as :class:`AirlockSettings` writes them (tests/airlock/test_disclosure.py checks they agree)."""
    s = AirlockSettings()
    return {
        "safe_threshold": s.min_cell_count,
        "safe_nk_n": s.dominance_n,
        "safe_nk_k": s.dominance_k,
        "zeros_are_disclosive": s.zeros_are_disclosive,
        "blocked_extensions": list(s.acro_blocked_extensions),
    }


@dataclass(frozen=True)
class AirlockSettings:
    quarantine_dir: Path = Path("state/airlock")
    retention_days: int = DEFAULT_RETENTION_DAYS
    export_types: tuple[str, ...] = EXPORT_TYPES
    import_types: tuple[str, ...] = IMPORT_TYPES
    max_file_mb: float = 16.0
    max_csv_rows: int = 5000
    max_copy_mb: float = 256.0
    min_cell_count: int = 10  # acro safe_threshold
    dominance_n: int = 2  # acro safe_nk_n
    dominance_k: float = 0.9  # acro safe_nk_k
    zeros_are_disclosive: bool = True  # acro zeros_are_disclosive
    acro_blocked_extensions: tuple[str, ...] = (".svg", ".gph")  # acro blocked_extensions
    helper_image: str = ""
    export_release: str = "home"  # one of EXPORT_RELEASES

    @property
    def max_file_bytes(self) -> int:
        return int(self.max_file_mb * 1024 * 1024)

    @property
    def max_copy_bytes(self) -> int:
        return int(self.max_copy_mb * 1024 * 1024)

    def types_for(self, direction: str) -> tuple[str, ...]:
        return self.export_types if direction == "export" else self.import_types


def _types(r: _Reader, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    given = r.str_list(name) if name in r.data else default
    for i, t in enumerate(given):
        if not t or t.startswith(".") or t != t.lower() or "/" in t:
            raise SiteConfigError(
                f"{r.key(name)}[{i}]: {t!r} is not a file type; write the extension in lower case "
                "without the dot, e.g. csv"
            )
    return tuple(given)


def defaults(state_dir: Path, helper_image: str = "") -> AirlockSettings:
    """The settings with no ``airlock:`` section (ACRO's thresholds, quarantine under ``state_dir``)."""
    return parse({}, state_dir=state_dir, base=state_dir, helper_image=helper_image)


def parse(data: Any, *, state_dir: Path, base: Path, helper_image: str = "", used: bool = True) -> AirlockSettings:
    """``airlock:`` of the site config; ``helper_image``: the default image (the catalog's first).

    ``used``: the site has projects or an ``airlock:`` section. A site without either never runs the airlock, so
    it loads where ACRO is not installed (the hub image of docker-compose.yml carries no pandas/statsmodels); its
    thresholds are then the pinned ACRO version's, as written in :class:`AirlockSettings`."""
    try:
        acro = acro_defaults()
    except SiteConfigError:
        if used:
            raise
        acro = _pinned_acro_defaults()
    r = _Reader(data, "airlock")
    qdir = Path(r.get("quarantine_dir", str, str(state_dir / "airlock"), allowed="a folder on the hub's host"))
    whole = lambda v: v >= 1  # noqa: E731
    s = AirlockSettings(
        quarantine_dir=qdir if qdir.is_absolute() else (base / qdir).resolve(),
        retention_days=r.get(
            "retention_days", int, DEFAULT_RETENTION_DAYS, check=lambda v: v >= 0, allowed="a whole number of days >= 0"
        ),
        export_types=_types(r, "export_types", EXPORT_TYPES),
        import_types=_types(r, "import_types", IMPORT_TYPES),
        max_file_mb=r.get("max_file_mb", float, 16.0, check=_positive, allowed="a size in MB > 0"),
        max_csv_rows=r.get("max_csv_rows", int, 5000, check=whole, allowed="a whole number >= 1"),
        max_copy_mb=r.get("max_copy_mb", float, 256.0, check=_positive, allowed="a size in MB > 0"),
        min_cell_count=r.get(
            "min_cell_count",
            int,
            int(acro["safe_threshold"]),
            check=whole,
            allowed="a whole number >= 1 (ACRO's safe_threshold)",
        ),
        dominance_n=r.get(
            "dominance_n", int, int(acro["safe_nk_n"]), check=whole, allowed="a whole number >= 1 (ACRO's safe_nk_n)"
        ),
        dominance_k=r.get(
            "dominance_k",
            float,
            float(acro["safe_nk_k"]),
            check=lambda v: 0 < v <= 1,
            allowed="a share in (0, 1] (ACRO's safe_nk_k)",
        ),
        zeros_are_disclosive=r.get("zeros_are_disclosive", bool, bool(acro["zeros_are_disclosive"])),
        acro_blocked_extensions=tuple(str(e).lower() for e in acro["blocked_extensions"]),
        helper_image=r.get("helper_image", str, helper_image, allowed="a local Docker image reference"),
        export_release=r.get(
            "export_release",
            str,
            "home",
            check=lambda v: v in EXPORT_RELEASES,
            allowed="'home' (into ~/exports/PROJECT/) or 'download' (a one-time download from the airlock page)",
        ),
    )
    if s.max_copy_mb < s.max_file_mb:
        raise SiteConfigError(
            f"airlock.max_copy_mb: {s.max_copy_mb:g} is below max_file_mb {s.max_file_mb:g}; "
            "the service must be able to copy a file it then reports as too large"
        )
    r.done()
    return s
