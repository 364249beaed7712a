"""A project's processing records (:mod:`quota.project_records`) as JSON, CSV or one standalone HTML page.

JSON is the records dict itself (the contract; other tools read it). CSV is one flat table a spreadsheet opens,
``section, at, who, action, subject, detail`` (``detail`` is JSON text where the fact has parts), one row per fact,
so a filter on ``section`` gives each part of the records. HTML is a page that needs nothing else: UTF-8, inline
styles, a font stack that has Hangul on every common system, printable on A4 (the records are filed), every value
escaped. Its headings go through ``gettext`` (the CLI passes the catalog of ``--lang``; quota knows no
languages) and its times through ``when`` (the site's time zone, the locale's format).
"""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Callable


def N_(message: str) -> str:  # noqa: N802 (gettext's name for "mark for extraction, translate later")
    return message


CSV_FIELDS = ("section", "at", "who", "action", "subject", "detail")

# Words the page translates that are values (states, decisions, member sources) or sit inside f-strings, listed
# here so extraction finds them.
MSGIDS = (
    N_("Processing records"), N_("Generated"), N_("Records kept until"), N_("pass"), N_("FAIL"), N_("events"),
    N_("yes"), N_("no"), N_("verified"), N_("BROKEN"), N_("Audit chain"), N_("rows"), N_("None recorded."),
    N_("head to record as the anchor"), N_("Reviewed by (steward, date, signature)"),
    N_("open"), N_("closed"), N_("not started"), N_("approve"), N_("reject"),
    N_("submitted"), N_("checks_done"), N_("in_review"), N_("approved"), N_("rejected"), N_("cancelled"),
    N_("revoked"), N_("released"), N_("config"), N_("idp"), N_("added"), N_("removed"),
    N_("accepted"), N_("not accepted"), N_("accepted an older text"),
)  # fmt: skip


def to_json(records: dict) -> str:
    return json.dumps(records, indent=2, ensure_ascii=False) + "\n"


def _j(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True) if value not in (None, "", [], {}) else ""


def _request_rows(section: str, r: dict) -> list[list]:
    checks = [
        f"{c['rule']}: {'pass' if c['passed'] else 'FAIL'} {c.get('location') or ''} {c['detail']}".strip()
        for c in r["checks"]
    ]
    rows = [
        [
            section,
            r["submitted_at"],
            r["requester"],
            r["state"],
            f"{r['id']}: {r['path']}",
            _j(
                {
                    "why": r["why"],
                    "sha256": r["sha256"],
                    "size": r["size"],
                    "checks_failed": r["checks_failed"],
                    "approved_by": r["approved_by"],
                    "rejected_by": r["rejected_by"],
                    "released_to": r["released_to"],
                }
            ),
        ]
    ]
    rows += [
        [f"{section}-check", r["submitted_at"], "gpuhub-airlock", c.split(":")[0], f"{r['id']}", c] for c in checks
    ]
    rows += [
        [f"{section}-review", v["at"], v["reviewer"], v["decision"], f"{r['id']}", v["reason"]] for v in r["reviews"]
    ]
    return rows


