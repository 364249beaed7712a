"""`projects:` and `audit:` in the site config: what loads, the defaults, and every error naming key and fix."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from gpuhub.core.projects import LEGAL_BASES, Dataset
from gpuhub.core.site import SiteConfigError, load_site, parse_site
from tests.projects.projectkit import DUA, make_site, site_data


def test_a_project_loads_with_its_datasets_and_defaults():
    site = make_site()
    p = site.projects["cohort"]
    assert (p.org, p.stewards, p.members, p.members_idp_groups) == (
        "hospital",
        ("steve",),
        ("alice", "bob"),
        ("cohort-team",),
    )
    assert p.datasets == {
        "registry": Dataset("registry", "/srv/projects/cohort", "registry extract", "data", ("pid",)),
        "imaging": Dataset("imaging", "cohort-imaging", "", "data", ()),
    }
    assert p.datasets["registry"].is_host_path and not p.datasets["imaging"].is_host_path
    assert (p.starts, p.expires, p.images, p.legal_basis) == (
        date(2026, 12, 1),
        date(2026, 12, 31),
        ("python",),
        "pipa-28-2-research",
    )
    assert (p.max_response_mb, p.export_approvals, p.import_approvals) == (5.0, 2, 1)
    assert (p.retention_days_after_expiry, p.expiry_notice_minutes) == (0, 30.0)
    assert p.dua_text == DUA and p.dua_sha256 == hashlib.sha256(DUA.encode("utf-8")).hexdigest()
    assert (site.audit.retention_days, site.audit.records_retention_days) == (730, 1095)
    assert site.hub.project_proxy_port == 8010


def test_images_default_to_the_orgs_and_display_name_to_the_key():
    p = make_site({"images": None, "display_name": None}).projects["cohort"]
    assert (p.images, p.display_name) == (("python", "torch"), "cohort")


def test_the_window_is_starts_midnight_through_the_whole_expires_day_in_the_site_zone():
    site = make_site()
    p = site.projects["cohort"]
    assert p.opens_at(site.tz) == datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # 00:00 KST
    assert p.closes_at(site.tz) == datetime(2026, 12, 31, 15, 0, tzinfo=UTC)  # 2027-01-01 00:00 KST
    assert p.closes_at("UTC") == datetime(2027, 1, 1, tzinfo=UTC)


def test_membership_from_the_config_lists_and_idp_groups_only():
    site = make_site()
    assert site.projects_of("alice") == ["cohort"]
    assert site.projects_of("zoe", frozenset({"cohort-team"})) == ["cohort"]
    assert site.projects_of("steve") == []  # a steward is not a member unless listed
    assert site.projects_of("carol", frozenset({"other"})) == []


def test_yaml_dates_quoted_or_not_and_dua_from_a_file_beside_the_site_config(tmp_path):
    (tmp_path / "agreements").mkdir()
    (tmp_path / "agreements" / "cohort.txt").write_text("동의서 본문\n", encoding="utf-8")
    data = site_data({"starts": "2026-12-01", "dua": {"file": "agreements/cohort.txt"}})
    text = yaml.safe_dump(data, allow_unicode=True)  # starts quoted (a string), expires a YAML date
    assert "starts: '2026-12-01'" in text and "expires: 2026-12-31" in text
    (tmp_path / "site.yaml").write_text(text, encoding="utf-8")
    site = load_site(tmp_path / "site.yaml")
    p = site.projects["cohort"]
    assert (p.starts, p.expires, p.dua_text) == (date(2026, 12, 1), date(2026, 12, 31), "동의서 본문\n")


def test_audit_and_proxy_port_settings():
    site = make_site(audit={"retention_days": 1000, "records_retention_days": 2000}, hub={"project_proxy_port": 9010})
    assert (site.audit.retention_days, site.audit.records_retention_days, site.hub.project_proxy_port) == (
        1000,
        2000,
        9010,
    )


def test_every_documented_legal_basis_loads():
    for basis in LEGAL_BASES:
        assert make_site({"legal_basis": basis}).projects["cohort"].legal_basis == basis


ERRORS = [
    (
        {"datasets": {"keys": {"source": "/srv/keys", "kind": "key"}}},
        "projects.cohort.datasets.keys.kind: 'key' is refused: re-identification keys (PIPA Art. 28-4 "
        "'additional information') are never mounted in a project",
    ),
    (
        {"datasets": {"x": {"source": "/srv/x", "kind": "secret"}}},
        "projects.cohort.datasets.x.kind: 'secret' is not allowed; allowed: data",
    ),
    (
        {"datasets": {"x": {"source": "data/x"}}},
        "projects.cohort.datasets.x.source: 'data/x' is neither an absolute host path nor a Docker volume name",
    ),
    (
        {"datasets": {"x": {"source": "/srv/../etc"}}},
        "projects.cohort.datasets.x.source: '/srv/../etc' is not a plain absolute path",
    ),
    ({"datasets": {"x": {"source": "/var/run/docker.sock"}}}, "'/var/run/docker.sock' is the host's root, a system"),
    ({"datasets": {"x": {"source": "/"}}}, "projects.cohort.datasets.x.source: '/' is the host's root"),
    ({"datasets": {"x": {"source": "/etc/"}}}, "mount only the dataset's own folder (e.g. /srv/projects/KEY/NAME)"),
    ({"datasets": {"Bad_Name": {"source": "/srv/x"}}}, "projects.cohort.datasets.Bad_Name: invalid key 'Bad_Name'"),
    ({"datasets": {"x": {"source": "/srv/x", "mode": "rw"}}}, "projects.cohort.datasets.x.mode: unknown key"),
    ({"org": "nowhere"}, "projects.cohort.org: 'nowhere' is not an organization key; declared: hospital, lab"),
    ({"org": None}, "projects.cohort.org: required key is missing"),
    (
        {"images": ["gone"]},
        "projects.cohort.images[0]: 'gone' is not in the image catalog; catalog keys: python, torch, other",
    ),
    (
        {"images": ["other"]},
        "projects.cohort.images[0]: 'other' is not allowed for organization 'hospital'; allowed: python, torch",
    ),
    (
        {"legal_basis": "because"},
        "projects.cohort.legal_basis: 'because' is not allowed; allowed: pipa-28-2-research | ",
    ),
    ({"legal_basis": None}, "projects.cohort.legal_basis: required key is missing"),
    ({"stewards": []}, "projects.cohort.stewards: list at least one data steward"),
    ({"stewards": "steve"}, "projects.cohort.stewards: expected a list of strings, got 'steve'"),
    ({"members": ["Alice Kim"]}, "projects.cohort.members[0]: 'Alice Kim' is not a gpuhub username"),
    ({"members_idp_groups": [3]}, "projects.cohort.members_idp_groups[0]: expected a string, got 3"),
    ({"starts": "next monday"}, "projects.cohort.starts: expected a date YYYY-MM-DD in the site time zone"),
    (
        {"expires": datetime(2027, 1, 1, 12, 0)},
        "projects.cohort.expires: datetime.datetime(2027, 1, 1, 12, 0) has a time of day",
    ),
    ({"expires": date(2026, 11, 30)}, "projects.cohort.expires: 2026-11-30 is before starts 2026-12-01"),
    ({"expires": None}, "projects.cohort.expires: required key is missing"),
    ({"dua": None}, "projects.cohort.dua: required key is missing (the data use agreement"),
    ({"dua": "  \n"}, "projects.cohort.dua: the data use agreement is empty"),
    (
        {"dua": {"file": "missing-dua.txt"}},
        "projects.cohort.dua.file: cannot read /tmp/missing-dua.txt: No such file or directory; check the path",
    ),
    ({"dua": {"path": "x"}}, "projects.cohort.dua.file: required key is missing"),
    ({"dua": 7}, "projects.cohort.dua: expected the data use agreement: its text, or {file: "),
    ({"purpose": " "}, "projects.cohort.purpose: write the purpose of processing"),
    ({"max_response_mb": 0}, "projects.cohort.max_response_mb: 0.0 is not allowed; allowed: megabytes > 0"),
    ({"export_approvals": 0}, "projects.cohort.export_approvals: 0 is not allowed; allowed: an integer >= 1"),
    (
        {"expiry_notice_minutes": -1},
        "projects.cohort.expiry_notice_minutes: -1.0 is not allowed; allowed: minutes >= 0",
    ),
    (
        {"retention_days_after_expiry": 1.5},
        "projects.cohort.retention_days_after_expiry: expected whole days >= 0, got 1.5",
    ),
    ({"owner": "x"}, "projects.cohort.owner: unknown key; allowed here:"),
]


@pytest.mark.parametrize(
    ("override", "message"), ERRORS, ids=[m.split(":")[0] + "-" + str(i) for i, (_, m) in enumerate(ERRORS)]
)
def test_config_errors_name_the_key_and_the_fix(override, message):
    with pytest.raises(SiteConfigError) as e:
        make_site(override)
    assert message in str(e.value)


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ({"audit": {"retention_days": 30}}, "audit.retention_days: 30 is not allowed; allowed: whole days >= 730"),
        ({"audit": {"keep": 1}}, "audit.keep: unknown key"),
        ({"hub": {"project_proxy_port": 70000}}, "hub.project_proxy_port: 70000 is not allowed; allowed: a TCP port"),
    ],
)
def test_audit_and_hub_errors(top, message):
    with pytest.raises(SiteConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_site(**top)


def test_a_bad_project_key_is_named():
    data = site_data()
    data["projects"] = {"Cancer_Cohort": data["projects"]["cohort"]}
    with pytest.raises(SiteConfigError, match="projects.Cancer_Cohort: invalid key 'Cancer_Cohort'"):
        parse_site(data, Path("/tmp/site.yaml"))


def test_no_projects_section_is_no_projects():
    data = site_data()
    del data["projects"]
    site = parse_site(data, Path("/tmp/site.yaml"))
    assert site.projects == {} and site.projects_of("alice") == []
