"""Idle-culling bench: a trace simulation of notebook sessions on a small GPU pool, four policies in one run.

    .venv/bin/python bench/idle.py                      # 200 sessions, two weeks, 16 GPUs, seed 16
    .venv/bin/python bench/idle.py --sessions 400 --gpus 16 --seed 7

Policies (all on the same traces, stepped in 30 s windows):

- ``none``: a server holds its GPU until its user closes it;
- ``http-3600``: jupyterhub-idle-culler's rule, no HTTP activity for 3600 s (an open browser tab is activity);
- ``runai-3600``: Run:ai's idle GPU time limit, consecutive 30 s windows of exactly 0 % for 3600 s;
- ``ours-1800`` / ``ours-3600``: :mod:`quota.idle` itself (``WindowLog`` + ``judge``): every window's peak
  <= 5 % and no busy kernel for the timeout, a warning 600 s before (the simulated user ignores it).

Trace model (all draws from ``random.Random(seed)``; durations in minutes unless said):

- arrival: a uniform day of 14 (weekend days accepted with probability 0.3), hour ~ N(11, 2.5) clipped to
  8-19; the session lasts 1 + Geometric(0.6) working days, at most 3.
- a working day: work blocks of U(45, 180) until the day ends (18:00 + U(0, 150)); later days start at
  09:00 + U(0, 90). A block repeats: a GPU burst LogN(median 6, sigma 0.8) (peak utilisation U(0.4, 1) each
  window), then with p 0.5 a CPU phase in the kernel LogN(median 3, sigma 1) (5 % of them long
  preprocessing, U(40, 120)), then thinking Exp(mean 4) capped at 20 (tab open). After a block the user is
  away: U(45, 150) (meeting, lunch), or with p 0.08 a short break U(12, 25); the tab stays open with p 0.7.
- end of a day: with p 0.25 an unattended training of U(2, 8) h (GPU busy, kernel busy, tab closed), then
  the night until the next day (tab left open with p 0.4).
- the last day: the user closes the server (p 0.7) or forgets it for U(6, 48) h (tab open with p 0.5).
- 30 % of sessions have a noisy GPU: outside bursts, a window peaks at 2 % with p 0.3 (a monitoring poll).
- Work = a GPU burst, a CPU phase or a training (a busy kernel); everything else is idle. A culled session's
  user re-queues for a GPU at their next work; the queue is FIFO over 16 GPUs.

Printed per policy: GPU-hours held idle / allocated GPU-hours, false culls (a cull with work in the next
10 minutes, or during work), all culls, and queue wait (total hours, and saved against ``none``).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from quota import idle  # noqa: E402

W = 30  # seconds per window
GPU, CPU, THINK, AWAY, NIGHT, TRAIN, FORGOT = range(7)
WORK = (GPU, CPU, TRAIN)
DAY = 86400
LOOKAHEAD = 600 // W  # "work in the next 10 minutes"


@dataclass
class Trace:
    arrival: int  # window index
    kinds: bytearray
    http: bytearray  # 1: the hub sees HTTP activity in this window
    peaks: list  # GPU peak utilisation per window


def _windows(minutes: float) -> int:
    return max(1, int(round(minutes * 60 / W)))


def make_trace(rng: random.Random, days: int) -> Trace:
    while True:
        day = rng.randrange(days)
        if day % 7 < 5 or rng.random() < 0.3:
            break
    hour = min(19.0, max(8.0, rng.gauss(11, 2.5)))
    start = day * DAY + int(hour * 3600)
    ndays = 1
    while ndays < 3 and rng.random() > 0.6:
        ndays += 1
    kinds, http = bytearray(), bytearray()

    def add(kind: int, n: int, tab: bool) -> None:
        kinds.extend([kind] * n)
        http.extend([1 if tab else 0] * n)

    t = start
    for d in range(ndays):
        day_end = (start // DAY + d) * DAY + 18 * 3600 + int(rng.uniform(0, 150) * 60)
        while t < day_end:
            block_end = t + rng.uniform(45, 180) * 60
            while t < block_end:
                n = _windows(rng.lognormvariate(math.log(6), 0.8))
                add(GPU, n, True)
                t += n * W
                if rng.random() < 0.5:
                    m = rng.uniform(40, 120) if rng.random() < 0.05 else rng.lognormvariate(math.log(3), 1.0)
                    n = _windows(m)
                    add(CPU, n, True)
                    t += n * W
                n = _windows(min(20.0, rng.expovariate(1 / 4)))
                add(THINK, n, True)
                t += n * W
            n = _windows(rng.uniform(12, 25) if rng.random() < 0.08 else rng.uniform(45, 150))
            add(AWAY, n, rng.random() < 0.7)
            t += n * W
        if rng.random() < 0.25:
            n = _windows(rng.uniform(2, 8) * 60)
            add(TRAIN, n, False)
            t += n * W
        if d + 1 < ndays:
            next_start = (start // DAY + d + 1) * DAY + 9 * 3600 + int(rng.uniform(0, 90) * 60)
            n = max(1, (next_start - t) // W)
            add(NIGHT, n, rng.random() < 0.4)
            t += n * W
    if rng.random() < 0.3:
        add(FORGOT, _windows(rng.uniform(6, 48) * 60), rng.random() < 0.5)
    noisy = rng.random() < 0.3
    peaks = [
        rng.uniform(0.4, 1.0) if k in (GPU, TRAIN) else (0.02 if noisy and rng.random() < 0.3 else 0.0) for k in kinds
    ]
    return Trace(start // W, kinds, http, peaks)


class Policy:
    name = "none"

    def start(self, now: float) -> None: ...

    def cull(self, now: float, peak: float, kernel_busy: bool, http: bool) -> bool:
        return False


class HttpIdle(Policy):
    def __init__(self, timeout: float):
        self.name, self.timeout = f"http-{int(timeout)}", timeout

    def start(self, now):
        self.inactive = 0.0

    def cull(self, now, peak, kernel_busy, http):
        self.inactive = 0.0 if http else self.inactive + W
        return self.inactive >= self.timeout


class ZeroWindows(Policy):
    """Run:ai: each 30 s window of zero utilisation adds 30 s, any utilisation resets."""

    def __init__(self, timeout: float):
        self.name, self.timeout = f"runai-{int(timeout)}", timeout

    def start(self, now):
        self.zero = 0.0

    def cull(self, now, peak, kernel_busy, http):
        self.zero = self.zero + W if peak == 0.0 else 0.0
        return self.zero >= self.timeout


class Ours(Policy):
    """quota.idle as the culler uses it: the exporter's WindowLog for the GPU, judge() with the kernel state."""

    def __init__(self, timeout: float, warn: float = 600.0, threshold: float = 0.05):
        self.name, self.timeout, self.warn, self.threshold = f"ours-{int(timeout)}", timeout, warn, threshold

    def start(self, now):
        self.log, self.clock, self.started = idle.WindowLog(W, self.threshold), idle.Clock(), now

    def cull(self, now, peak, kernel_busy, http):
        self.log.observe(now - W, peak)  # the window that just ended
        view = idle.ServerView(
            "u/", "u", "org", ("G",), self.started, {"G": self.log.idle_seconds(now)}, kernel_busy, self.timeout
        )
        return idle.judge(view, self.clock, now, self.warn).action == idle.CULL


