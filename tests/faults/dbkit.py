"""Helpers for the database fault tests: a private PostgreSQL cluster, Docker's own lifecycle times, the ledger."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.harness import ROOT
from tests.procs import free_port


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of this test alone (scripts/postgres.sh on its own port and directory): stopping it
    never touches the shared test cluster on 55432."""

    port: int
    dir: Path
    url: str = ""

    def _run(self, *args: str) -> str:
        env = {"GPUHUB_PG_PORT": str(self.port), "GPUHUB_PG_DB": "gpuhub_fault", "PATH": "/usr/bin:/bin:/usr/sbin"}
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "postgres.sh"), *args, str(self.dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip()

    def start(self) -> str:
        self.url = self._run("start").splitlines()[-1]
        return self.url

    def stop(self) -> None:
        self._run("stop")

    @classmethod
    def create(cls) -> PrivateCluster:
        port = free_port()
        return cls(port, Path(f"/var/lib/postgresql/gpuhub-fault-{port}"))

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


class DockerLifecycles:
    """Docker's own start and die times of ``instance``'s server containers, streamed live from the engine's
    event API (its history keeps only the last few hundred events, too few on a busy engine)."""

    def __init__(self, client, instance: str):
        self.events: list[dict] = []
        self._stream = client.events(decode=True, filters={"type": "container", "label": f"gpuhub.hub={instance}"})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for ev in self._stream:
                self.events.append(ev)
        except Exception:  # noqa: BLE001 - the stream ends when closed
            pass

    def runs(self) -> dict[str, list[tuple[datetime, datetime | None]]]:
        """Per server key, (start, die) of every container run seen so far."""
        time.sleep(1)  # let the last events arrive
        out: dict[str, list] = {}
        for ev in list(self.events):
            action = ev.get("Action") or ev.get("status")
            attrs = ev.get("Actor", {}).get("Attributes", {})
            if not attrs.get("gpuhub.user"):
                continue  # the hub's short-lived helper containers (home volume setup) are not servers
            key = f"{attrs['gpuhub.user']}/{attrs.get('gpuhub.server', '')}"
            at = datetime.fromtimestamp(ev["timeNano"] / 1e9, UTC)
            if action == "start":
                out.setdefault(key, []).append([at, None])
            elif action == "die" and out.get(key) and out[key][-1][1] is None:
                out[key][-1][1] = at
        return {k: [tuple(p) for p in v] for k, v in out.items()}

    def close(self) -> None:
        self._stream.close()


def ledger(site_path, since: datetime) -> dict[str, list[dict]]:
    """Every interval (open or closed since ``since``) per server key, read straight from the hub database."""
    from gpuhub.core.site import load_site
    from quota.store import QuotaStore

    store = QuotaStore.from_site(load_site(site_path))
    try:
        rows = store.recently_closed(since) + store.open_intervals()
    finally:
        store.engine.dispose()
    out: dict[str, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["started_at"]):
        out.setdefault(r["server_key"], []).append(r)
    return out


def compare(docker_runs: dict, rows: dict, start_slack_s: float, end_slack_s: float) -> tuple[list[str], dict]:
    """Match each Docker run with one interval: the problems (lost, duplicated, wrong times) and the worst errors."""
    problems, worst = [], {"start_error_s": 0.0, "end_error_s": 0.0}
    for key in sorted(set(docker_runs) | set(rows)):
        runs, ivs = docker_runs.get(key, []), rows.get(key, [])
        if len(runs) != len(ivs):
            problems.append(f"{key}: Docker ran it {len(runs)} times, the ledger has {len(ivs)} intervals")
            continue
        for (start, die), iv in zip(runs, ivs, strict=True):
            s_err = (start - iv["started_at"]).total_seconds()  # the interval opens just before the container
            worst["start_error_s"] = max(worst["start_error_s"], abs(s_err))
            if not 0 <= s_err <= start_slack_s:
                problems.append(f"{key}: container started {start}, interval {iv['started_at']}")
            if die is None or iv.get("ended_at") is None:
                if (die is None) != (iv.get("ended_at") is None):
                    problems.append(f"{key}: container died {die}, interval ended {iv.get('ended_at')}")
                continue
            e_err = (iv["ended_at"] - die).total_seconds()
            worst["end_error_s"] = max(worst["end_error_s"], abs(e_err))
            if abs(e_err) > end_slack_s:
                problems.append(
                    f"{key}: container died {die}, interval ended {iv['ended_at']} "
                    f"({e_err:+.1f} s, {iv.get('end_reason')})"
                )
    return problems, {k: round(v, 2) for k, v in worst.items()}
