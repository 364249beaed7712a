"""The culler's core (gpuhub.hub.idle_service.IdleCuller) by time travel, on a real SQLite ledger:
warn, stop through the (fake) hub, ``gpu-idle`` in the ledger once the spawner closed the interval,
and no cull without utilisation data or while a kernel is busy."""

import asyncio
from datetime import UTC, datetime

import pytest

from gpuhub.hub.idle_service import IdleCuller
from gpuhub.hub.idle_state import EXEMPTIONS_FILE, write_json
from quota import db
from quota.policy import AllocationRequest
from quota.store import QuotaStore
from tests.quota.quotakit import make_site

T0 = datetime(2027, 1, 15, 8, 0, tzinfo=UTC)


class World:
    def __init__(self, tmp_path):
        self.now = T0.timestamp()
        self.site = make_site(
            hub={"state_dir": str(tmp_path)}, idle={"window_seconds": 30, "timeout_minutes": 30, "warn_minutes": 10}
        )
        engine = db.make_engine(f"sqlite:///{tmp_path / 'hub.sqlite'}")
        db.upgrade(engine)
        self.store = QuotaStore(engine, self.site, clock=lambda: datetime.fromtimestamp(self.now, UTC))
        self.idle: dict[str, tuple[str, str, float]] = {}  # what the exporter says
        self.kernels: dict[str, bool | None] = {}
        self.stops: list[str] = []
        self.culler = IdleCuller(self.site, self.store, self, self, self, clock=lambda: self.now)

    # the fake hub (stop = what the spawner does: release with "stopped"), exporter and kernels
    async def stop_server(self, user, server):
        self.stops.append(f"{user}/{server}")
        self.store.release(f"{user}/{server}", reason="stopped")

    async def device_idle(self):
        return dict(self.idle)

    async def busy(self, user, server):
        return self.kernels.get(user, False)

    def spawn(self, user, org="lab-a"):
        grant = self.store.allocate(AllocationRequest(user, "", org, "python", 1))
        return grant.devices[0]

    def run(self, minutes, idle_since: dict[str, float]):
        """Tick every 30 s for ``minutes``; device idle seconds grow from ``idle_since`` (Unix)."""
        actions = []
        for _ in range(int(minutes * 2)):
            self.now += 30
            for user, (uuid, since) in idle_since.items():
                self.idle[uuid] = (user, "", max(0.0, self.now - since))
            for v in asyncio.run(self.culler.tick()):
                if v.action:
                    actions.append((round((self.now - T0.timestamp()) / 60, 1), v.key, v.action))
        return actions


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.store.engine.dispose()


def test_warn_then_stop_then_gpu_idle_in_the_ledger(world):
    dev = world.spawn("alice")
    actions = world.run(40, {"alice": (dev, T0.timestamp())})
    assert actions[:2] == [(20.0, "alice/", "warn"), (30.0, "alice/", "cull")]
    assert world.stops == ["alice/"]
    (row,) = world.store.recently_closed(T0)
    assert row["end_reason"] == "gpu-idle" and world.store.holdings() == []
    status = (world.site.hub.state_dir / "idle-status.json").read_text()
    assert '"kind": "gpu"' in status


def test_no_data_a_busy_kernel_or_an_exemption_is_never_culled(world):
    a, b, c = world.spawn("alice"), world.spawn("bob"), world.spawn("carol", "lab-b")
    world.kernels["bob"] = True
    write_json(world.site.hub.state_dir / EXEMPTIONS_FILE, {"servers": {"carol/*": T0.timestamp() + 4 * 3600}})
    since = T0.timestamp()
    world.idle[a] = ("someone-else", "", 5000.0)  # the exporter still sees the previous holder: no data
    actions = world.run(60, {"bob": (b, since), "carol": (c, since)})
    assert actions == [] and world.stops == []
    world.kernels["bob"] = None  # kernels unreadable: not culled on a guess either
    assert world.run(60, {"bob": (b, since)}) == []


def test_a_stop_the_hub_refused_is_asked_again_and_noted_once(world):
    dev = world.spawn("alice")
    refused = []

    async def refuse(user, server):
        refused.append(f"{user}/{server}")  # the hub answered an error: the server keeps running

    world.stop_server = refuse
    world.run(32, {"alice": (dev, T0.timestamp())})
    assert refused == ["alice/"] * 5  # 30, 30.5, 31, 31.5, 32 min
    assert len(world.culler.culled) == 1 and world.store.open_intervals()  # nothing closed, nothing relabelled
