"""Who may start a project server and when (quota.projects.check_project, the project rows of quota.policy)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quota.policy import AllocationRequest, Refusal, Rule, check
from quota.projects import (
    AUDIT_ACTIONS,
    NO_CHANGES,
    Membership,
    check_project,
    effective_closes_at,
    effective_expires,
    effective_members,
    is_member,
    projects_of,
)
from tests.projects.projectkit import make_site

SITE = make_site()
COHORT = SITE.projects["cohort"]
SHA = COHORT.dua_sha256
OPEN = datetime(2026, 12, 10, 3, 0, tzinfo=UTC)
OPENS = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)  # 2026-12-01 00:00 KST
CLOSES = datetime(2026, 12, 31, 15, 0, tzinfo=UTC)  # 2027-01-01 00:00 KST


def ask(
    user="alice",
    *,
    key="cohort",
    groups=frozenset(),
    server="cohort",
    image=None,
    org=None,
    now=OPEN,
    accepted=SHA,
    offered=None,
    membership=NO_CHANGES,
):
    return check_project(
        SITE,
        key,
        user=user,
        groups=groups,
        server_name=server,
        image=image,
        org=org,
        now=now,
        accepted_sha256=accepted,
        offered_sha256=offered,
        membership=membership,
    )


def test_the_project_rule_ids_and_statuses_are_the_contract():
    rows = {r.id: r.status for r in Rule if r.id.startswith("project-")}
    assert rows == {
        "project-unknown": 400,
        "project-not-member": 403,
        "project-not-started": 403,
        "project-expired": 403,
        "project-dua-required": 403,
        "project-dua-mismatch": 400,
        "project-image-not-allowed": 403,
        "project-server-name": 400,
        "project-org-mismatch": 400,
    }
    assert AUDIT_ACTIONS == (
        "dua.accepted",
        "server.started",
        "server.stopped",
        "dataset.mounted",
        "request.blocked",
        "membership.added",
        "membership.removed",
        "project.extended",
        "project.expired",
        "project.expiry-warned",
    )


CASES = [
    # (what, kwargs, rule id or None, a piece of the message)
    ("member, open, accepted", {}, None, ""),
    ("idp-group member", {"user": "zoe", "groups": frozenset({"cohort-team"})}, None, ""),
    ("accepting now", {"accepted": None, "offered": SHA}, None, ""),
    ("an allowed image", {"image": "python"}, None, ""),
    ("the project's own org", {"org": "hospital"}, None, ""),
    ("opens at 00:00 KST", {"now": OPENS}, None, ""),
    ("the last microsecond of expires", {"now": CLOSES - timedelta(microseconds=1)}, None, ""),
    (
        "unknown",
        {"key": "nope", "server": "nope"},
        "project-unknown",
        "project 'nope' does not exist; your projects: cohort",
    ),
    (
        "default server",
        {"server": ""},
        "project-server-name",
        "must be the named server 'cohort', not ''; start it as /hub/api/users/alice/servers/cohort",
    ),
    (
        "another org",
        {"org": "lab"},
        "project-org-mismatch",
        "project cohort is charged to organization hospital, not lab; leave 'org' out or name hospital",
    ),
    (
        "stale hash",
        {"offered": "0" * 64},
        "project-dua-mismatch",
        "the text changed); reload the spawn form, read the agreement and accept it again",
    ),
    (
        "non-member",
        {"user": "carol"},
        "project-not-member",
        "carol is not a member of project cohort; ask a steward of project cohort (steve) to add you",
    ),
    ("steward only", {"user": "steve"}, "project-not-member", "ask a steward"),
    (
        "image",
        {"image": "torch"},
        "project-image-not-allowed",
        "project cohort may not use image torch; allowed: python",
    ),
    (
        "before starts",
        {"now": OPENS - timedelta(microseconds=1)},
        "project-not-started",
        "the project opens on 2026-12-01 (Asia/Seoul)",
    ),
    (
        "after expires",
        {"now": CLOSES},
        "project-expired",
        "project cohort closed on 2027-01-01 (Asia/Seoul; its last open day was 2026-12-31); "
        "a steward can extend it with `gpuhub project extend cohort",
    ),
    ("never accepted", {"accepted": None}, "project-dua-required", "accept the data use agreement in the spawn form"),
    ("accepted an older text", {"accepted": "1" * 64}, "project-dua-required", f"its sha256 {SHA}"),
    ("removed", {"membership": Membership(removed=frozenset({"alice"}))}, "project-not-member", "ask a steward"),
    (
        "removed idp",
        {"user": "zoe", "groups": frozenset({"cohort-team"}), "membership": Membership(removed=frozenset({"zoe"}))},
        "project-not-member",
        "zoe is not",
    ),
    ("added", {"user": "carol", "membership": Membership(added=frozenset({"carol"}))}, None, ""),
    (
        "extended",
        {"now": CLOSES + timedelta(days=3), "membership": Membership(expires_override=date(2027, 1, 31))},
        None,
        "",
    ),
    (
        "extended, then past it",
        {"now": datetime(2027, 1, 31, 15, 0, tzinfo=UTC), "membership": Membership(expires_override=date(2027, 1, 31))},
        "project-expired",
        "closed on 2027-02-01",
    ),
]


@pytest.mark.parametrize(("what", "kw", "rule", "text"), CASES, ids=[c[0] for c in CASES])
def test_check_project(what, kw, rule, text):
    got = ask(**kw)
    if rule is None:
        assert got is None, got
        return
    assert isinstance(got, Refusal) and got.rule == rule, got
    assert text in got.message
    assert got.status == Rule.of(rule).status


def test_refusals_are_charged_to_the_projects_org_when_it_exists():
    assert ask(user="carol").org == "hospital"
    assert ask(key="nope", server="nope").org is None


def test_order_request_errors_then_membership_then_time_then_dua():
    late = CLOSES + timedelta(days=1)
    assert ask(user="carol", now=late, accepted=None, server="x").rule == "project-server-name"
    assert ask(user="carol", now=late, accepted=None, offered="0" * 64).rule == "project-dua-mismatch"
    assert ask(user="carol", now=late, accepted=None).rule == "project-not-member"
    assert ask(now=late, accepted=None).rule == "project-expired"
    assert ask(now=OPENS - timedelta(days=1), accepted=None).rule == "project-not-started"


def test_effective_members_and_last_day():
    m = Membership(added=frozenset({"carol"}), removed=frozenset({"bob"}), expires_override=date(2026, 12, 1))
    assert effective_members(COHORT, m) == {"alice", "carol"}
    assert effective_members(COHORT) == {"alice", "bob"}
    assert effective_expires(COHORT, m) == date(2026, 12, 31)  # an extension never shortens
    assert effective_closes_at(COHORT, m, SITE.tz) == CLOSES
    later = Membership(expires_override=date(2027, 3, 31))
    assert effective_closes_at(COHORT, later, SITE.tz) == datetime(2027, 3, 31, 15, 0, tzinfo=UTC)
    assert is_member(COHORT, m, "zoe", frozenset({"cohort-team"})) and not is_member(COHORT, m, "bob")
    assert projects_of(SITE, "carol", frozenset(), {"cohort": m}) == ["cohort"]
    assert projects_of(SITE, "bob", frozenset(), {"cohort": m}) == [] and projects_of(SITE, "bob", frozenset(), {}) == [
        "cohort"
    ]


def test_a_project_request_charges_the_projects_org_even_for_a_member_outside_it():
    bob = AllocationRequest(user="bob", server_name="cohort", org=None, image=None, project="cohort")
    checked = check(SITE, bob)
    assert (checked.org, checked.image) == ("hospital", "python")
    plain = AllocationRequest(user="bob", server_name="", org="hospital", image=None)
    assert check(SITE, plain).rule == "not-a-member"  # an ordinary server is not charged to it
    carol = AllocationRequest(user="carol", server_name="cohort", org=None, image=None, project="cohort")
    assert check(SITE, carol).org == "hospital"  # carol's own org (lab) is not the one charged


MEMBERS = st.sampled_from(["alice", "bob", "carol", "zoe", "steve"])
NOW = st.datetimes(min_value=datetime(2026, 11, 1), max_value=datetime(2027, 3, 1), timezones=st.just(UTC))


@settings(max_examples=300, deadline=None)
@given(
    user=MEMBERS,
    in_group=st.booleans(),
    now=NOW,
    accepted=st.sampled_from([None, SHA, "1" * 64]),
    offered=st.sampled_from([None, SHA]),
    added=st.frozensets(MEMBERS),
    removed=st.frozensets(MEMBERS),
    override=st.one_of(st.none(), st.dates(min_value=date(2026, 12, 1), max_value=date(2027, 2, 1))),
)
def test_a_server_may_start_exactly_when_member_open_and_accepted(
    user, in_group, now, accepted, offered, added, removed, override
):
    m = Membership(added=added - removed, removed=removed, expires_override=override)
    groups = frozenset({"cohort-team"}) if in_group else frozenset()
    got = ask(user, groups=groups, now=now, accepted=accepted, offered=offered, membership=m)
    member = user not in removed and (user in added or user in ("alice", "bob") or in_group)
    last = max(date(2026, 12, 31), override) if override else date(2026, 12, 31)
    local_day = now.astimezone(SITE.tz).date()
    is_open = date(2026, 12, 1) <= local_day <= last
    accepted_now = SHA in (accepted, offered)
    assert (got is None) == (member and is_open and accepted_now), got
    if got is not None:
        expected = "project-not-member" if not member else None
        assert got.rule == expected or (
            member and got.rule in {"project-not-started", "project-expired", "project-dua-required"}
        )


def test_a_project_key_that_is_not_a_string_is_unknown_not_a_crash():
    got = ask(key=["cohort"], server="cohort")
    assert (got.rule, got.status) == ("project-unknown", 400)
    assert got.message == "project \"['cohort']\" does not exist; your projects: cohort"


def test_an_allocation_request_naming_no_site_project_is_an_ordinary_request():
    req = AllocationRequest(user="bob", server_name="x", org=None, image=None, project="nope")
    assert check(SITE, req).org is None  # bob is in no organization: nothing charged, as without 'project'
    gpu = AllocationRequest(user="bob", server_name="x", org=None, image="torch", gpus=1, project="nope")
    assert check(SITE, gpu).rule == "no-organization"


def test_a_project_request_without_an_image_gets_the_projects_first_image():
    site = make_site({"images": ["torch"]})
    req = AllocationRequest(user="bob", server_name="cohort", org=None, image=None, gpus=0, project="cohort")
    assert check(site, req).image == "torch"  # not the org's first (python)
    gpu = AllocationRequest(user="bob", server_name="cohort", org=None, image=None, gpus=1, project="cohort")
    assert check(site, gpu).image == "torch"
