"""The idle warning inside JupyterLab (images/base-notebook/gpuhub-lab + gpuhub.hub.idle_service.LabNotice).

- the notice's payload, and what the culler sends when (on the fake world of test_culler);
- :class:`LabNotice` against a local HTTP server (method, path through the proxy, token, body);
- the committed JupyterLab build is the one of the package's source (``make lab-extension``);
- through the real hub, Docker, the GPU exporter over the NVML double and a real browser (Playwright +
  Debian chromium): alice's GPU goes idle, the warning appears in her JupyterLab page (text asserted,
  screenshot under tests/artifacts/idle/), then her server is stopped with ``end_reason: gpu-idle``;
  bob's GPU goes busy again and the warning leaves his page.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import re
import threading
import time
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import docker
import pytest
import requests
import yaml
from prometheus_client.registry import CollectorRegistry

from exporters.gpu import build_gpu_exporter
from exporters.server import serve
from exporters.testing import FakeGpu, FakeNvmlSource
from gpuhub.core.site import parse_site
from gpuhub.hub.idle_service import IdleCuller, LabNotice, notice_payload
from quota import idle
from tests.browser.kit import browser  # noqa: F401 - the browser fixture (Debian chromium)
from tests.harness import ROOT, HubProcess
from tests.idle.test_culler import T0, World
from tests.idle.test_idle_through_hub import CONFIG, EPOCH, GPUS, idle_site, ledger, running, wait_for
from tests.procs import module_failed

LAB = ROOT / "images" / "base-notebook" / "gpuhub-lab"
ARTIFACTS = ROOT / "tests" / "artifacts" / "idle"


# ---------------------------------------------------------------- payload and the culler's calls


def test_notice_payload_names_the_gpus_since_when_idle_and_the_stop_time():
    v = idle.Verdict("alice/train", 1200.0, 1800.0, idle.WARN, warn_at=5000.0, cull_at=5600.0)
    assert notice_payload(v, ("GPU-a", "GPU-b"), now=5000.0) == {
        "gpus": ["GPU-a", "GPU-b"],
        "idle_since": 3800.0,
        "cull_at": 5600.0,
        "server": "train",
    }
    default = idle.Verdict("bob/", 600.0, 600.0, idle.WARN, cull_at=5600.0)
    assert notice_payload(default, ["GPU-c"], now=5000.0)["server"] == ""


def lab_notice_module():
    """gpuhub_lab.notice from the image's source (the hub's venv does not install gpuhub-lab)."""
    spec = importlib.util.spec_from_file_location("gpuhub_lab_notice", LAB / "gpuhub_lab" / "notice.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_extension_accepts_the_hubs_payload_and_names_the_rule_it_refuses():
    validate = lab_notice_module().validate
    v = idle.Verdict("alice/", 1200.0, 1800.0, idle.WARN, warn_at=5000.0, cull_at=5600.0)
    payload = notice_payload(v, ("GPU-a",), now=5000.0)
    assert validate(json.loads(json.dumps(payload))) == payload
    for body, rule in [
        ([], "the body must be a JSON object"),
        ({**payload, "gpus": []}, "gpus must be a list of 1..64 GPU ids"),
        ({**payload, "gpus": "GPU-a"}, "gpus must be a list"),
        ({**payload, "cull_at": "soon"}, "cull_at must be a number (Unix seconds)"),
        ({**payload, "idle_since": True}, "idle_since must be a number"),
        ({**payload, "cull_at": 1.0}, "cull_at must not be before idle_since"),
    ]:
        with pytest.raises(ValueError, match=re.escape(rule)):
            validate(body)


class FakeLab:
    def __init__(self, answers: list[bool] | None = None):
        self.calls: list[tuple[str, dict | None]] = []
        self.answers = answers or []

    async def send(self, user, server, notice):
        self.calls.append((f"{user}/{server}", notice))
        return self.answers.pop(0) if self.answers else True


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    w.lab = FakeLab()
    w.culler = IdleCuller(w.site, w.store, w, w, w, clock=lambda: w.now, lab=w.lab)
    yield w
    w.store.engine.dispose()


def test_culler_posts_the_notice_on_warning_and_deletes_it_on_cull(world):
    dev = world.spawn("alice")
    world.run(40, {"alice": (dev, T0.timestamp())})
    (warn, clear) = world.lab.calls
    assert warn[0] == "alice/" and warn[1]["gpus"] == [dev]
    assert warn[1]["idle_since"] == pytest.approx(T0.timestamp(), abs=30)  # idle since the start
    assert warn[1]["cull_at"] == pytest.approx(T0.timestamp() + 30 * 60, abs=30)  # timeout 30 min
    assert clear == ("alice/", None) and world.stops == ["alice/"]


def test_activity_clears_the_notice_and_an_unreachable_server_is_asked_again(world):
    dev = world.spawn("bob")
    world.lab.answers = [False, True]  # the first POST does not reach the server
    world.run(21, {"bob": (dev, T0.timestamp())})  # warned at 20 min
    assert [(k, n is not None) for k, n in world.lab.calls] == [("bob/", True), ("bob/", True)]
    world.run(1, {"bob": (dev, world.now)})  # the GPU is busy again
    assert world.lab.calls[-1] == ("bob/", None) and len(world.lab.calls) == 3
    assert world.stops == []


# ---------------------------------------------------------------- LabNotice over HTTP


class Recorder(BaseHTTPRequestHandler):
    seen: list = []
    code = 200

    def _answer(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Recorder.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        self.send_response(Recorder.code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_DELETE = _answer

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    Recorder.seen, Recorder.code = [], 200
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()


def test_lab_notice_posts_and_deletes_through_the_proxy_with_the_service_token(recorder):
    lab = LabNotice(f"http://127.0.0.1:{recorder.server_port}/", "svc-token")
    notice = {"gpus": ["GPU-x"], "idle_since": 1.0, "cull_at": 2.0, "server": "my run"}
    assert asyncio.run(lab.send("kim.j", "my run", notice)) is True
    assert asyncio.run(lab.send("kim.j", "", None)) is True
    (post, delete) = Recorder.seen
    assert post[:3] == ("POST", "/user/kim.j/my%20run/gpuhub/notice", "token svc-token")
    assert json.loads(post[3]) == notice
    assert delete[:3] == ("DELETE", "/user/kim.j/gpuhub/notice", "token svc-token")
    Recorder.code = 404  # an image without gpuhub-lab: answered, nothing to retry
    assert asyncio.run(lab.send("kim.j", "", None)) is True
    Recorder.code = 503  # the proxy cannot reach it (yet): retry
    assert asyncio.run(lab.send("kim.j", "", None)) is False
    port = recorder.server_port
    recorder.shutdown()
    recorder.server_close()
    assert asyncio.run(LabNotice(f"http://127.0.0.1:{port}", "t", timeout=2).send("kim.j", "", None)) is False


# ---------------------------------------------------------------- the committed build


def test_committed_lab_build_is_the_one_of_the_source():
    src = json.loads((LAB / "package.json").read_text())
    built = json.loads((LAB / "gpuhub_lab" / "labextension" / "package.json").read_text())
    project = tomllib.loads((LAB / "pyproject.toml").read_text())["project"]
    assert (built["name"], built["version"]) == (src["name"], src["version"]) == ("gpuhub-lab", project["version"])
    entry = LAB / "gpuhub_lab" / "labextension" / built["jupyterlab"]["_build"]["load"]
    assert entry.is_file(), f"{entry} missing: run `make lab-extension` and commit gpuhub_lab/labextension/"
    recorded = (LAB / "gpuhub_lab" / "labextension" / "gpuhub-source.sha256").read_text().split("\n")
    for line in filter(None, recorded):
        digest, name = line.split()
        assert hashlib.sha256((LAB / name).read_bytes()).hexdigest() == digest, (
            f"{name} changed since the committed build: run `make lab-extension` and commit the result"
        )
    assert {line.split()[1] for line in recorded if line} == {"package.json"} | {
        f"src/{p.name}" for p in (LAB / "src").glob("*.js")
    }
    lock = (LAB / "package-lock.json").read_text()
    assert '"resolved"' not in lock  # no registry URLs in the repository


# ---------------------------------------------------------------- through the hub, in a real browser

IDLE_TIMEOUT_S, IDLE_WARN_S = 40.0, 30.0  # the warning stays up longer than one 20 s poll of the page
NOTICE = re.compile(r"idle for .+: this server stops at .+ \(in .+\) unless a GPU or a kernel is busy again")


@pytest.fixture(scope="module")
def lab_world(request, tmp_path_factory, docker_client):
    """test_idle_through_hub's hub (its site and config), with a warning longer than the page's poll."""
    tmp = tmp_path_factory.mktemp("labnotice")
    gpus = {u: FakeGpu(u, utilization=100, memory_used=2 << 30) for u in GPUS}  # busy until the pages are up
    hub = HubProcess(tmp)
    exporter_site = parse_site(idle_site(hub.instance, hub.port, hub.state), tmp / "site.yaml")
    registry, sampler = build_gpu_exporter(
        exporter_site, docker.from_env(), FakeNvmlSource(list(gpus.values())), registry=CollectorRegistry(),
        interval=0.2, containers_interval=0.5,
    )  # fmt: skip
    sampler.start()
    metrics = serve(registry, "127.0.0.1:0")
    hub.site = idle_site(hub.instance, hub.port, hub.state, f"http://127.0.0.1:{metrics.port}")
    hub.site["idle"].update(timeout_minutes=IDLE_TIMEOUT_S / 60, warn_minutes=IDLE_WARN_S / 60)
    hub.site["hub"]["bind_url"] = hub.url
    hub.site_path.write_text(yaml.safe_dump(hub.site))
    hub.config_file = tmp / "idle_jupyterhub_config.py"
    hub.config_file.write_text(CONFIG)
    try:
        hub.start()
        yield hub, gpus
    finally:
        if module_failed(request):
            print(hub.dump_logs())
        hub.cleanup()
        metrics.close()
        sampler.stop()


def open_lab(chromium, hub, user):
    ctx = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = ctx.new_page()
    page.set_default_timeout(90_000)
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.password)
    page.click("#login_submit")
    page.wait_for_url(lambda url: "/hub/login" not in url)  # the hub home, or straight on to the running server
    page.goto(f"{hub.url}/user/{user}/lab")
    page.wait_for_selector(".jp-Launcher")
    return page


def held_gpu(hub, user) -> str:
    store = ledger(hub)
    try:
        (row,) = [r for r in store.open_intervals() if r["user"] == user]
        return row["device_uuids"]
    finally:
        store.engine.dispose()


@pytest.mark.docker
def test_idle_warning_shows_in_jupyterlab_then_the_server_stops_with_gpu_idle(lab_world, browser):  # noqa: F811
    hub, gpus = lab_world
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for user in ("alice", "bob"):
        assert hub.spawn(user, {"image": "python", "gpus": 1}).status_code in (201, 202)
    for user in ("alice", "bob"):
        hub.wait_ready(user)
    dev = {user: held_gpu(hub, user) for user in ("alice", "bob")}
    pages = {user: open_lab(browser, hub, user) for user in ("alice", "bob")}
    assert pages["alice"].get_by_text(NOTICE).count() == 0  # busy GPUs: no warning
    notice_url = f"{hub.url}/user/alice/gpuhub/notice"
    own = {"Authorization": f"token {hub.user_token('alice')}"}
    assert requests.get(notice_url, headers=own, timeout=10).json() == {"notice": None}

    for user in ("alice", "bob"):
        gpus[dev[user]].utilization = 0  # both GPUs idle from now: warned after 10 s, culled after 40 s
    started = time.monotonic()
    toasts = {}
    for user in ("alice", "bob"):
        toasts[user] = pages[user].get_by_text(NOTICE).first
        toasts[user].wait_for(timeout=60_000)  # on the page's next poll (every 20 s)
    shown_after = time.monotonic() - started
    text = toasts["alice"].inner_text()
    pages["alice"].wait_for_timeout(1000)  # the toast's slide-in
    pages["alice"].screenshot(path=ARTIFACTS / "lab-01-idle-warning.png")
    assert text.startswith(f"GPU {dev['alice']} idle for ") and "this server stops at" in text, text
    assert dev["bob"] in toasts["bob"].inner_text()

    # only the hub sets it: the user's own token reads it but may not change it
    seen = requests.get(notice_url, headers=own, timeout=10).json()["notice"]
    assert seen["gpus"] == [dev["alice"]] and seen["cull_at"] > time.time() - 5
    r = requests.delete(notice_url, headers=own, timeout=10)
    assert r.status_code == 403 and "only the hub's idle service" in r.text
    assert requests.get(notice_url, timeout=10).status_code == 403  # no token, no notice

    gpus[dev["bob"]].utilization = 100  # bob works again: his warning goes away
    toasts["bob"].wait_for(state="detached", timeout=45_000)
    pages["bob"].screenshot(path=ARTIFACTS / "lab-02-busy-again-cleared.png")

    wait_for("alice's server stopped", lambda: not running(hub, "alice"), IDLE_TIMEOUT_S + 30, hub)
    culled_after = time.monotonic() - started
    stopped = pages["alice"].get_by_text("This server was stopped: ").first
    stopped.wait_for(timeout=45_000)  # her page's next poll finds the server gone
    assert f"GPU {dev['alice']} idle" in stopped.inner_text() and "home folder is kept" in stopped.inner_text()
    pages["alice"].screenshot(path=ARTIFACTS / "lab-03-stopped.png")
    store = ledger(hub)
    (row,) = [r for r in store.recently_closed(EPOCH) if r["user"] == "alice"]
    store.engine.dispose()
    assert row["end_reason"] == "gpu-idle" and row["device_uuids"] == dev["alice"]
    assert running(hub, "bob")
    print(f"warning shown {shown_after:.1f} s after the GPUs went idle; alice culled after {culled_after:.1f} s")
    assert IDLE_TIMEOUT_S - 5 < culled_after < IDLE_TIMEOUT_S + 30


@pytest.mark.docker
def test_the_notice_endpoint_names_what_it_refuses_and_drops_a_stale_notice(lab_world):
    hub, gpus = lab_world
    for gpu in gpus.values():
        gpu.utilization = 100  # carol's GPU, whichever she gets, stays busy: no warning of the hub's own
    assert hub.spawn("carol", {"image": "python", "gpus": 1}).status_code in (201, 202)
    hub.wait_ready("carol")
    url = f"{hub.url}/user/carol/gpuhub/notice"
    service = {"Authorization": f"token {hub.admin_token}"}  # a hub service (gpuhub-automation) token
    r = requests.post(url, headers=service, json={"gpus": [], "idle_since": 1, "cull_at": 2}, timeout=10)
    assert r.status_code == 400 and "gpus must be a list of 1..64 GPU ids" in r.text
    now = time.time()
    stale = {"gpus": ["GPU-x"], "idle_since": now - 2000, "cull_at": now - 400}  # its stop time long past
    assert requests.post(url, headers=service, json=stale, timeout=10).status_code == 200
    carol = {"Authorization": f"token {hub.user_token('carol')}"}
    assert requests.get(url, headers=carol, timeout=10).json() == {"notice": None}
    assert requests.delete(url, headers=service, timeout=10).status_code == 204
