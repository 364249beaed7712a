"""The researcher's side inside the real image (gpuhub/base-notebook): ``gpuhub-export`` in a terminal and the
file browser's "Request export…" in JupyterLab (real Chromium), against a stand-in for gpuhub-airlock on the
Docker bridge's gateway (the host address a container reaches).

The container gets what a project server gets from the hub for the airlock (``GPUHUB_PROJECT``,
``GPUHUB_AIRLOCK_URL``, its own ``JUPYTERHUB_API_TOKEN``) and runs JupyterLab with a token instead of the hub's
login, so these tests need neither a hub nor a project network; the path through the hub is
tests/airlock/test_export_hub.py. Screenshots: tests/artifacts/airlock/.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from gpuhub.host import images
from gpuhub.host.dockerenv import _facts  # the one reader of Docker's IPAM block
from tests.airlock.test_export_client import CSV, PREFIX, StandIn, request_view
from tests.browser.kit import browser, fresh_shots  # noqa: F401 - the browser fixture
from tests.harness import BASE_IMAGE, ROOT

pytestmark = pytest.mark.docker
LABEL = "gpuhub.test-airlock-lab"
ARTIFACTS = ROOT / "tests" / "artifacts" / "airlock" / "lab"  # its own folder: fresh_shots empties it
UID = 1000  # the image's jovyan: plain `jupyter lab` does not name other UIDs the way gpuhub-singleuser does
SERVER_TOKEN = "server-" + uuid.uuid4().hex
LAB_TOKEN = uuid.uuid4().hex


def gateway(client) -> str:
    """The host's address on Docker's default bridge (the one a container there reaches the host on)."""
    net = client.networks.get("bridge")
    return _facts(net.name, net.attrs).gateway


class LabServer:
    """The image run hardened as the spawner runs it (read-only root, /tmp tmpfs, no capabilities), JupyterLab on
    8888 with ``LAB_TOKEN``, the home a temporary folder holding results/table.csv."""

    def __init__(self, client, env: dict):
        self.home = Path(tempfile.mkdtemp(prefix="gpuhub-test-airlock-home-"))
        (self.home / "results").mkdir()
        (self.home / "results" / "table.csv").write_bytes(CSV)
        (self.home / "results" / "other.csv").write_bytes(b"a,b\n1,2\n")
        for p in (self.home, *self.home.rglob("*")):
            os.chown(p, UID, 100)
        self.container = client.containers.run(
            BASE_IMAGE,
            ["jupyter", "lab", "--ip=0.0.0.0", "--port=8888", "--no-browser", f"--IdentityProvider.token={LAB_TOKEN}"],
            user=f"{UID}:100",
            environment={"JUPYTERHUB_API_TOKEN": SERVER_TOKEN, **env},
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=256m"},
            volumes={str(self.home): {"bind": "/home/jovyan", "mode": "rw"}},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            labels={LABEL: "1"},
            detach=True,
        )
        self.container.reload()
        self.url = f"http://{self.container.attrs['NetworkSettings']['IPAddress']}:8888/"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}api/status?token={LAB_TOKEN}", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    logs = self.container.logs(tail=40).decode(errors="replace")
                    self.close()
                    raise RuntimeError(f"JupyterLab did not answer in 90 s:\n{logs}") from None
                time.sleep(0.2)

    def exec(self, cmd: list[str]) -> tuple[int, str]:
        rc, out = self.container.exec_run(cmd, user=f"{UID}:100", workdir="/home/jovyan")
        return rc, out.decode(errors="replace")

    def close(self) -> None:
        try:
            self.container.remove(force=True)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture(scope="module")
def docker_client():
    import docker

    client = docker.from_env()
    if not images.is_current(images.repo_root(), "base-notebook"):
        pytest.fail(
            f"{BASE_IMAGE} was built from other sources than this checkout; rebuild it with "
            "`.venv/bin/gpuhub images build --missing base-notebook`",
            pytrace=False,
        )
    yield client
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        c.remove(force=True)
    client.close()


@pytest.fixture(scope="module")
def service(docker_client):
    s = StandIn(gateway(docker_client))
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture(scope="module")
def project_server(docker_client, service):
    lab = LabServer(docker_client, {"GPUHUB_PROJECT": "cohort", "GPUHUB_AIRLOCK_URL": service.url})
    yield lab
    lab.close()


def test_gpuhub_export_in_the_image_sends_the_real_sha256_with_the_servers_token(project_server, service):
    service.calls.clear()
    service.answers[("POST", PREFIX + "api/exports")] = (201, request_view())
    rc, out = project_server.exec(["bash", "-lc", "cd results && gpuhub-export table.csv --why 'table 2 of the paper'"])
    assert rc == 0, out
    assert "export request 7: in_review" in out and "cell-count at line 2" in out
    (call,) = service.calls
    assert call["auth"] == f"token {SERVER_TOKEN}"
    assert call["body"] == {
        "project": "cohort",
        "path": "results/table.csv",
        "why": "table 2 of the paper",
        "sha256": hashlib.sha256(CSV).hexdigest(),
    }
    rc, out = project_server.exec(["gpuhub-export", "/etc/passwd", "--why", "x"])
    assert rc == 1 and "refused (airlock-path): /etc/passwd is not inside your home folder" in out, out


def open_lab(browser, server: LabServer):  # noqa: F811
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{server.url}lab/tree/results?token={LAB_TOKEN}")
    page.locator('.jp-DirListing-item[title*="table.csv"]').first.wait_for(timeout=90_000)
    return page


def context_menu_on(page, name: str):
    page.locator(f'.jp-DirListing-item[title*="{name}"]').first.click(button="right")
    menu = page.locator(".lm-Menu").last
    menu.wait_for(timeout=10_000)
    return menu


def test_request_export_from_the_file_browser_shows_the_request_and_a_refusals_rule(
    project_server,
    service,
    browser,  # noqa: F811
):
    shots = fresh_shots(ARTIFACTS)
    service.calls.clear()
    service.answers[("POST", PREFIX + "api/exports")] = (201, request_view())
    page = open_lab(browser, project_server)
    menu = context_menu_on(page, "table.csv")
    page.screenshot(path=shots / "lab-01-context-menu.png")
    menu.get_by_text("Request export…").click()
    dialog = page.locator(".gpuhub-airlock-dialog")
    dialog.wait_for(timeout=10_000)
    assert "results/table.csv" in dialog.inner_text()
    submit = dialog.locator(".gpuhub-airlock-submit")
    assert submit.is_disabled()  # no reason, no request
    dialog.locator("textarea").fill("Table 2 of the survival paper (aggregated)")
    page.screenshot(path=shots / "lab-02-reason.png")
    submit.click()
    toast = page.get_by_text("Export request 7 for results/table.csv: in_review").first
    toast.wait_for(timeout=30_000)
    assert "The checks flagged: cell-count" in toast.inner_text()
    page.wait_for_timeout(800)  # the toast's slide-in
    page.screenshot(path=shots / "lab-03-submitted.png")
    (call,) = service.calls
    assert call["auth"] == f"token {SERVER_TOKEN}"  # the server's token, added by the server: the page holds none
    assert call["body"] == {
        "project": "cohort",
        "path": "results/table.csv",
        "why": "Table 2 of the survival paper (aggregated)",
        "sha256": hashlib.sha256(CSV).hexdigest(),
    }

    message = "alice is not a member of project cohort any more; ask a steward"
    service.answers[("POST", PREFIX + "api/exports")] = (
        403,
        {"status": 403, "rule": "airlock-not-member", "message": message},
    )
    context_menu_on(page, "other.csv").get_by_text("Request export…").click()
    page.locator(".gpuhub-airlock-dialog textarea").fill("second table")
    page.locator(".gpuhub-airlock-submit").click()
    refused = page.get_by_text("Export of results/other.csv refused (airlock-not-member)").first
    refused.wait_for(timeout=30_000)
    assert message in refused.inner_text()
    page.wait_for_timeout(800)
    page.screenshot(path=shots / "lab-04-refused.png")
    page.close()


def test_an_ordinary_server_has_no_request_export_entry(docker_client, service, browser):  # noqa: F811
    lab = LabServer(docker_client, {"GPUHUB_AIRLOCK_URL": service.url})  # no GPUHUB_PROJECT: not a project server
    try:
        page = open_lab(browser, lab)
        menu = context_menu_on(page, "table.csv")
        page.wait_for_timeout(500)
        assert "Rename" in menu.inner_text()  # the file browser's own menu is there ...
        assert "Request export" not in menu.inner_text()  # ... without the airlock's entry
        page.close()
    finally:
        lab.close()
