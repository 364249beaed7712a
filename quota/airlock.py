"""The airlock's decisions (pure): request states, the two-person rule, who may see and do what.

A request moves a file out of a project (``export``) or into it (``import``) through quarantine:

    submitted --checks--> checks_done --first approval short of enough--> in_review
    checks_done | in_review --enough approvals--> approved --release (once)--> released
    checks_done | in_review --one reject--> rejected
    submitted | checks_done | in_review --the requester--> cancelled
    approved --a steward, before release--> revoked

Two-person rule: a request is approved only when ``needed`` DIFFERENT stewards of its project, none of them the
requester, approved it (``projects.P.export_approvals``, default 2; ``import_approvals``, default 1). A steward
who is also the requester cannot review it; one reject rejects; approving a request with a failed automatic check
needs a written reason, and so does every reject. :func:`approvals` recounts from the reviews themselves, so a
review row that should never have been written still cannot tip a request over.

Roles come from the caller's name against the request and the project's stewards: the requester, a steward, or
nobody (who sees nothing: ``airlock-not-found``, 404, so a request's existence does not leak across projects).
Every refusal is an :class:`AirlockRule` (ids ``airlock-*``, the ``X-Gpuhub-Rule`` of the REST answer) whose
message names the fix. :func:`apply` is the one reducer the store and the property tests use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum

from quota.policy import BAD_REQUEST, CONFLICT, FORBIDDEN, RuleRefusal

NOT_FOUND, TOO_LARGE = 404, 413
EXPORT, IMPORT = "export", "import"
DIRECTIONS = (EXPORT, IMPORT)
SUBMITTED, CHECKS_DONE, IN_REVIEW = "submitted", "checks_done", "in_review"
APPROVED, REJECTED, CANCELLED, REVOKED, RELEASED = "approved", "rejected", "cancelled", "revoked", "released"
STATES = (SUBMITTED, CHECKS_DONE, IN_REVIEW, APPROVED, REJECTED, CANCELLED, REVOKED, RELEASED)
OPEN = (SUBMITTED, CHECKS_DONE, IN_REVIEW)  # no decision yet
REVIEWABLE = (CHECKS_DONE, IN_REVIEW)
DISCARDED = (REJECTED, CANCELLED, REVOKED)  # the quarantined file is deleted after airlock.retention_days
APPROVE, REJECT = "approve", "reject"
SYSTEM = "gpuhub-airlock"  # the account of the service's own transitions (checks, release)
MAX_REASON = 2000
MAX_WHY = 2000

# audit actions (gpuhub_audit_log.action), one per transition: "airlock.export.submitted", ...
AUDIT_PREFIX = "airlock"


def audit_action(direction: str, state: str) -> str:
    return f"{AUDIT_PREFIX}.{direction}.{state}"


class AirlockRule(Enum):
    """One airlock rule: stable id, HTTP status, message template that says what to do."""

    NOT_FOUND = (
        "airlock-not-found",
        NOT_FOUND,
        "no {direction} request {id} that you may see; requests are shown to their requester and the stewards of "
        "their project only",
    )
    UNKNOWN_PROJECT = ("airlock-unknown-project", BAD_REQUEST, "project {project!r} does not exist; yours: {yours}")
    NOT_MEMBER = (
        "airlock-not-member",
        FORBIDDEN,
        "{user} is not a member of project {project}; only members ask for {direction}s; ask a steward "
        "({stewards}) to add you",
    )
    PROJECT_CLOSED = (
        "airlock-project-closed",
        FORBIDDEN,
        "project {project} is closed (it expired on {expires}); ask a steward to extend it",
    )
    DIRECTION = ("airlock-direction", BAD_REQUEST, "direction must be 'export' or 'import', got {direction!r}")
    BAD_PATH = (
        "airlock-path",
        BAD_REQUEST,
        "path {path!r} {why}; give the file's path relative to your {home}, e.g. results/table.csv",
    )
    NOT_A_FILE = (
        "airlock-not-a-file",
        BAD_REQUEST,
        "{path!r} in your {home} is {what}; name a regular file (not a folder or a link)",
    )
    FILE_TOO_LARGE = (
        "airlock-file-too-large",
        TOO_LARGE,
        "{path!r} is {size} bytes, over the airlock's copy limit of {limit} bytes (airlock.max_copy_mb); "
        "summarise or split it",
    )
    WHY_REQUIRED = (
        "airlock-why-required",
        BAD_REQUEST,
        "say why the file must {verb} the project in 'why' (1 to {limit} characters): the reviewers read it",
    )
    DECISION = ("airlock-decision", BAD_REQUEST, "decision must be 'approve' or 'reject', got {decision!r}")
    NOT_STEWARD = (
        "airlock-not-steward",
        FORBIDDEN,
        "{user} is not a steward of project {project}; only its stewards ({stewards}) {verb} its requests",
    )
    OWN_REQUEST = (
        "airlock-own-request",
        FORBIDDEN,
        "{user} asked for this {direction} and cannot review it (two-person rule); another steward of project "
        "{project} must ({others})",
    )
    ALREADY_REVIEWED = (
        "airlock-already-reviewed",
        CONFLICT,
        "{user} already reviewed {direction} {id} ({decision}); a different steward gives the next approval",
    )
    NOT_REVIEWABLE = (
        "airlock-not-reviewable",
        CONFLICT,
        "{direction} {id} is {state}, not awaiting review{hint}",
    )
    REASON_REQUIRED = (
        "airlock-reason-required",
        BAD_REQUEST,
        "{what} needs a written reason in 'reason' (1 to {limit} characters){why}",
    )
    NOT_REQUESTER = (
        "airlock-not-requester",
        FORBIDDEN,
        "only {requester}, who asked for {direction} {id}, may {verb} it",
    )
    NOT_CANCELLABLE = (
        "airlock-not-cancellable",
        CONFLICT,
        "{direction} {id} is {state}; only a request without a decision can be cancelled",
    )
    NOT_REVOCABLE = (
        "airlock-not-revocable",
        CONFLICT,
        "{direction} {id} is {state}; only an approved request that was not released yet can be revoked",
    )
    NOT_RELEASABLE = (
        "airlock-not-releasable",
        CONFLICT,
        "{direction} {id} is {state}; {hint}",
    )

    def __init__(self, rule_id: str, status: int, template: str):
        self.id, self.status, self.template = rule_id, status, template

    def refuse(self, **facts) -> AirlockRefusal:
        return AirlockRefusal(self, self.template.format(**facts))


class AirlockRefusal(RuleRefusal):
    """An airlock action refused by one :class:`AirlockRule`: ``rule`` (id), ``status``, ``message``."""


@dataclass(frozen=True)
class Review:
    reviewer: str
    decision: str  # APPROVE | REJECT
    reason: str
    at: datetime | None = None


@dataclass(frozen=True)
class Request:
    """What the decisions need to know about a request (the store reads it from its tables)."""

    id: int
    project: str
    direction: str
    requester: str
    state: str
    needed: int  # distinct approving stewards required (the project's export_approvals / import_approvals)
    stewards: frozenset[str]  # the project's stewards when asked
    checks_failed: bool = False
    reviews: tuple[Review, ...] = field(default=())


@dataclass(frozen=True)
class Step:
    """One transition: the request after it, the state moved to, who did it, and why."""

    request: Request
    state: str
    actor: str
    reason: str = ""


def approvals(req: Request) -> frozenset[str]:
    """The reviewers whose approval counts: distinct stewards of the project, never the requester."""
    return frozenset(
        r.reviewer
        for r in req.reviews
        if r.decision == APPROVE and r.reviewer in req.stewards and r.reviewer != req.requester
    )


def _facts(req: Request, **more) -> dict:
    return {"direction": req.direction, "id": req.id, "project": req.project, "state": req.state, **more}


def can_see(req: Request, user: str) -> bool:
    return user == req.requester or user in req.stewards


def check_visible(req: Request, user: str) -> None:
    if not can_see(req, user):
        raise AirlockRule.NOT_FOUND.refuse(**_facts(req))


def _reason(text, what: str, why: str = "") -> str:
    reason = text.strip() if isinstance(text, str) else ""
    if not reason or len(reason) > MAX_REASON:
        raise AirlockRule.REASON_REQUIRED.refuse(what=what, limit=MAX_REASON, why=why)
    return reason


def review(req: Request, user: str, decision, reason, at: datetime | None = None) -> Step:
    """``user`` approves or rejects ``req``; returns the step, or raises the refusal."""
    check_visible(req, user)
    if decision not in (APPROVE, REJECT):
        raise AirlockRule.DECISION.refuse(decision=decision)
    stewards = ", ".join(sorted(req.stewards)) or "(none)"
    if user not in req.stewards:
        raise AirlockRule.NOT_STEWARD.refuse(**_facts(req, user=user, stewards=stewards, verb="review"))
    if user == req.requester:
        others = ", ".join(sorted(req.stewards - {user})) or "the project has no other steward: ask an operator"
        raise AirlockRule.OWN_REQUEST.refuse(**_facts(req, user=user, others=others))
    if req.state not in REVIEWABLE:
        hint = "; wait for the automatic checks" if req.state == SUBMITTED else ""
        raise AirlockRule.NOT_REVIEWABLE.refuse(**_facts(req, hint=hint))
    earlier = next((r for r in req.reviews if r.reviewer == user), None)
    if earlier is not None:
        raise AirlockRule.ALREADY_REVIEWED.refuse(**_facts(req, user=user, decision=earlier.decision))
    if decision == REJECT:
        text = _reason(reason, "a reject", ": the requester reads it")
    elif req.checks_failed:
        text = _reason(reason, "approving over a failed automatic check", ": say why the finding is not disclosive")
    else:
        text = reason.strip() if isinstance(reason, str) else ""
        if len(text) > MAX_REASON:
            raise AirlockRule.REASON_REQUIRED.refuse(what="a reason", limit=MAX_REASON, why="")
    after = replace(req, reviews=(*req.reviews, Review(user, decision, text, at)))
    enough = len(approvals(after)) >= max(1, req.needed)
    state = REJECTED if decision == REJECT else APPROVED if enough else IN_REVIEW
    return Step(replace(after, state=state), state, user, text)


def cancel(req: Request, user: str) -> Step:
    check_visible(req, user)
    if user != req.requester:
        raise AirlockRule.NOT_REQUESTER.refuse(**_facts(req, requester=req.requester, verb="cancel"))
    if req.state not in OPEN:
        raise AirlockRule.NOT_CANCELLABLE.refuse(**_facts(req))
    return Step(replace(req, state=CANCELLED), CANCELLED, user)


def revoke(req: Request, user: str, reason) -> Step:
    check_visible(req, user)
    if user not in req.stewards:
        stewards = ", ".join(sorted(req.stewards)) or "(none)"
        raise AirlockRule.NOT_STEWARD.refuse(**_facts(req, user=user, stewards=stewards, verb="revoke"))
    if req.state != APPROVED:
        raise AirlockRule.NOT_REVOCABLE.refuse(**_facts(req))
    text = _reason(reason, "a revoke", ": the requester and the other stewards read it")
    return Step(replace(req, state=REVOKED), REVOKED, user, text)


def release(req: Request, actor: str = SYSTEM) -> Step:
    """The approved file leaves quarantine, once (by the service, or the requester's one-time download)."""
    if actor != SYSTEM:
        check_visible(req, actor)
        if actor != req.requester:
            raise AirlockRule.NOT_REQUESTER.refuse(**_facts(req, requester=req.requester, verb="receive"))
    if req.state != APPROVED or len(approvals(req)) < max(1, req.needed):
        hints = {
            RELEASED: "it was released once already and is not released again",
            REVOKED: "a steward revoked it; it is never released",
        }
        hint = hints.get(req.state, "only an approved request is released")
        raise AirlockRule.NOT_RELEASABLE.refuse(**_facts(req, hint=hint))
    return Step(replace(req, state=RELEASED), RELEASED, actor)


def checks_done(req: Request, checks_failed: bool) -> Step:
    if req.state != SUBMITTED:
        raise AirlockRule.NOT_REVIEWABLE.refuse(**_facts(req, hint=""))
    after = replace(req, state=CHECKS_DONE, checks_failed=checks_failed)
    return Step(after, CHECKS_DONE, SYSTEM)


def apply(req: Request, action: str, user: str, **kw) -> Step:
    """The one entry for every action: ``review`` (decision=, reason=), ``cancel``, ``revoke`` (reason=),
    ``release``, ``checks`` (checks_failed=)."""
    if action == "review":
        return review(req, user, kw.get("decision"), kw.get("reason"), kw.get("at"))
    if action == "cancel":
        return cancel(req, user)
    if action == "revoke":
        return revoke(req, user, kw.get("reason"))
    if action == "release":
        return release(req, user)
    if action == "checks":
        return checks_done(req, bool(kw.get("checks_failed")))
    raise ValueError(f"unknown airlock action {action!r}")


def check_why(why, direction: str) -> str:
    text = why.strip() if isinstance(why, str) else ""
    if not text or len(text) > MAX_WHY:
        verb = "leave" if direction == EXPORT else "enter"
        raise AirlockRule.WHY_REQUIRED.refuse(verb=verb, limit=MAX_WHY)
    return text


def check_direction(direction) -> str:
    if direction not in DIRECTIONS:
        raise AirlockRule.DIRECTION.refuse(direction=direction)
    return direction


def check_path(path, home: str = "project home") -> str:
    """A path relative to the home, without '..', absolute parts, empty parts or NUL; returns it normalised."""
    if not isinstance(path, str) or not path.strip():
        raise AirlockRule.BAD_PATH.refuse(path=path, why="is empty", home=home)
    if "\x00" in path or len(path) > 1024:
        raise AirlockRule.BAD_PATH.refuse(path=path[:80], why="is not a file path", home=home)
    if path.startswith(("/", "~")):
        raise AirlockRule.BAD_PATH.refuse(path=path, why="is absolute (outside your home)", home=home)
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise AirlockRule.BAD_PATH.refuse(path=path, why="leaves the home ('..')", home=home)
    if not parts:
        raise AirlockRule.BAD_PATH.refuse(path=path, why="names the home itself", home=home)
    return "/".join(parts)


def needed_approvals(project, direction: str) -> int:
    """``projects.P.export_approvals`` / ``import_approvals`` (at least 1)."""
    n = project.export_approvals if direction == EXPORT else project.import_approvals
    return max(1, int(n))