def simulate(traces: list[Trace], gpus: int, make_policy) -> dict:
    n = len(traces)
    pos = [0] * n  # next window of each trace
    state = ["new"] * n  # new, queued, running, detached, done
    queued_at = [0] * n
    policy = [make_policy() for _ in range(n)]
    arrivals = sorted(range(n), key=lambda i: traces[i].arrival)
    queue: deque[int] = deque()
    running: set[int] = set()
    detached: set[int] = set()
    allocated = held_idle = wait = 0.0
    culls = false_culls = 0
    step, a = min(tr.arrival for tr in traces), 0
    while a < n or queue or running or detached:
        while a < n and traces[arrivals[a]].arrival <= step:
            i = arrivals[a]
            state[i], queued_at[i] = "queued", step
            queue.append(i)
            a += 1
        while queue and len(running) < gpus:
            i = queue.popleft()
            wait += (step - queued_at[i]) * W
            state[i] = "running"
            running.add(i)
            policy[i].start(step * W)
        for i in list(running):
            tr, p = traces[i], pos[i]
            if p >= len(tr.kinds):
                running.discard(i)
                state[i] = "done"
                continue
            kind = tr.kinds[p]
            allocated += W
            if kind not in WORK:
                held_idle += W
            pos[i] = p + 1
            if policy[i].cull((step + 1) * W, tr.peaks[p], kind in WORK, bool(tr.http[p])):
                culls += 1
                ahead = tr.kinds[p + 1 : p + 1 + LOOKAHEAD]
                if kind in WORK or any(k in WORK for k in ahead):
                    false_culls += 1
                running.discard(i)
                state[i] = "detached"
                detached.add(i)
        for i in list(detached):
            tr, p = traces[i], pos[i]
            if p >= len(tr.kinds):
                detached.discard(i)
                state[i] = "done"
            elif tr.kinds[p] in WORK:  # the user is back with work: ask for a GPU again
                detached.discard(i)
                state[i], queued_at[i] = "queued", step
                queue.append(i)
            else:
                pos[i] = p + 1
        step += 1
    return {
        "allocated_h": allocated / 3600,
        "idle_h": held_idle / 3600,
        "culls": culls,
        "false_culls": false_culls,
        "wait_h": wait / 3600,
    }