def to_csv(records: dict) -> str:
    p = records["project"]
    rows: list[list] = [
        ["project", records["generated_at"], "", k, p["key"], _j(v) if not isinstance(v, str) else v]
        for k, v in p.items()
    ]
    rows += [
        ["item", "", "", d["kind"], d["name"], _j({k: d[k] for k in ("description", "source", "identifier_columns")})]
        for d in records["items"]
    ]
    people = records["people"]
    rows += [["steward", "", s, "steward", p["key"], ""] for s in people["stewards"]]
    rows += [
        ["member", m["dua_accepted_at"] or "", m["user"], m["source"], p["key"], m["dua"]] for m in people["members"]
    ]
    rows += [["dua", a["at"], a["user"], "accepted", a["sha256"], a["source"] or ""] for a in people["dua_acceptances"]]
    rows += [["membership", c["at"], c["by"], c["action"], c["user"], ""] for c in people["membership_changes"]]
    rows += [
        ["access", e["at"], e["account"] or "", e["action"], e["target"] or "", _j(e["detail"])]
        for e in records["accesses"]
    ]
    for r in records["exports"]:
        rows += _request_rows("export", r)
    for r in records["imports"]:
        rows += _request_rows("import", r)
    for d in records["destruction"]:
        for v in d["volumes"]:
            rows.append(["destruction", d["at"], d["by"], "volume removed", v["id"], v.get("created_at") or ""])
        for q in d["quarantine"]:
            rows.append(["destruction", d["at"], d["by"], "quarantine file deleted", f"{q['request']}", q["sha256"]])
        for c in d["containers"]:
            rows.append(["destruction", d["at"], d["by"], "container removed", c["name"], c["id"]])
        rows.append(
            [
                "destruction",
                d["at"],
                d["by"],
                "complete" if d["complete"] else "incomplete",
                p["key"],
                _j({"datasets_unmounted": d["datasets_unmounted"], "errors": d["errors"]}),
            ]
        )
    rev = records["review"]
    rows += [
        ["review", rev["start"], a["account"], "events", rev["month"], _j(a["actions"])] for a in rev["by_account"]
    ]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    w.writerows(["" if c is None else c for c in r] for r in rows)
    return out.getvalue()


STYLE = """
:root{--ink:#1d2733;--muted:#5b6675;--line:#d5dbe3;--band:#f3f6f9;--ok:#1e7d45;--bad:#b3261e}
*{box-sizing:border-box}
body{margin:0 auto;max-width:70rem;padding:2rem 1.5rem;color:var(--ink);line-height:1.55;
 font-family:"Noto Sans KR","Apple SD Gothic Neo","Malgun Gothic","Nanum Gothic","Noto Sans CJK KR",
 system-ui,-apple-system,"Segoe UI",sans-serif;word-break:keep-all;overflow-wrap:anywhere}
h1{font-size:1.6rem;margin:0 0 .25rem}h2{font-size:1.2rem;margin:2rem 0 .5rem;border-bottom:2px solid var(--ink)}
.sub{color:var(--muted);margin:0 0 1rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid var(--line);padding:.35rem .5rem;text-align:left;vertical-align:top}
th{background:var(--band);font-weight:600}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.25rem 1rem;margin:0}dt{font-weight:600}dd{margin:0}
code{font-family:ui-monospace,"D2Coding",monospace;font-size:.85em;word-break:break-all}
.ok{color:var(--ok);font-weight:600}.bad{color:var(--bad);font-weight:600}.none{color:var(--muted)}
@media print{body{max-width:none;padding:0}h2{break-after:avoid}tr{break-inside:avoid}}
"""


