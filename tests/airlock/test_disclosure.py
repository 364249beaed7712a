"""The automatic disclosure checks (quota.disclosure): what a reviewer sees for each kind of risky output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpuhub.core import airlock_config
from gpuhub.core.siteconfig_reader import SiteConfigError
from quota.disclosure import check_file, failed, rrn_checksum_ok

S = airlock_config.defaults(Path("/tmp/gpuhub-airlock-test"))


def by_rule(findings, rule):
    return [f for f in findings if f.rule == rule]


def only_failed(findings):
    return {(f.rule, f.location) for f in failed(findings)}


def test_defaults_come_from_acro():
    acro = airlock_config.acro_defaults()
    assert (
        (S.min_cell_count, S.dominance_n, S.dominance_k)
        == (acro["safe_threshold"], acro["safe_nk_n"], acro["safe_nk_k"])
        == (10, 2, 0.9)
    )
    assert (S.max_file_mb, S.max_csv_rows) == (16, 5000)
    assert S.export_types == ("csv", "txt", "json", "png", "svg", "pdf", "ipynb")


def test_a_site_without_projects_loads_where_acro_is_not_installed(monkeypatch, tmp_path):
    """The compose hub image has no acro: its site (no projects, no airlock section) must still load, with the
    pinned ACRO thresholds, which must agree with the installed ACRO's; a site that uses the airlock must not."""
    assert airlock_config._pinned_acro_defaults() == {
        **airlock_config.acro_defaults(),
        "blocked_extensions": list(airlock_config.acro_defaults()["blocked_extensions"]),
    }

    def missing():
        raise airlock_config.SiteConfigError("airlock: the 'acro' package is not installed")

    monkeypatch.setattr(airlock_config, "acro_defaults", missing)
    quiet = airlock_config.parse({}, state_dir=tmp_path, base=tmp_path, used=False)
    assert quiet.min_cell_count == 10 and quiet.quarantine_dir == tmp_path / "airlock"
    with pytest.raises(airlock_config.SiteConfigError, match="acro"):
        airlock_config.parse({}, state_dir=tmp_path, base=tmp_path, used=True)


def test_small_cells_are_flagged_with_row_and_column():
    table = "region,patients,mean_age\nseoul,120,54.2\nbusan,3,61.0\nulsan,45,48.9\n"
    f = check_file("counts.csv", table.encode(), S)
    assert only_failed(f) == {("cell-count", "line 3, column 'patients'")}
    assert "count 3 is below 10" in by_rule(f, "cell-count")[0].detail
    assert by_rule(f, "csv-rows")[0].passed


def test_a_clean_table_passes_every_check():
    table = "region,patients\nseoul,120\nbusan,30\nulsan,45\n"
    assert failed(check_file("counts.csv", table.encode(), S)) == []


def test_dominance_flags_a_column_two_rows_dominate_and_ignores_the_total_row():
    table = "hospital,revenue_sum\nA,9000\nB,800\nC,150\nD,50\nTotal,10000\n"
    f = check_file("rev.csv", table.encode(), S)
    (d,) = failed(by_rule(f, "dominance"))
    assert d.location == "column 'revenue_sum'" and "98%" in d.detail and "lines 2, 3" in d.detail
    balanced = "hospital,revenue_sum\nA,300\nB,250\nC,250\nD,200\nTotal,1000\n"
    assert failed(check_file("rev.csv", balanced.encode(), S)) == []


def test_rrn_in_a_text_file_with_check_digit():
    text = "cohort notes\npatient 900101-1234568 was seen\nref 9001011234568\nnot one: 9001011234567\n"
    f = check_file("notes.txt", text.encode(), S)
    assert only_failed(f) == {("rrn", "line 2"), ("rrn", "line 3")}
    assert "1234568" not in " ".join(x.detail for x in f)  # masked
    assert rrn_checksum_ok("9001011234568") and not rrn_checksum_ok("9001011234567")


def test_a_number_that_is_not_a_date_is_not_an_rrn():
    assert failed(check_file("n.txt", b"id 991399-1234567 and 001301-3000000\n", S)) == []


def test_phone_numbers_and_emails():
    text = "call 010-1234-5678 or 02-312-4567\nmobile 01098765432\nmail kim.minsu@example.co.kr\n"
    f = check_file("contact.txt", text.encode(), S)
    assert only_failed(f) == {("phone", "line 1"), ("phone", "line 2"), ("email", "line 3")}
    assert len(failed(by_rule(f, "phone"))) == 3


