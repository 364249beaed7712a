"""The airlock's decisions (quota.airlock): states, the two-person rule and roles, as tables and a property."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quota import airlock as al

STEWARDS = frozenset({"steve", "sara", "sam"})


def req(state=al.CHECKS_DONE, requester="alice", needed=2, failed=False, reviews=(), direction=al.EXPORT):
    return al.Request(1, "cohort", direction, requester, state, needed, STEWARDS, failed, tuple(reviews))


def refusal(fn, *a, **kw) -> tuple[str, int]:
    with pytest.raises(al.AirlockRefusal) as e:
        fn(*a, **kw)
    return e.value.rule, e.value.status


@pytest.mark.parametrize(
    ("request_", "user", "decision", "reason", "rule", "status"),
    [
        (req(), "mallory", al.APPROVE, "", "airlock-not-found", 404),  # neither requester nor steward
        (req(), "alice", al.APPROVE, "", "airlock-not-steward", 403),  # the requester, not a steward
        (req(requester="sam"), "sam", al.APPROVE, "ok", "airlock-own-request", 403),  # steward and requester
        (req(), "steve", "maybe", "", "airlock-decision", 400),
        (req(state=al.SUBMITTED), "steve", al.APPROVE, "", "airlock-not-reviewable", 409),
        (req(state=al.APPROVED), "steve", al.REJECT, "late", "airlock-not-reviewable", 409),
        (req(state=al.CANCELLED), "steve", al.APPROVE, "", "airlock-not-reviewable", 409),
        (req(failed=True), "steve", al.APPROVE, "  ", "airlock-reason-required", 400),
        (req(), "steve", al.REJECT, "", "airlock-reason-required", 400),
        (
            req(state=al.IN_REVIEW, reviews=[al.Review("steve", al.APPROVE, "")]),
            "steve",
            al.APPROVE,
            "",
            "airlock-already-reviewed",
            409,
        ),
    ],
)
def test_review_refusals(request_, user, decision, reason, rule, status):
    assert refusal(al.review, request_, user, decision, reason) == (rule, status)


@pytest.mark.parametrize(
    ("request_", "user", "decision", "reason", "state"),
    [
        (req(), "steve", al.APPROVE, "", al.IN_REVIEW),  # first of two
        (req(needed=1), "steve", al.APPROVE, "", al.APPROVED),
        (req(state=al.IN_REVIEW, reviews=[al.Review("steve", al.APPROVE, "")]), "sara", al.APPROVE, "", al.APPROVED),
        (req(failed=True), "steve", al.APPROVE, "counts are rounded population totals", al.IN_REVIEW),
        (
            req(state=al.IN_REVIEW, reviews=[al.Review("steve", al.APPROVE, "")]),
            "sara",
            al.REJECT,
            "cell of 3",
            al.REJECTED,
        ),
        (req(direction=al.IMPORT, needed=1), "sam", al.APPROVE, "", al.APPROVED),
    ],
)
def test_review_outcomes(request_, user, decision, reason, state):
    step = al.review(request_, user, decision, reason)
    assert (step.state, step.request.state, step.actor) == (state, state, user)


def test_the_messages_name_the_fix():
    with pytest.raises(al.AirlockRefusal) as e:
        al.review(req(requester="sam"), "sam", al.APPROVE, "x")
    assert "another steward of project cohort must (sara, steve)" in e.value.message
    with pytest.raises(al.AirlockRefusal) as e:
        al.review(req(failed=True), "steve", al.APPROVE, "")
    assert "approving over a failed automatic check needs a written reason" in e.value.message


@pytest.mark.parametrize(
    ("fn", "request_", "user", "rule"),
    [
        (al.cancel, req(), "steve", "airlock-not-requester"),
        (al.cancel, req(state=al.APPROVED), "alice", "airlock-not-cancellable"),
        (al.cancel, req(), "mallory", "airlock-not-found"),
        (lambda r, u: al.revoke(r, u, "why"), req(state=al.APPROVED), "alice", "airlock-not-steward"),
        (lambda r, u: al.revoke(r, u, "why"), req(state=al.RELEASED), "steve", "airlock-not-revocable"),
        (lambda r, u: al.revoke(r, u, ""), req(state=al.APPROVED), "steve", "airlock-reason-required"),
        (al.release, req(state=al.IN_REVIEW), al.SYSTEM, "airlock-not-releasable"),
        (al.release, req(state=al.RELEASED), al.SYSTEM, "airlock-not-releasable"),
        (al.release, req(state=al.REVOKED), "alice", "airlock-not-releasable"),
        (al.release, req(state=al.APPROVED), "steve", "airlock-not-requester"),
    ],
)
def test_cancel_revoke_release_refusals(fn, request_, user, rule):
    assert refusal(fn, request_, user)[0] == rule


def test_cancel_revoke_release_outcomes():
    assert al.cancel(req(state=al.SUBMITTED), "alice").state == al.CANCELLED
    approved = req(state=al.APPROVED, reviews=[al.Review("steve", al.APPROVE, ""), al.Review("sara", al.APPROVE, "")])
    assert al.revoke(approved, "sam", "wrong file").state == al.REVOKED
    assert al.release(approved).state == al.RELEASED


def test_a_forged_approved_state_without_approvals_is_not_released():
    assert refusal(al.release, req(state=al.APPROVED, reviews=[al.Review("alice", al.APPROVE, "")]))[0] == (
        "airlock-not-releasable"
    )


def test_paths_outside_the_home_are_refused():
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b", "~/x", "", ".", "a\x00b"):
        assert refusal(al.check_path, bad)[0] == "airlock-path", bad
    assert al.check_path("./results//table.csv") == "results/table.csv"


ACTORS = ["alice", "bob", "steve", "sara", "sam", "mallory", al.SYSTEM]
ACTIONS = st.tuples(
    st.sampled_from(["review", "cancel", "revoke", "release"]),
    st.sampled_from(ACTORS),
    st.sampled_from([al.APPROVE, al.REJECT, "other"]),
    st.sampled_from(["", "a reason"]),
)


@settings(max_examples=400, deadline=None)
@given(
    requester=st.sampled_from(["alice", "sam", "steve"]),
    needed=st.integers(1, 3),
    failed=st.booleans(),
    actions=st.lists(ACTIONS, max_size=12),
)
def test_no_sequence_approves_without_enough_distinct_non_requester_stewards(requester, needed, failed, actions):
    r = req(state=al.CHECKS_DONE, requester=requester, needed=needed, failed=failed)
    for action, user, decision, reason in actions:
        try:
            r = al.apply(r, action, user, decision=decision, reason=reason).request
        except al.AirlockRefusal:
            continue
        if r.state in (al.APPROVED, al.RELEASED):
            approvers = {x.reviewer for x in r.reviews if x.decision == al.APPROVE}
            assert requester not in approvers and approvers <= STEWARDS and len(approvers) >= needed
            assert not any(x.decision == al.REJECT for x in r.reviews)
            if failed:
                assert all(x.reason for x in r.reviews)
        if any(x.decision == al.REJECT for x in r.reviews):
            assert r.state == al.REJECTED
    assert r.state in al.STATES
    assert len({x.reviewer for x in r.reviews}) == len(r.reviews)  # one review per reviewer


def test_a_review_row_from_a_non_steward_never_counts():
    r = req(reviews=[al.Review("mallory", al.APPROVE, ""), al.Review("alice", al.APPROVE, "")])
    assert al.approvals(r) == frozenset()
    r = replace(r, reviews=(*r.reviews, al.Review("steve", al.APPROVE, "")))
    assert al.approvals(r) == {"steve"}


def test_the_property_strategy_does_reach_approval():
    """The property above is not vacuous: its action lists do approve requests (the smallest one shown)."""
    from hypothesis import find

    def approves(actions):
        r = req(needed=2)
        for action, user, decision, reason in actions:
            try:
                r = al.apply(r, action, user, decision=decision, reason=reason).request
            except al.AirlockRefusal:
                continue
        return r.state == al.APPROVED

    found = find(st.lists(ACTIONS, max_size=12), approves, settings=settings(max_examples=2000, database=None))
    assert len(found) == 2 and {(a, d) for a, _, d, _ in found} == {("review", al.APPROVE)}
    assert {u for _, u, _, _ in found} <= STEWARDS - {"alice"} and len({u for _, u, _, _ in found}) == 2
