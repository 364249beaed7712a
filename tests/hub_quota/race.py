"""Many GPU spawns at once through a real hub with ``"queue": false``: exactly what the org caps and the free GPUs
allow is granted, every other request is refused at once with the rule that stopped it.

One check for wherever the devices live: the single-host race (tests/hub_quota/test_quota_through_hub.py) and
the swarm hub (tests/swarm/test_swarm_hub.py, devices on three nodes) assert the same outcome with
:func:`check_race`; each then checks its own view of who holds which device (containers, or ledger, service
spec and the container on its node).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gpuhub.core.site import load_site
from quota.store import QuotaStore

ORG_LIMIT, NO_DEVICE = "org-gpu-limit", "no-free-device"


@dataclass(frozen=True)
class Race:
    """The outcome of one burst of spawns: ``granted`` user -> org (its server ready); ``refused`` user ->
    (status, rule, message); ``late``: the refused whose POST answered 202 and whose spawn failed after."""

    granted: dict[str, str]
    refused: dict[str, tuple[int, str, str]]
    seconds: float  # from the first request sent to the last answer
    ready: float  # from the first request sent until every spawn was ready or failed
    late: frozenset[str] = frozenset()


def spawn_at_once(hub, members: Mapping[str, str], options: dict, timeout: float = 300) -> Race:
    """Every user of ``members`` (user -> org) asks for a server with ``options`` at the same moment (one thread
    each; the users exist beforehand, so only the spawns race); returns once each spawn is ready or failed.

    A POST answers 202 when the spawn outlasts JupyterHub's slow_spawn_timeout (10 s; a refusal can, when many
    requests and the shared cores are busy): its outcome is then what the user's progress stream ends with."""
    for u in members:
        hub.ensure_user(u)
    opts = {**options, "queue": False}  # refused at once, not put in line (gpuhub.hub.queue_wait)
    t0 = time.monotonic()
    with ThreadPoolExecutor(len(members)) as pool:
        answers = dict(pool.map(lambda u: (u, hub.spawn(u, opts)), members))
    seconds = time.monotonic() - t0
    refused = {u: (r.status_code, r.headers.get("X-Gpuhub-Rule", ""), _message(r)) for u, r in answers.items()
               if r.status_code not in (201, 202)}  # fmt: skip
    failed = _settle(hub, [u for u in members if u not in refused], t0 + timeout)
    late = {u: _failure(hub, u) for u in failed}
    granted = {u: members[u] for u in members if u not in refused and u not in late}
    return Race(granted, refused | late, seconds, time.monotonic() - t0, frozenset(late))


def _message(r) -> str:
    try:
        return r.json().get("message", "")
    except ValueError:
        return r.text[:300]


def _settle(hub, users: list[str], deadline: float) -> list[str]:
    """Wait until each of ``users``' default server is ready or its spawn ended; return those that failed (one
    listing of all users a second, not one poll per user)."""
    waiting = set(users)
    failed = []
    while waiting:
        for model in hub.api("GET", "/users").json():
            if model["name"] not in waiting:
                continue
            srv = model.get("servers", {}).get("")
            if srv and srv.get("ready"):
                waiting.discard(model["name"])
            elif not srv and not model.get("pending"):
                waiting.discard(model["name"])
                failed.append(model["name"])
        assert time.monotonic() < deadline or not waiting, f"spawns neither ready nor failed: {sorted(waiting)}"
        time.sleep(1)
    return failed


def _failure(hub, user: str) -> tuple[int, str, str]:
    """(status, rule, message) of a failed spawn, from the end of its progress stream ("Spawn failed: HTTP 429:
    error (<the rule's sentence>)": JupyterHub replaces the reason, so the rule is known by its sentence)."""
    with hub.api("GET", f"/users/{user}/server/progress", stream=True, timeout=30) as r:
        events = [json.loads(raw[5:]) for raw in r.iter_lines(decode_unicode=True) if raw and raw.startswith("data:")]
    message = events[-1].get("message", "") if events else ""
    m = re.search(r"HTTP (\d{3}): \S+ \((.*)\)\s*$", message, re.S)
    if not m:
        return 0, "", message
    text = m.group(2)
    rule = ORG_LIMIT if " GPUs in use and " in text else NO_DEVICE if "(free now: " in text else ""
    return int(m.group(1)), rule, text


def check_race(race: Race, members: Mapping[str, str], caps: Mapping[str, int], free: int) -> None:
    """What a user and an operator would see after a race of 1-GPU requests for ``free`` free GPUs:

    - granted in all: min(sum over orgs of min(cap, members), free) — every GPU the caps allow, never more;
    - per org at most its cap; when the caps fit in the free GPUs, exactly min(cap, members) per org;
    - every other request refused with 429 and its rule: ``org-gpu-limit`` (naming the org) only for an org that
      ended at its cap, ``no-free-device`` only when every free GPU was granted.
    """
    asked = Counter(members.values())
    allowed = {org: min(cap, asked[org]) for org, cap in caps.items()}
    got = Counter(race.granted.values())
    detail = (dict(got), race.refused)
    assert len(race.granted) == min(sum(allowed.values()), free), detail
    assert all(got[org] <= caps[org] for org in asked), detail
    if sum(allowed.values()) <= free:
        assert {org: got[org] for org in asked} == allowed, detail
    assert set(race.granted) | set(race.refused) == set(members) and not set(race.granted) & set(race.refused)
    for user, (status, rule, message) in race.refused.items():
        org = members[user]
        assert status == 429 and rule in (ORG_LIMIT, NO_DEVICE), (user, status, rule, message)
        if rule == ORG_LIMIT:
            assert got[org] == caps[org] and f"organization {org} has" in message, (user, message, detail)
        else:
            assert len(race.granted) == free and "free now" in message, (user, message, detail)


def check_refusal_counts(site_path: Path, race: Race, members: Mapping[str, str]) -> None:
    """The operators' refusal counts (``gpuhub quota status``, the operators' page) are the race's refusals, by
    org and rule (a fresh hub: nothing refused before)."""
    store = QuotaStore.from_site(load_site(site_path))
    try:
        counts = store.refusal_counts()
    finally:
        store.engine.dispose()
    assert counts == dict(Counter((members[u], rule) for u, (_, rule, _) in race.refused.items())), counts