def test_identifier_column_values_in_csv_and_text():
    ids = {"registry.pid": frozenset({"P-000101", "P-000102"})}
    csv_text = "pid,score\nP-000101,5.5\nX,4.0\n"
    f = check_file("scores.csv", csv_text.encode(), S, identifiers=ids)
    assert ("identifier-value", "line 2, column 'pid'") in only_failed(f)
    f = check_file("log.txt", b"fine\nsubject=P-000102 done\n", S, identifiers=ids)
    assert only_failed(f) == {("identifier-value", "line 2")}
    assert "registry.pid" in by_rule(f, "identifier-value")[0].detail


def test_more_than_5000_rows_fail_the_row_check():
    rows = "n\n" + "".join(f"{100 + i}\n" for i in range(5001))
    (r,) = by_rule(check_file("long.csv", rows.encode(), S), "csv-rows")
    assert not r.passed and r.detail == "5001 data rows > 5000; aggregate further or split the table"
    (r,) = by_rule(check_file("ok.csv", rows.rsplit("\n", 2)[0].encode() + b"\n", S), "csv-rows")
    assert r.passed and r.detail == "5000 data rows <= 5000"


def test_a_20_mb_file_fails_the_size_check():
    f = check_file("big.txt", b"x" * (20 * 1024 * 1024), S)
    (size,) = by_rule(f, "file-size")
    assert not size.passed and "> 16 MB" in size.detail


def test_a_disallowed_type_fails_the_type_check():
    f = check_file("model.pkl", b"\x80\x04K\x01.", S)
    (t,) = by_rule(f, "file-type")
    assert not t.passed and "'pkl' is not allowed" in t.detail and "csv, txt" in t.detail


def test_contents_must_match_the_extension():
    f = check_file("fig.png", b"GIF89a....", S)
    assert ("file-content", None) in only_failed(f)
    assert failed(check_file("fig.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, S)) == []


def test_notebook_with_outputs_is_flagged_per_cell():
    nb = {
        "nbformat": 4,
        "cells": [
            {"cell_type": "markdown", "source": ["# notes"]},
            {"cell_type": "code", "source": ["df.head()"], "outputs": [{"output_type": "execute_result"}]},
            {"cell_type": "code", "source": ["x = 1"], "outputs": []},
        ],
    }
    f = check_file("analysis.ipynb", json.dumps(nb).encode(), S)
    assert only_failed(f) == {("notebook-outputs", "cell 2")}
    nb["cells"][1]["outputs"] = []
    nb["cells"][2]["source"] = ["# 010-1234-5678\n", "y = 2"]
    assert only_failed(check_file("analysis.ipynb", json.dumps(nb).encode(), S)) == {("phone", "cell 3, line 1")}


def test_svg_comes_with_acros_blocked_extension_finding():
    f = check_file("fig.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', S)
    assert only_failed(f) == {("acro-blocked-extension", None)}
    assert by_rule(f, "file-type")[0].passed


def test_hits_are_capped_and_counted():
    text = "".join(f"a{i}@example.com\n" for i in range(30))
    f = failed(check_file("m.txt", text.encode(), S))
    assert len(f) == 21 and f[-1].detail == "10 more like these (first 20 shown)"


def test_site_config_errors_name_the_key():
    with pytest.raises(SiteConfigError, match=r"airlock.export_types\[0\]: '.csv' is not a file type"):
        airlock_config.parse({"export_types": [".csv"]}, state_dir=Path("/s"), base=Path("/s"))
    with pytest.raises(SiteConfigError, match="airlock.retention: unknown key"):
        airlock_config.parse({"retention": 3}, state_dir=Path("/s"), base=Path("/s"))
    s = airlock_config.parse({"quarantine_dir": "q", "min_cell_count": 5}, state_dir=Path("/s"), base=Path("/b"))
    assert (s.quarantine_dir, s.min_cell_count) == (Path("/b/q"), 5)


def test_export_release_is_home_or_download():
    assert S.export_release == "home"
    parsed = airlock_config.parse({"export_release": "download"}, state_dir=Path("/s"), base=Path("/s"))
    assert parsed.export_release == "download"
    with pytest.raises(SiteConfigError, match=r"airlock.export_release.*'home'.*'download'"):
        airlock_config.parse({"export_release": "email"}, state_dir=Path("/s"), base=Path("/s"))
