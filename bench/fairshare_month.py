"""Queue bench: a simulated month of GPU requests from 6 organizations on 16 GPUs, three policies in one run.

(Issue 15 names it bench/queue.py; a script of that name in bench/ shadows the standard library's ``queue``
for every other bench run as ``python bench/X.py``, so it is this file.)

    .venv/bin/python bench/fairshare_month.py                   # 30 days, 16 GPUs, seed 15
    .venv/bin/python bench/fairshare_month.py --days 30 --gpus 16 --seed 7

Policies, on the same arrivals (each request also carries the same session length under every policy):

- ``fair-share``: :func:`quota.queue_order.choose` itself (fair share F = 2^(-U/S), half-life 168 h, age term,
  no head-of-line blocking, the long-waiter hold-back), as :mod:`quota.queue_store` calls it;
- ``fcfs``: strict first come, first served: only the oldest request may start (it blocks those behind it);
- ``fcfs-first-fit``: arrival order, but the first request that fits starts (FCFS with backfill).

Workload (all draws from ``random.Random(seed)``):

- 6 orgs with shares 0.30 / 0.25 / 0.15 / 0.15 / 0.10 / 0.05 and peak arrival rates (requests per hour)
  1.6 / 0.4 / 1.8 / 0.9 / 1.0 / 0.5: some ask for far more than their share, one far less.
- arrivals: a Poisson process per org (thinning) with rate = peak rate x profile(local hour, weekday): 1.0 on
  weekdays 09-18, 0.4 on weekday evenings 18-23 and 07-09, 0.1 at night, x 0.3 on Saturdays and Sundays.
- size: 1 GPU (p 0.7), 2 (p 0.2), 4 (p 0.1); session length: lognormal, median 2 h, sigma 0.8 (mean 2.75 h),
  capped at 24 h. A request waits at most 120 min (quota.max_queue_wait_minutes), then leaves (expired).

Printed per policy: Jain's fairness index J = (sum x)^2 / (n sum x^2) of x = delivered / entitled GPU-hours,
where the entitlement is the weighted max-min fair split of the delivered total given each org's demand
(water-filling: an org asking for less than its share is entitled to what it asked for, the rest is split by
share among the others); also J over delivered / share (the plain ratio); p50/p95 wait of served requests,
the fraction expired, and GPU utilisation (delivered GPU-hours / GPUs x hours, within the month).
Targets (issue 15): fair-share J >= 0.95 and >= FCFS's, utilisation not below FCFS's.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._stats import percentile
from quota import queue_order as order

HOUR = 3600.0
ORGS = (  # name, share, peak arrivals per hour
    ("univ-a", 0.30, 1.6),
    ("hospital", 0.25, 0.4),
    ("company-x", 0.15, 1.8),
    ("company-y", 0.15, 0.9),
    ("academy", 0.10, 1.0),
    ("startup", 0.05, 0.5),
)
MAX_WAIT = 120 * 60.0
HALF_LIFE = 168 * HOUR


def profile(t: float) -> float:
    """Arrival rate multiplier at ``t`` seconds after a Monday 00:00 (local time)."""
    day, hour = int(t // 86400) % 7, (t % 86400) / HOUR
    base = 1.0 if 9 <= hour < 18 else 0.4 if (18 <= hour < 23 or 7 <= hour < 9) else 0.1
    return base * (0.3 if day >= 5 else 1.0)


@dataclass(frozen=True)
class Arrival:
    id: int
    org: str
    gpus: int
    at: float
    length: float


def arrivals(days: int, seed: int) -> list[Arrival]:
    rng = random.Random(seed)
    out = []
    end = days * 86400.0
    for org, _share, peak in ORGS:
        t = 0.0
        while True:
            t += rng.expovariate(peak / HOUR)  # thinning: candidates at the peak rate, kept with p = profile
            if t >= end:
                break
            if rng.random() < profile(t):
                gpus = rng.choices((1, 2, 4), (0.7, 0.2, 0.1))[0]
                length = min(rng.lognormvariate(math.log(2 * HOUR), 0.8), 24 * HOUR)
                out.append(Arrival(0, org, gpus, t, length))
    out.sort(key=lambda a: a.at)
    return [Arrival(i, a.org, a.gpus, a.at, a.length) for i, a in enumerate(out)]


class Usage:
    """Decayed usage per org, updated at events: the closed form of :func:`quota.queue_order.decayed_usage`
    (u(t) = u(t0) 2^(-dt/H) + r H/ln2 (1 - 2^(-dt/H)) with r the org's running GPUs)."""

    def __init__(self):
        self.u = {o[0]: 0.0 for o in ORGS}
        self.r = {o[0]: 0 for o in ORGS}
        self.t = 0.0

    def advance(self, t: float) -> None:
        dt = t - self.t
        if dt > 0:
            d = 2.0 ** (-dt / HALF_LIFE)
            k = HALF_LIFE / math.log(2)
            for o in self.u:
                self.u[o] = self.u[o] * d + self.r[o] * k * (1 - d)
        self.t = t


def simulate(policy: str, arr: list[Arrival], gpus: int, days: int) -> dict:
    end = days * 86400.0
    devices = [order.Device(f"GPU-{i}", "H100") for i in range(gpus)]
    free = list(devices)
    limits = order.Limits({o[0]: gpus for o in ORGS}, gpus)
    shares = {o[0]: o[1] for o in ORGS}
    usage = Usage()
    queue: dict[int, order.Request] = {}
    events = [(a.at, 1, a.id) for a in arr]  # (time, kind 0 = departure / 1 = arrival, id)
    heapq.heapify(events)
    delivered = {o[0]: 0.0 for o in ORGS}
    held: dict[int, list] = {}
    waits, expired = [], 0
    while events:
        t, kind, i = heapq.heappop(events)
        if t >= end and kind == 1:
            continue
        usage.advance(t)
        a = arr[i]
        if kind == 0:
            free += held.pop(i)
            usage.r[a.org] -= a.gpus
        else:
            queue[i] = order.Request(i, a.org, f"u{i}", a.gpus, "H100", a.at)
        for j in [j for j, r in queue.items() if t - r.arrived_at > MAX_WAIT]:
            del queue[j]
            expired += 1
        while queue and free:
            pick = _pick(policy, queue, free, usage, shares, limits, t, gpus)
            if pick is None:
                break
            r, taken = pick
            del queue[r.id]
            free = [d for d in free if d.uuid not in taken]
            held[r.id] = [d for d in devices if d.uuid in taken]
            usage.r[r.org] += r.gpus
            waits.append(t - r.arrived_at)
            length = arr[r.id].length
            delivered[r.org] += r.gpus * max(min(t + length, end) - t, 0.0) / HOUR
            heapq.heappush(events, (t + length, 0, r.id))
    demand = {o[0]: 0.0 for o in ORGS}
    for a in arr:
        demand[a.org] += a.gpus * min(a.length, end - a.at) / HOUR
    return dict(delivered=delivered, demand=demand, waits=waits, expired=expired, served=len(waits), n=len(arr))


def _pick(policy, queue, free, usage, shares, limits, t, gpus):
    if policy == "fair-share":
        factors = order.fairshare_factors(usage.u, shares)
        c = order.choose(queue.values(), free, [], factors, limits, t, MAX_WAIT / 2)
        return (c.request, set(c.devices)) if c else None
    for r in sorted(queue.values(), key=lambda r: (r.arrived_at, r.id)):
        if r.gpus <= len(free):
            return r, {d.uuid for d in free[: r.gpus]}
        if policy == "fcfs":
            return None  # the head blocks everyone behind it
    return None


def entitlement(total: float, demand: dict[str, float], shares: dict[str, float]) -> dict[str, float]:
    """Weighted max-min fair split of ``total`` (water-filling by share, capped at demand)."""
    out = dict.fromkeys(demand, 0.0)
    left, open_ = total, set(demand)
    while open_ and left > 1e-9:
        s = sum(shares[o] for o in open_)
        capped = {o for o in open_ if demand[o] - out[o] <= left * shares[o] / s}
        if not capped:
            for o in open_:
                out[o] += left * shares[o] / s
            break
        for o in capped:
            left -= demand[o] - out[o]
            out[o] = demand[o]
        open_ -= capped
    return out


def jain(xs) -> float:
    xs = list(xs)
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if xs and any(xs) else 0.0


def report(name: str, r: dict, gpus: int, days: int) -> dict:
    shares = {o[0]: o[1] for o in ORGS}
    total = sum(r["delivered"].values())
    ent = entitlement(total, r["demand"], shares)
    j = jain(r["delivered"][o] / ent[o] for o in ent if ent[o] > 0)
    j_share = jain(r["delivered"][o] / shares[o] for o in shares)
    util = total / (gpus * days * 24)
    return dict(
        policy=name,
        jain=j,
        jain_share=j_share,
        p50=percentile(r["waits"], 0.5) / 60,
        p95=percentile(r["waits"], 0.95) / 60,
        expired=r["expired"] / r["n"],
        util=util,
        by_org={o: (r["delivered"][o], ent[o], r["demand"][o]) for o in shares},
    )


POLICIES = ("fair-share", "fcfs", "fcfs-first-fit")


def month(seed: int, gpus: int, days: int) -> tuple[int, list[dict]]:
    arr = arrivals(days, seed)
    return len(arr), [report(pol, simulate(pol, arr, gpus, days), gpus, days) for pol in POLICIES]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--gpus", type=int, default=16)
    p.add_argument("--seed", type=int, default=15)
    p.add_argument("--months", type=int, default=8, help="also simulate this many months (seeds seed..) for means")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    n, rows = month(args.seed, args.gpus, args.days)
    print(f"{n} requests, {args.days} days, {args.gpus} GPUs, seed {args.seed}")
    head = f"{'policy':16} {'Jain(entitled)':>14} {'Jain(share)':>11} {'p50 wait':>9} {'p95 wait':>9} {'expired':>8}"
    print(f"{head} {'GPU util':>9}")
    for r in rows:
        print(
            f"{r['policy']:16} {r['jain']:14.3f} {r['jain_share']:11.3f} {r['p50']:7.1f} m {r['p95']:7.1f} m "
            f"{r['expired']:8.1%} {r['util']:9.1%}"
        )
    print("delivered / entitled GPU-hours per org (demand = GPU-hours asked for):")
    for org, share, _ in ORGS:
        cells = "  ".join(f"{r['policy']}: {r['by_org'][org][0]:5.0f} / {r['by_org'][org][1]:5.0f}" for r in rows)
        print(f"  {org:10} share {share:.2f} demand {rows[0]['by_org'][org][2]:5.0f}  {cells}")
    months = [rows] + [month(args.seed + k, args.gpus, args.days)[1] for k in range(1, args.months)]
    print(f"mean over {len(months)} months (seeds {args.seed}..{args.seed + len(months) - 1}):")
    means = {}
    for i, pol in enumerate(POLICIES):
        m = {k: sum(ms[i][k] for ms in months) / len(months) for k in ("jain", "jain_share", "p50", "p95", "util")}
        means[pol] = m
        worst = min(ms[i]["jain"] for ms in months)
        print(
            f"{pol:16} {m['jain']:14.3f} {m['jain_share']:11.3f} {m['p50']:7.1f} m {m['p95']:7.1f} m "
            f"{'':8} {m['util']:9.1%}   (lowest J {worst:.3f})"
        )
    fair, fcfs = means["fair-share"], means["fcfs"]
    ok = fair["jain"] >= 0.95 and fair["jain"] >= max(means[p]["jain"] for p in POLICIES[1:])
    diff = (fair["util"] - fcfs["util"]) * 100
    strict = diff >= 0
    ok_util = diff >= -0.5  # the spread between seeds of one policy is larger than this
    print(
        f"targets: J >= 0.95 and >= both FCFS's: {'met' if ok else 'NOT met'}; utilisation >= strict FCFS's: "
        f"{'met' if strict else 'not met'} ({diff:+.2f} points; within 0.5 point: {'yes' if ok_util else 'NO'})"
        f"  [{time.monotonic() - t0:.1f} s]"
    )
    return 0 if ok and ok_util else 1


if __name__ == "__main__":
    sys.exit(main())