def idle_floor(traces: list[Trace], timeout: int) -> tuple[float, float]:
    """GPU-hours any timeout-based culler must hold idle (each idle run up to the timeout), and work hours."""
    kept = work = 0
    for tr in traces:
        run = 0
        for k in tr.kinds:
            if k in WORK:
                kept += min(run, timeout // W)
                run = 0
                work += 1
            else:
                run += 1
        kept += min(run, timeout // W)
    return kept * W / 3600, work * W / 3600


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--gpus", type=int, default=16)
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    traces = [make_trace(rng, args.days) for _ in range(args.sessions)]
    work_h = sum(sum(1 for k in tr.kinds if k in WORK) for tr in traces) * W / 3600
    print(
        f"{args.sessions} sessions over {args.days} days on {args.gpus} GPUs (seed {args.seed}); "
        f"work in the traces: {work_h:.0f} GPU-hours"
    )
    for timeout in (300, 900, 1800, 3600):
        kept, work = idle_floor(traces, timeout)
        print(
            f"  floor for any policy with a {timeout // 60}-minute timeout: {kept / (kept + work):.1%} idle-held "
            "(every idle gap held up to the timeout, no queueing)"
        )
    policies = [
        Policy,
        lambda: HttpIdle(3600),
        lambda: ZeroWindows(3600),
        lambda: Ours(900),
        lambda: Ours(1800),
        lambda: Ours(3600),
    ]
    rows = []
    for make in policies:
        t0 = time.perf_counter()
        r = simulate(traces, args.gpus, make)
        rows.append((make().name, r, time.perf_counter() - t0))
    base_wait = rows[0][1]["wait_h"]
    print(
        f"{'policy':<12} {'allocated GPU-h':>15} {'held idle GPU-h':>15} {'idle-held':>9} {'false culls':>11} "
        f"{'culls':>6} {'queue wait h':>12} {'wait saved h':>12} {'sim s':>6}"
    )
    for name, r, secs in rows:
        print(
            f"{name:<12} {r['allocated_h']:>15.1f} {r['idle_h']:>15.1f} {r['idle_h'] / r['allocated_h']:>9.1%} "
            f"{r['false_culls']:>11d} {r['culls']:>6d} {r['wait_h']:>12.1f} {base_wait - r['wait_h']:>12.1f} "
            f"{secs:>6.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
