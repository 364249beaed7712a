"""The airlock's automatic disclosure checks (pure: a file's bytes + the settings -> findings).

Run by :mod:`quota.airlock_store` on the quarantined copy, before any human sees the request. A finding is
``{rule, passed, detail, location}``: one passed finding per rule that found nothing, one failed finding per hit
(at most :data:`MAX_HITS` per rule, then one that counts the rest). A failed check rejects nothing by itself: the
stewards see it, and approving over it needs a written reason (:mod:`quota.airlock`).

Rules (``rule`` ids are stable; the README lists them):

- ``file-type``: the extension is in ``airlock.export_types`` (or ``import_types``); ``file-content``: the bytes
  are what the extension says (PNG/PDF signature, UTF-8 text, JSON that parses, an ``<svg`` element).
- ``acro-blocked-extension`` (exports): ACRO's own ``blocked_extensions`` (``acro/default.yaml``: .svg, .gph),
  tested with ``acro.utils.is_blocked_extension``. svg stays allowed by the type list (issue 14), so a figure in
  svg always comes to the reviewers with this finding: its text can carry the data points.
- ``file-size`` (<= ``max_file_mb``), ``csv-rows`` (data rows <= ``max_csv_rows``).
- ``notebook-outputs``: a notebook's code cell with stored outputs (clear them before asking).
- ``cell-count`` (CSV): a count cell below ``min_cell_count``. ACRO checks tables it builds itself from row-level
  data (its pandas wrappers); an exported CSV is already aggregated, so this module builds ACRO's evidence from the
  file (:class:`acro.sdcchecks.SDCEvidence`, ``count_table`` = the count columns) and asks ACRO's
  ``SDCChecks.check_min_threshold`` with ACRO's risk appetite. Which columns hold counts is ours: a numeric column
  whose values are all whole numbers >= 0, unless its header names a magnitude (:data:`MAGNITUDE_WORDS`).
  Zeros count as disclosive as in ACRO, unless ``zeros_are_disclosive`` is false (then zeros are left out, ours).
- ``dominance`` (CSV): ACRO's ``SDCChecks.check_nk_dominance`` (the n largest contributions make up >= k of the
  total) with ``sum``/``top_n_sum``/``num_negative`` computed per magnitude column (numeric and not a count
  column), its rows taken as the contributions to the column's total; rows labelled as totals are left out (ours).
- ``rrn``: a Korean resident registration number: YYMMDD-SNNNNNN with a real birth date and a sex digit 1-8.
  Written with the hyphen it is flagged whatever its last digit (numbers issued since October 2020 carry no
  check digit); 13 bare digits only when the check digit is right (fewer false positives on other long numbers).
- ``phone``: a Korean mobile number (010/011/016/017/018/019, bare or separated) or a landline with separators
  (02, 031-064, 070; +82 forms too). ``email``: an e-mail address.
- ``identifier-value``: a value of a dataset column the project marks in ``identifier_columns`` (values shorter
  than :data:`MIN_IDENTIFIER_LENGTH` characters are not matched: they would match everywhere).

Values in the findings are masked (the reviewers open the file itself to see them).
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import date
from functools import lru_cache
from types import SimpleNamespace

import pandas as pd
from acro.sdcchecks import SDCChecks, SDCEvidence
from acro.utils import is_blocked_extension

from gpuhub.core.airlock_config import AirlockSettings

MAX_HITS = 20  # failed findings per rule; the rest are counted in one more
MIN_IDENTIFIER_LENGTH = 4
MAGNITUDE_WORDS = re.compile(
    r"(sum|total|amount|cost|price|revenue|income|salary|pay|value|mean|avg|average|median|"
    r"금액|비용|소득|매출|급여|합계|평균|중앙값)",
    re.IGNORECASE,
)
TOTAL_LABEL = re.compile(r"^\s*(total|all|overall|sum|합계|총계|계|전체)\s*$", re.IGNORECASE)
TEXT_TYPES = frozenset({"csv", "txt", "json", "svg", "ipynb", "py", "r", "md", "yaml", "yml", "toml", "sql", "sh"})

# no lookarounds in the patterns themselves (they would cost a check at every character of a 16 MB file):
# the digit boundaries are tested on each match (_bounded)
RRN = re.compile(r"[0-9]{6}-?[1-8][0-9]{6}")
RRN_WEIGHTS = (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5)
PHONE = re.compile(
    r"(?:\+82[-. ]?|0)1[016789](?:[-. ]?\d{3,4}[-. ]?\d{4})"  # mobile, bare or separated
    r"|(?:\+82[-. ]?|0)(?:2|[3-6][1-5]|70)[-. )]\d{3,4}[-. ]\d{4}"  # landline: separators required
)
EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
TOKEN_BREAKS = str.maketrans(dict.fromkeys(",;:\"'()[]{}<>|=", " "))  # a token: what str.split() leaves after


@dataclass(frozen=True)
class Finding:
    rule: str
    passed: bool
    detail: str
    location: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def extension(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower() if "." in name.strip(".") else ""


def mask(value: str) -> str:
    """``9001011234567`` -> ``90*********67``: enough to find it in the file, not enough to copy it out."""
    v = value.strip()
    if len(v) <= 4:
        return "*" * len(v)
    keep = 2 if len(v) < 12 else 3
    return v[:keep] + "*" * (len(v) - 2 * keep) + v[-keep:]


# ---------------------------------------------------------------- identifiers in text


def rrn_checksum_ok(digits: str) -> bool:
    total = sum(int(d) * w for d, w in zip(digits[:12], RRN_WEIGHTS, strict=True))
    return (11 - total % 11) % 10 == int(digits[12])


def _rrn_hit(m: re.Match) -> str | None:
    """Why the match is an RRN, or None when it is not one."""
    text = m[0]
    hyphen = "-" in text
    digits = text.replace("-", "")
    yy, mm, dd, sex = int(digits[0:2]), int(digits[2:4]), int(digits[4:6]), digits[6]
    century = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}[sex]
    try:
        date(century + yy, mm, dd)
    except ValueError:
        return None
    checksum = rrn_checksum_ok(digits)
    if not hyphen and not checksum:
        return None
    return "check digit valid" if checksum else "written as an RRN (no valid check digit: issued since 2020?)"


def _bounded(text: str, m: re.Match, before: str = "") -> bool:
    """The match is not part of a longer number (nor preceded by one of ``before``)."""
    a, b = m.start(), m.end()
    return not (a and (text[a - 1].isdigit() or text[a - 1] in before)) and not (b < len(text) and text[b].isdigit())


def _email_spans(text: str) -> Iterator[re.Match]:
    """E-mail matches, looking only at the lines that have an '@'."""
    at, seen_end = text.find("@"), -1
    while at != -1:
        start, end = text.rfind("\n", 0, at) + 1, text.find("\n", at)
        end = len(text) if end == -1 else end
        if start > seen_end:
            yield from EMAIL.finditer(text, start, end)
            seen_end = end
        at = text.find("@", end)


def _scan(text: str) -> Iterator[tuple[str, int, str, str]]:
    """(rule, offset, matched text, why) for every RRN, phone number and e-mail address in ``text``."""
    for m in RRN.finditer(text):
        why = _rrn_hit(m) if _bounded(text, m) else None
        if why:
            yield "rrn", m.start(), m[0], f"resident registration number {mask(m[0])} ({why})"
    for m in PHONE.finditer(text):
        if _bounded(text, m, "+"):
            yield "phone", m.start(), m[0], f"Korean phone number {mask(m[0])}"
    for m in _email_spans(text):
        yield "email", m.start(), m[0], f"e-mail address {mask(m[0])}"


def _identifier_hits(tokens: Iterable[str], identifiers: Mapping[str, frozenset[str]]) -> Iterator[tuple[str, str]]:
    for tok in tokens:
        if len(tok) < MIN_IDENTIFIER_LENGTH:
            continue
        for label, values in identifiers.items():
            if tok in values:
                yield label, tok


def _any_identifier(tokens: list[str], identifiers: Mapping[str, frozenset[str]]) -> bool:
    return any(not values.isdisjoint(tokens) for values in identifiers.values())  # C loop over the tokens


class _Collector:
    """Failed findings per rule, capped; :meth:`close` adds the passes and the 'N more' lines."""

    def __init__(self, rules: Iterable[str], passes: Mapping[str, str]):
        self.rules, self.passes = list(rules), passes
        self.hits: dict[str, list[Finding]] = {r: [] for r in self.rules}
        self.extra: dict[str, int] = dict.fromkeys(self.rules, 0)

    def add(self, rule: str, detail: str, location: str | None) -> None:
        if len(self.hits[rule]) < MAX_HITS:
            self.hits[rule].append(Finding(rule, False, detail, location))
        else:
            self.extra[rule] += 1

    def close(self) -> list[Finding]:
        out: list[Finding] = []
        for rule in self.rules:
            if not self.hits[rule]:
                out.append(Finding(rule, True, self.passes[rule]))
                continue
            out.extend(self.hits[rule])
            if self.extra[rule]:
                out.append(Finding(rule, False, f"{self.extra[rule]} more like these (first {MAX_HITS} shown)"))
        return out


def _line_of(newlines: list[int], offset: int) -> int:
    return bisect.bisect_right(newlines, offset - 1) + 1 if newlines else 1


def _scan_text(text: str, c: _Collector, identifiers, where: str = "") -> None:
    """Line-located hits in plain text; ``where`` prefixes the location (a notebook cell)."""
    newlines: list[int] | None = None
    for rule, off, _, why in _scan(text):
        if newlines is None:
            newlines = [i for i, ch in enumerate(text) if ch == "\n"]
        c.add(rule, why, f"{where}line {_line_of(newlines, off)}")
    if identifiers and _any_identifier(text.translate(TOKEN_BREAKS).split(), identifiers):
        for n, line in enumerate(text.split("\n"), 1):
            for label, tok in _identifier_hits(line.translate(TOKEN_BREAKS).split(), identifiers):
                c.add("identifier-value", f"value {mask(tok)} of identifier column {label}", f"{where}line {n}")


def _scan_rows(header: list[str], rows: list[list[str]], c: _Collector, identifiers) -> None:
    """Row/column-located hits in a parsed CSV (header row is line 1)."""
    cols = [*header]
    for r, row in enumerate([header, *rows], 1):
        joined = "\x1f".join(row)
        hits = list(_scan(joined))
        if hits:
            starts = [0]
            for cell in row[:-1]:
                starts.append(starts[-1] + len(cell) + 1)
            for rule, off, _, why in hits:
                ci = bisect.bisect_right(starts, off) - 1
                c.add(rule, why, f"line {r}, column {_col(cols, ci)}")
        if identifiers:
            for ci, cell in enumerate(row):
                for label, tok in _identifier_hits([cell.strip()], identifiers):
                    c.add(
                        "identifier-value",
                        f"value {mask(tok)} of identifier column {label}",
                        f"line {r}, column {_col(cols, ci)}",
                    )


def _col(header: list[str], i: int) -> str:
    return f"{header[i]!r}" if i < len(header) and header[i].strip() else f"#{i + 1}"


# ---------------------------------------------------------------- tables (ACRO)


@lru_cache(maxsize=8)
def _acro_checks(threshold: int, n: int, k: float, zeros: bool) -> SDCChecks:
    risk = {
        "safe_threshold": threshold,
        "safe_nk_n": n,
        "safe_nk_k": k,
        "zeros_are_disclosive": zeros,
        "safe_pratio_p": 0.1,
        "safe_dof_threshold": 10,
        "check_missing_values": False,
    }
    return SDCChecks(risk)


def _number(cell: str) -> float | None:
    s = cell.strip().replace(",", "") if re.fullmatch(r"\s*-?\d{1,3}(,\d{3})+(\.\d+)?\s*", cell) else cell.strip()
    try:
        v = float(s)
    except ValueError:
        return None
    return v if v == v and abs(v) != float("inf") else None


def _numeric_columns(header: list[str], rows: list[list[str]]) -> dict[int, list[float | None]]:
    width = max([len(header), *(len(r) for r in rows)]) if rows else len(header)
    out: dict[int, list[float | None]] = {}
    for ci in range(width):
        values, ok, any_value = [], True, False
        for row in rows:
            cell = row[ci] if ci < len(row) else ""
            if not cell.strip():
                values.append(None)
                continue
            v = _number(cell)
            if v is None:
                ok = False
                break
            values.append(v)
            any_value = True
        if ok and any_value:
            out[ci] = values
    return out


def _table_checks(header: list[str], rows: list[list[str]], s: AirlockSettings) -> list[Finding]:
    checks = _acro_checks(s.min_cell_count, s.dominance_n, s.dominance_k, s.zeros_are_disclosive)
    numeric = _numeric_columns(header, rows)
    counts = {
        ci: v
        for ci, v in numeric.items()
        if all(x is None or (x >= 0 and x == int(x)) for x in v)
        and not (ci < len(header) and MAGNITUDE_WORDS.search(header[ci]))
    }
    magnitudes = {ci: v for ci, v in numeric.items() if ci not in counts}
    c = _Collector(
        ["cell-count", "dominance"],
        {
            "cell-count": f"no count cell below {s.min_cell_count} ({len(counts)} count column(s))"
            if counts
            else "no count columns (whole numbers >= 0) in this table",
            "dominance": f"no column where the {s.dominance_n} largest values make up >= {s.dominance_k:.0%} of it"
            if magnitudes
            else "no magnitude columns (numbers that are not counts) in this table",
        },
    )
    model = SimpleNamespace(model_type="table", command="crosstab")
    if counts:
        table = pd.DataFrame({ci: pd.Series(v, dtype="float64") for ci, v in counts.items()})
        _, _, flagged = checks.check_min_threshold("csv", SDCEvidence(interim_tables={"count_table": table}), model)
        if not s.zeros_are_disclosive:
            flagged = flagged & (table != 0)
        for ci in counts:
            for ri in flagged.index[flagged[ci]]:
                c.add(
                    "cell-count",
                    f"count {table.at[ri, ci]:g} is below {s.min_cell_count} (suppress or combine categories)",
                    f"line {ri + 2}, column {_col(header, ci)}",
                )
    if magnitudes:
        _dominance(header, rows, magnitudes, checks, model, s, c)
    return c.close()


def _dominance(header, rows, magnitudes, checks: SDCChecks, model, s: AirlockSettings, c: _Collector) -> None:
    """ACRO's NK rule per magnitude column (one column at a time: ACRO stops at the first negative in a table)."""
    keep = [i for i, row in enumerate(rows) if not (row and TOTAL_LABEL.match(row[0]))]
    for ci, v in magnitudes.items():
        x = pd.Series([v[i] for i in keep], index=keep, dtype="float64").dropna()
        interim = {
            "sum": pd.DataFrame({ci: [x.sum()]}),
            "top_n_sum": pd.DataFrame({ci: [x.nlargest(s.dominance_n).sum()]}),
            "num_negative": pd.DataFrame({ci: [int((x < 0).sum())]}),
        }
        _, summary, flagged = checks.check_nk_dominance("csv", SDCEvidence(interim_tables=interim), model)
        if not bool(flagged[ci].iloc[0]):
            continue
        if interim["num_negative"][ci].iloc[0] > 0:
            c.add("dominance", f"ACRO: {summary.strip()}; check this column by hand", f"column {_col(header, ci)}")
            continue
        share = interim["top_n_sum"][ci].iloc[0] / interim["sum"][ci].iloc[0]
        top = ", ".join(str(i + 2) for i in x.nlargest(s.dominance_n).index)
        c.add(
            "dominance",
            f"the {s.dominance_n} largest values (lines {top}) make up {share:.0%} of the column's "
            f"total (limit {s.dominance_k:.0%}): a published total would disclose them",
            f"column {_col(header, ci)}",
        )


