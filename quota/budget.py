"""Monthly budget enforcement (pure): which warnings are due and which servers to stop.

An org's budget is weighted GPU-hours per calendar month (site time zone); usage counts open
intervals up to now. Warnings (site.quota.warn_fractions, default 80 % and 95 %, plus 100 %) are
announced once per org per month. At 100 % running GPU servers get a grace period, then are stopped.

When did the org cross 100 %? We estimate it as ``now - overage / R`` where R is the org's current
burn rate (sum of gpus x weight of its running GPU servers), so "grace expired" is simply
``overage >= R x grace``. Once the budget is spent admission refuses new GPU servers
(policy: remaining <= 0 or < min_remaining_gpu_hours), so R can only fall after the crossing, which
makes the estimate never later than the true crossing time.

Maximum overage bound (weighted GPU-seconds beyond the budget):

    overage <= R_max x (E + G + S)

    R_max = org.gpu_limit x the largest model weight (the concurrent cap bounds the burn rate),
    E = site.quota.enforce_interval_seconds (the enforcer runs at least this often),
    G = site.quota.grace_seconds, S = time to stop a server and close its interval
        (about site.containers.stop_timeout_seconds + a few seconds).

Why: from the true crossing t_c, R is non-increasing, so overage(t) >= R(t) x (t - t_c) and the stop
condition holds for every t >= t_c + G; the first enforcer run after that comes within E; the stop
finishes within S; meanwhile the org burns at most R(t_c) <= R_max. It holds only while the
enforcer runs: while the hub is down nothing is stopped (the reconciler then closes intervals at
Docker's finish times, so the ledger is still exact).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from gpuhub.core.periods import utc

EXHAUSTED = 1.0


@dataclass(frozen=True)
class RunningServer:
    server_key: str
    user: str
    gpus: int
    weight: float

    @property
    def rate(self) -> float:
        """Weighted GPU-seconds burned per second."""
        return self.gpus * self.weight


@dataclass(frozen=True)
class Verdict:
    org: str
    used_gpu_hours: float
    budget_gpu_hours: float
    warnings_due: tuple[float, ...]  # fractions newly crossed (not yet announced), ascending
    over_budget: bool
    over_since: datetime | None  # estimated crossing time (None: not over or nothing running)
    stop_due_at: datetime | None  # when the grace ends
    stop: tuple[str, ...]  # server keys to stop now
    message: str


def thresholds(warn_fractions) -> tuple[float, ...]:
    return tuple(sorted({float(f) for f in warn_fractions if 0 < f < EXHAUSTED} | {EXHAUSTED}))


def evaluate(
    org: str,
    budget_gpu_hours: float,
    used_gpu_seconds: float,
    running: list[RunningServer],
    now: datetime,
    *,
    announced=frozenset(),
    warn_fractions=(0.8, 0.95),
    grace_seconds: float = 300.0,
) -> Verdict:
    """Decide warnings and stops for one org at ``now``."""
    now = utc(now)
    budget_s = budget_gpu_hours * 3600.0
    used_h = used_gpu_seconds / 3600.0
    if budget_s > 0:
        due = tuple(f for f in thresholds(warn_fractions) if used_gpu_seconds >= f * budget_s and f not in announced)
    else:
        due = (EXHAUSTED,) if used_gpu_seconds > 0 and EXHAUSTED not in announced else ()
    over = used_gpu_seconds >= budget_s and (budget_s > 0 or used_gpu_seconds > 0)
    burning = [s for s in running if s.rate > 0]
    rate = sum(s.rate for s in burning)
    over_since = stop_due_at = None
    stop: tuple[str, ...] = ()
    if over and rate > 0:
        overage = used_gpu_seconds - budget_s
        over_since = now - timedelta(seconds=overage / rate)
        stop_due_at = over_since + timedelta(seconds=grace_seconds)
        if overage >= rate * grace_seconds:
            stop = tuple(sorted(s.server_key for s in burning))
    return Verdict(
        org,
        used_h,
        budget_gpu_hours,
        due,
        over,
        over_since,
        stop_due_at,
        stop,
        _message(org, used_h, budget_gpu_hours, over, stop, stop_due_at, grace_seconds),
    )


def _message(org, used_h, budget_h, over, stop, stop_due_at, grace) -> str:
    pct = f" ({100 * used_h / budget_h:.0f} %)" if budget_h > 0 else ""
    head = f"organization {org} has used {used_h:.2f} of {budget_h:g} weighted GPU-hours this month{pct}"
    if stop:
        return (
            f"{head}; the budget is spent and the {grace:g} s grace is over, so its GPU servers are being "
            "stopped; save work on CPU-only servers or ask an operator to raise gpu_hours_per_month"
        )
    if over and stop_due_at is not None:
        return (
            f"{head}; the budget is spent: GPU servers will be stopped at {stop_due_at.isoformat()} "
            "(after the grace period); save your work now"
        )
    if over:
        return f"{head}; the budget is spent: new GPU servers are refused until next month"
    return f"{head}; at 100 % running GPU servers are stopped after a {grace:g} s grace period"


def admission_note(org: str, budget_gpu_hours: float, used_gpu_seconds: float, warn_fractions) -> str | None:
    """A heads-up for a spawn that was admitted while the org is past its first warning threshold."""
    if budget_gpu_hours <= 0:
        return None
    frac = used_gpu_seconds / (budget_gpu_hours * 3600.0)
    crossed = [f for f in thresholds(warn_fractions) if frac >= f]
    if not crossed:
        return None
    used_h = used_gpu_seconds / 3600.0
    return (
        f"organization {org} has used {used_h:.2f} of {budget_gpu_hours:g} weighted GPU-hours this month "
        f"({100 * frac:.0f} %); at 100 % GPU servers are stopped after a grace period"
    )


def overage_bound_gpu_seconds(
    gpu_limit: int, max_weight: float, enforce_interval_seconds: float, grace_seconds: float, stop_seconds: float
) -> float:
    """The documented worst-case overage, R_max x (E + G + S), in weighted GPU-seconds."""
    return gpu_limit * max_weight * (enforce_interval_seconds + grace_seconds + stop_seconds)


def site_overage_bound(site, org_key: str, stop_seconds: float | None = None) -> float:
    """The bound for one org of a loaded site (S defaults to the container stop timeout + 5 s)."""
    org = site.organizations[org_key]
    max_w = max((m.weight for m in site.gpus.models.values()), default=0.0)
    s = stop_seconds if stop_seconds is not None else site.containers.stop_timeout_seconds + 5.0
    return overage_bound_gpu_seconds(
        org.gpu_limit, max_w, site.quota.enforce_interval_seconds, site.quota.grace_seconds, s
    )