class _Page:
    def __init__(self, gettext: Callable[[str], str], when: Callable[[str], str]):
        self._, self.when = gettext, when
        self.parts: list[str] = []

    def h2(self, msgid: str) -> None:
        self.parts.append(f"<h2>{html.escape(self._(msgid))}</h2>")

    def table(self, headers: list[str], rows: list[list], empty: str = "None recorded.") -> None:
        if not rows:
            self.parts.append(f'<p class="none">{html.escape(self._(empty))}</p>')
            return
        head = "".join(f"<th>{html.escape(self._(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def t(self, iso: str | None) -> str:
        return html.escape(self.when(iso)) if iso else ""


def _e(v) -> str:
    return html.escape("" if v is None else str(v))


def _checks(pg: _Page, checks: list[dict]) -> str:
    out = []
    for c in checks:
        mark = (
            f'<span class="ok">{_e(pg._("pass"))}</span>'
            if c["passed"]
            else f'<span class="bad">{_e(pg._("FAIL"))}</span>'
        )
        loc = f" ({_e(c['location'])})" if c.get("location") else ""
        out.append(f"{mark} <code>{_e(c['rule'])}</code>{loc}: {_e(c['detail'])}")
    return "<br>".join(out)


def _requests(pg: _Page, reqs: list[dict]) -> None:
    rows = []
    for r in reqs:
        reviews = "<br>".join(
            f"{_e(v['reviewer'])}: <b>{_e(pg._(v['decision']))}</b> {pg.t(v['at'])}"
            + (f" — {_e(v['reason'])}" if v["reason"] else "")
            for v in r["reviews"]
        )
        what = (
            f"#{r['id']} <code>{_e(r['path'])}</code><br>{_e(r['size'])} B, sha256 <code>{_e(r['sha256'][:16])}…</code>"
        )
        rows.append(
            [
                what,
                _e(r["requester"]) + "<br>" + pg.t(r["submitted_at"]),
                _e(r["why"]),
                _checks(pg, r["checks"]),
                reviews,
                _e(pg._(r["state"])) + (f"<br><code>{_e(r['released_to'])}</code>" if r["released_to"] else ""),
            ]
        )
    pg.table([N_("File"), N_("Requester"), N_("Why"), N_("Automatic checks"), N_("Reviews"), N_("State")], rows)


def _head(pg: _Page, records: dict) -> None:
    p, _ = records["project"], pg._
    pg.parts.append(f"<h1>{_e(_('Processing records'))}: {_e(p['display_name'])} <code>{_e(p['key'])}</code></h1>")
    pg.parts.append(
        f'<p class="sub">{_e(_("Generated"))} {pg.t(records["generated_at"])} · '
        f"{_e(_('Records kept until'))} {_e(p['records_kept_until'])}</p>"
    )
    pg.h2(N_("Purpose and legal basis"))
    fields = [
        (N_("Purpose"), _e(p["purpose"])),
        (N_("Legal basis"), f"<code>{_e(p['legal_basis'])}</code> {_e(p['legal_basis_text'])}"),
        (N_("Organization"), _e(p["org"])),
        (N_("Period"), f"{_e(p['starts'])} – {_e(p['expires'])} ({_e(p['timezone'])})"),
        (N_("State"), _e(_(p["state"]))),
        (N_("Destruction due"), pg.t(p["destroy_at"])),
        (N_("Data use agreement (sha256)"), f"<code>{_e(p['dua_sha256'])}</code>"),
        (N_("Approvals needed (export / import)"), f"{p['export_approvals']} / {p['import_approvals']}"),
    ]
    pg.parts.append("<dl>" + "".join(f"<dt>{_e(_(k))}</dt><dd>{v}</dd>" for k, v in fields) + "</dl>")


def _people_section(pg: _Page, people: dict) -> None:
    _ = pg._
    pg.h2(N_("Members, stewards and DUA acceptances"))
    rows = [[_e(s), _e(_("steward")), ""] for s in people["stewards"]]
    rows += [
        [
            _e(m["user"]),
            _e(_(m["source"])),
            _e(_(m["dua"])) + (" " + pg.t(m["dua_accepted_at"]) if m["dua_accepted_at"] else ""),
        ]
        for m in people["members"]
    ]
    pg.table([N_("User"), N_("Role"), N_("DUA")], rows)
    pg.table(
        [N_("When"), N_("By"), N_("Change"), N_("User")],
        [[pg.t(c["at"]), _e(c["by"]), _e(_(c["action"])), _e(c["user"])] for c in people["membership_changes"]],
        empty=N_("No membership changes."),
    )


def _destruction_section(pg: _Page, runs: list[dict]) -> None:
    """Each destruction run: the volumes by id (with their creation time), the quarantined copies, the servers
    removed and the datasets unmounted with them, and whether anything was left."""
    pg.h2(N_("Destruction"))
    rows = []
    for d in runs:
        done = f'<span class="ok">{_e(pg._("yes"))}</span>'
        if not d["complete"]:
            done = f'<span class="bad">{_e(pg._("no"))}</span> ' + _e("; ".join(d["errors"]))
        rows.append(
            [
                pg.t(d["at"]),
                "<br>".join(f"<code>{_e(v['id'])}</code> ({_e(v.get('created_at'))})" for v in d["volumes"]),
                "<br>".join(f"#{_e(q['request'])} <code>{_e(q['sha256'][:16])}…</code>" for q in d["quarantine"]),
                "<br>".join([_e(c["name"]) for c in d["containers"]] + [_e(x) for x in d["datasets_unmounted"]]),
                done,
            ]
        )
    pg.table(
        [N_("When"), N_("Volumes"), N_("Quarantined files"), N_("Servers and datasets"), N_("Complete")],
        rows,
        empty=N_("Not destroyed yet."),
    )


def to_html(
    records: dict, gettext: Callable[[str], str] = str, when: Callable[[str], str] = str, lang: str = "en"
) -> str:
    """The standalone page; ``gettext`` translates the headings, ``when`` writes an ISO time for people."""
    pg = _Page(gettext, when)
    _head(pg, records)
    pg.h2(N_("Items (datasets)"))
    pg.table(
        [N_("Dataset"), N_("Description"), N_("Source"), N_("Identifier columns")],
        [
            [
                _e(d["name"]),
                _e(d["description"]),
                f"<code>{_e(d['source'])}</code>",
                _e(", ".join(d["identifier_columns"])),
            ]
            for d in records["items"]
        ],
    )
    _people_section(pg, records["people"])
    pg.h2(N_("Accesses"))
    pg.table(
        [N_("When"), N_("Account"), N_("Source"), N_("Action"), N_("Data touched")],
        [
            [pg.t(e["at"]), _e(e["account"]), _e(e["source"]), f"<code>{_e(e['action'])}</code>", _e(e["target"])]
            for e in records["accesses"]
        ],
    )
    pg.h2(N_("Exports"))
    _requests(pg, records["exports"])
    pg.h2(N_("Imports"))
    _requests(pg, records["imports"])
    _destruction_section(pg, records["destruction"])
    _review(pg, records["review"])
    title = f"{gettext('Processing records')}: {records['project']['key']}"
    return (
        f'<!doctype html><html lang="{_e(lang)}"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(pg.parts)}</body></html>\n"
    )


def _review(pg: _Page, rev: dict) -> None:
    pg.h2(N_("Monthly access-log review"))
    pg.parts.append(f'<p class="sub">{_e(rev["month"])}: {rev["events"]} {_e(pg._("events"))}</p>')
    pg.table(
        [N_("Account"), N_("Events"), N_("Actions"), N_("Sources")],
        [
            [
                _e(a["account"]),
                _e(a["events"]),
                _e(", ".join(f"{k} × {n}" for k, n in a["actions"].items())),
                _e(", ".join(a["sources"])),
            ]
            for a in rev["by_account"]
        ],
        empty=N_("No events this month."),
    )
    pg.table(
        [N_("Request"), N_("Requester"), N_("Why"), N_("Approved by"), N_("State")],
        [
            [
                f"#{r['id']} {_e(r['name'])}",
                _e(r["requester"]),
                _e(r["why"]),
                _e(", ".join(r["approved_by"])),
                _e(pg._(r["state"])),
            ]
            for r in rev["requests"]
        ],
        empty=N_("No airlock requests this month."),
    )
    chain = rev.get("chain")
    if chain:
        ok = chain["ok"]
        mark = f'<span class="{"ok" if ok else "bad"}">{_e(pg._("verified" if ok else "BROKEN"))}</span>'
        note = f" {_e(chain['finding']['message'])}" if chain.get("finding") else ""
        pg.parts.append(
            f"<p>{_e(pg._('Audit chain'))}: {mark}, {chain['rows']} {_e(pg._('rows'))}; "
            f"{_e(pg._('head to record as the anchor'))}: "
            f"<code>{_e(chain['head_id'])}:{_e(chain['head_hash'])}</code>{note}</p>"
        )
    pg.parts.append(f"<p>{_e(pg._('Reviewed by (steward, date, signature)'))}: ______________________</p>")