# ---------------------------------------------------------------- per type


def _csv(text: str, s: AirlockSettings) -> tuple[list[str], list[list[str]]]:
    sample = text[:65536]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text), dialect))
    return (rows[0] if rows else []), rows[1:]


def _notebook(doc: dict, c: _Collector, identifiers) -> None:
    for i, cell in enumerate(doc.get("cells") or [], 1):
        if not isinstance(cell, dict):
            continue
        if cell.get("cell_type") == "code" and cell.get("outputs"):
            c.add(
                "notebook-outputs",
                f"code cell {i} has {len(cell['outputs'])} stored output(s); "
                "clear all outputs (Edit > Clear Outputs of All Cells) and ask again",
                f"cell {i}",
            )
        src = cell.get("source") or ""
        _scan_text("".join(src) if isinstance(src, list) else str(src), c, identifiers, f"cell {i}, ")


def _content(ext: str, data: bytes) -> tuple[str | None, str | None]:
    """(text, problem): the decoded text of a text type (None for binary types), or what is wrong with it."""
    if ext == "png":
        return None, None if data.startswith(b"\x89PNG\r\n\x1a\n") else "not a PNG image (no PNG signature)"
    if ext == "pdf":
        return None, None if data.startswith(b"%PDF-") else "not a PDF document (no %PDF- header)"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return None, (f"not UTF-8 text (byte {e.start}); save it as UTF-8" if ext in TEXT_TYPES else None)
    if ext in ("json", "ipynb"):
        try:
            doc = json.loads(text)
        except ValueError as e:
            return text, f"not valid JSON ({e})"
        if ext == "ipynb" and not (isinstance(doc, dict) and "cells" in doc):
            return text, "not a Jupyter notebook (no 'cells')"
    if ext == "svg" and "<svg" not in text[:4096]:
        return text, "not an SVG image (no <svg> element)"
    return text, None


def check_file(
    name: str,
    data: bytes,
    settings: AirlockSettings,
    *,
    direction: str = "export",
    identifiers: Mapping[str, frozenset[str]] | None = None,
) -> list[Finding]:
    """Every finding for the file ``name`` with contents ``data`` (``identifiers``: label -> values)."""
    s, ext, identifiers = settings, extension(name), identifiers or {}
    allowed = s.types_for(direction)
    out = [
        Finding(
            "file-type",
            ext in allowed,
            f"type {ext or '(none)'!r} "
            + (
                "is allowed"
                if ext in allowed
                else f"is not allowed for {direction}s; allowed: {', '.join(allowed)}"
                " (convert the file, or ask an operator to allow the type)"
            ),
        ),
    ]
    text, problem = _content(ext, data)
    out.append(Finding("file-content", problem is None, problem or "the contents match the type"))
    if direction == "export":
        blocked = is_blocked_extension(name, list(s.acro_blocked_extensions))
        out.append(
            Finding(
                "acro-blocked-extension",
                not blocked,
                f"ACRO blocks {ext} files (its text can carry the data points): check it shows no individual values"
                if blocked
                else "not an extension ACRO blocks",
            )
        )
    size_ok = len(data) <= s.max_file_bytes
    out.append(
        Finding(
            "file-size",
            size_ok,
            f"{len(data)} bytes"
            + (f" <= {s.max_file_mb:g} MB" if size_ok else f" > {s.max_file_mb:g} MB; split or summarise the output"),
        )
    )
    if direction != "export" or text is None:
        if direction == "export" and ext not in TEXT_TYPES:
            out.append(
                Finding(
                    "text-scan",
                    True,
                    f"{ext or 'binary'} content is not scanned for identifiers; the reviewers look at it",
                )
            )
        return out
    rules = ["rrn", "phone", "email"] + (["identifier-value"] if identifiers else [])
    passes = {
        "rrn": "no resident registration number",
        "phone": "no Korean phone number",
        "email": "no e-mail address",
        "identifier-value": f"no value of {', '.join(sorted(identifiers))}",
    }
    if ext == "ipynb":
        rules.insert(0, "notebook-outputs")
        passes["notebook-outputs"] = "no stored outputs"
    c = _Collector(rules, passes)
    if ext == "csv":
        header, rows = _csv(text, s)
        rows_ok = len(rows) <= s.max_csv_rows
        out.append(
            Finding(
                "csv-rows",
                rows_ok,
                f"{len(rows)} data rows"
                + (
                    f" <= {s.max_csv_rows}" if rows_ok else f" > {s.max_csv_rows}; aggregate further or split the table"
                ),
            )
        )
        out.extend(_table_checks(header, rows, s))
        _scan_rows(header, rows, c, identifiers)
    elif ext == "ipynb" and problem is None:
        _notebook(json.loads(text), c, identifiers)
    else:
        _scan_text(text, c, identifiers)
    return out + c.close()


def failed(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if not f.passed]
