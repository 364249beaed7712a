"""End to end in a real browser: OIDC login -> spawn form -> GPU server -> JupyterLab cell -> stop.

Playwright (sync API) drives Debian's chromium against the real hub (tests/harness.py
HubProcess: jupyterhub_config.py, GpuhubSpawner, real Docker) logged in through the real
test OIDC provider (tests/oidc_provider). Screenshots of every step go to
tests/artifacts/browser/. A missing chromium, node or npm fails the test; nothing is skipped.
"""

from __future__ import annotations

import re
import secrets
import shutil
import time
from pathlib import Path

import pytest
import requests
import yaml
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.kit import CHROMIUM, fresh_shots
from tests.harness import HubProcess
from tests.oidc_provider.harness import OIDCProvider, ProviderError

pytestmark = pytest.mark.docker

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "browser"
SECRET_ENV = "GPUHUB_E2E_OIDC_SECRET"
ORG_GROUP = "gist-ai-lab"


@pytest.fixture(scope="module")
def shots():
    return fresh_shots(ARTIFACTS)


@pytest.fixture(scope="module")
def e2e(request, tmp_path_factory, docker_client):
    """The lead's hub (real Docker) with hub.auth switched to OIDC against the test provider."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"chromium not found at {CHROMIUM}; apt-get install chromium", pytrace=False)
    hub = HubProcess(tmp_path_factory.mktemp("e2e-hub"))
    provider = OIDCProvider(tmp_path_factory.mktemp("e2e-oidc"), redirect_uris=[f"{hub.url}/hub/oauth_callback"])
    try:
        provider.start()
    except ProviderError as e:
        pytest.fail(str(e), pytrace=False)
    hub.site["hub"]["auth"] = {
        "type": "oidc",
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret_env": SECRET_ENV,
        "groups_claim": "groups",
        "admin_groups": ["hub-admins"],
        "username_claim": "preferred_username",
        "trusted_email_domains": {},
    }
    hub.site["organizations"]["gist-ai"]["idp_groups"] = [ORG_GROUP]
    hub.site_path.write_text(yaml.safe_dump(hub.site))
    mp = pytest.MonkeyPatch()
    mp.setenv(SECRET_ENV, provider.client_secret)
    mp.setenv("JUPYTERHUB_CRYPT_KEY", secrets.token_hex(32))
    try:
        hub.start()
        yield hub, provider
    finally:
        if request.session.testsfailed:
            print(hub.dump_logs())
            print(f"--- provider log\n{provider.logs()}")
        mp.undo()
        hub.cleanup()
        provider.stop()


def sign_in(page, hub, provider, login, shots=None, prefix=""):
    page.goto(f"{hub.url}/hub/login")
    if shots:
        page.screenshot(path=shots / f"{prefix}01-hub-login.png")
    page.get_by_role("button", name=re.compile("Sign in with SSO")).or_(
        page.get_by_role("link", name=re.compile("Sign in with SSO"))
    ).first.click()
    page.wait_for_selector("input[name=login]")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", provider.accounts[login]["password"])
    if shots:
        page.screenshot(path=shots / f"{prefix}02-idp-login.png")
    page.click("button[type=submit]")
    page.wait_for_selector("text=Authorize")
    if shots:
        page.screenshot(path=shots / f"{prefix}03-idp-consent.png")
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/hub/"))


def free_of(page, model: str) -> int:
    text = page.locator("#gpuhub-model option", has_text=f"{model} (weight").inner_text()
    return int(re.search(r"(\d+) of \d+ free", text).group(1))


def org_meter(page) -> str:
    return page.locator(".gpuhub-form .radio", has_text="GIST AI Lab").inner_text()


def notebook(hub, user: str, name: str) -> None:
    """An .ipynb with one prefilled cell (put through the server's contents API)."""
    token = hub.user_token(user)
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "execution_count": None,
                "id": "c1",
                "metadata": {},
                "outputs": [],
                "source": "print(6 * 7)",
            }
        ],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    r = requests.put(
        f"{hub.url}/user/{user}/api/contents/{name}",
        headers={"Authorization": f"token {token}"},
        json={"type": "notebook", "format": "json", "content": nb},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text[:500]


def wait_kernel_idle(hub, user: str, name: str, timeout: float = 120) -> None:
    """Wait until the notebook's kernel (started by Lab on open) reports idle through the server's sessions API.

    On a loaded 2-core machine the kernel can take longer than the page to come up; a Shift+Enter typed
    before the kernel is connected is queued by Lab but has been seen to be dropped.
    """
    token = hub.user_token(user)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        r = requests.get(f"{hub.url}/user/{user}/api/sessions", headers={"Authorization": f"token {token}"}, timeout=10)
        seen = [(s.get("path"), (s.get("kernel") or {}).get("execution_state")) for s in r.json()] if r.ok else []
        if (name, "idle") in seen:
            return
        time.sleep(1)
    pytest.fail(f"the kernel of {name} was not idle after {timeout:.0f} s; sessions: {seen}")


def run_cell(page, index: int, retry_shot: Path):
    """Run cell ``index`` (already focused) with Shift+Enter and return its output; one retry, as a user would."""
    cell = page.locator(".jp-Notebook .jp-CodeCell").nth(index)
    out = cell.locator(".jp-OutputArea-output").first
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    try:
        out.wait_for(timeout=30_000)
    except PlaywrightTimeout:
        page.screenshot(path=retry_shot)
        cell.locator(".cm-content").click()
        page.keyboard.press("Shift+Enter")
        out.wait_for(timeout=60_000)
    return out


def test_login_spawn_gpu_run_cell_stop_and_second_user_sees_fewer_free(e2e, browser, shots):
    hub, provider = e2e
    provider.set_account("minji", groups=[ORG_GROUP])
    provider.set_account("junho", groups=[ORG_GROUP])

    # --- first user: log in, read the form
    ctx1 = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx1.new_page()
    page.set_default_timeout(60_000)
    sign_in(page, hub, provider, "minji", shots)
    page.goto(f"{hub.url}/hub/spawn")
    page.wait_for_selector(".gpuhub-form")
    meter = org_meter(page)
    assert "GIST AI Lab" in meter and "GPUs in use 0 / 2" in meter, meter
    assert re.search(r"budget used 0\.0 / 100 GPU-hours", meter), meter
    h100_before = free_of(page, "H100")
    assert h100_before == 2
    page.screenshot(path=shots / "04-spawn-form.png", full_page=True)

    # --- choose image and 1 H100, start
    page.check("input[name=image][value=python]")
    page.select_option("#gpuhub-gpus", "1")
    page.select_option("#gpuhub-model", "H100")
    page.screenshot(path=shots / "05-spawn-form-filled.png", full_page=True)
    page.get_by_role("button", name=re.compile("Start")).first.click()

    # --- progress page, then JupyterLab
    try:
        page.wait_for_url(re.compile(r"/hub/spawn-pending/minji|/user/minji/"), timeout=30_000)
    except PlaywrightTimeout:
        page.screenshot(path=shots / "06-spawn-failed.png", full_page=True)
        pytest.fail(
            f"the spawn form did not lead to the progress page; the page says:\n{page.inner_text('body')[:2000]}"
        )
    page.screenshot(path=shots / "06-progress.png")
    page.wait_for_url(re.compile(r"/user/minji/lab"), timeout=120_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    page.screenshot(path=shots / "07-jupyterlab.png")

    # --- run a notebook cell and read its output
    notebook(hub, "minji", "e2e.ipynb")
    page.goto(f"{hub.url}/user/minji/lab/tree/e2e.ipynb")
    wait_kernel_idle(hub, "minji", "e2e.ipynb")
    out = run_cell(page, 0, shots / "07b-cell-retry.png")
    assert out.inner_text().strip() == "42"
    # a second cell typed in the browser: the GPU the hub allocated
    page.locator(".jp-Notebook .jp-CodeCell").nth(1).locator(".cm-content").click()
    page.keyboard.type("import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])")
    gpu_out = run_cell(page, 1, shots / "08b-cell-retry.png")
    assert re.fullmatch(r"GPU-sim-h100-[01]", gpu_out.inner_text().strip()), gpu_out.inner_text()
    page.screenshot(path=shots / "08-cell-output.png")

    # --- second user of the same org sees one H100 fewer, and the org's meter
    ctx2 = browser.new_context(viewport={"width": 1280, "height": 900})
    page2 = ctx2.new_page()
    page2.set_default_timeout(60_000)
    sign_in(page2, hub, provider, "junho", shots, prefix="u2-")
    page2.goto(f"{hub.url}/hub/spawn")
    page2.wait_for_selector(".gpuhub-form")
    assert free_of(page2, "H100") == h100_before - 1
    assert "GPUs in use 1 / 2" in org_meter(page2)
    page2.screenshot(path=shots / "09-second-user-form.png", full_page=True)

    # --- first user stops the server from the hub home page
    page.goto(f"{hub.url}/hub/home")
    page.screenshot(path=shots / "10-home-running.png")
    page.click("#stop")
    page.wait_for_selector("#start", state="visible", timeout=60_000)
    page.screenshot(path=shots / "11-home-stopped.png")
    hub.wait_containers_gone(user="minji")
    assert hub.containers(all=True, user="minji") == []

    # --- the GPU is back for the second user
    page2.reload()
    page2.wait_for_selector(".gpuhub-form")
    assert free_of(page2, "H100") == h100_before
    page2.screenshot(path=shots / "12-second-user-form-after-stop.png", full_page=True)
    ctx1.close()
    ctx2.close()


# ---------------------------------------------------------------- offline JupyterLab, nbgrader for course members only

NOT_NEWS = "official Jupyter news"  # the announcements plugin's question


@pytest.fixture(scope="module")
def course_hub(request, tmp_path_factory, docker_client):
    """A shared-password hub where dana teaches ml101 and alice is in no course; both servers started."""
    hub = HubProcess(tmp_path_factory.mktemp("offline-hub"))
    hub.site["organizations"]["ai-academy"] = {
        "display_name": "AI Academy",
        "gpu_limit": 1,
        "gpu_hours_per_month": 10,
        "max_gpus_per_server": 1,
    }
    hub.site["courses"] = {"ml101": {"display_name": "ML 101", "org": "ai-academy", "instructors": ["dana"]}}
    hub.site_path.write_text(yaml.safe_dump(hub.site))
    try:
        hub.start()
        for user in ("alice", "dana"):
            r = hub.spawn(user, {"image": "python", "gpus": 0})
            assert r.status_code in (201, 202), r.text
        for user in ("alice", "dana"):
            hub.wait_ready(user, timeout=120)
        yield hub
    finally:
        if request.session.testsfailed:
            print(hub.dump_logs())
        hub.cleanup()


def open_lab(browser, hub, user: str, shots: Path, requests_seen: list[str]):
    """Log in with the shared password, open the user's JupyterLab; every request the page makes is recorded."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.on("request", lambda req: requests_seen.append(req.url))
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/(hub|user)/"))  # home, or straight to the running server
    page.goto(f"{hub.url}/user/{user}/lab")
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    page.wait_for_selector(".lm-MenuBar-itemLabel >> text=Help")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(5_000)  # the announcements plugin asks a few seconds after the start
    page.screenshot(path=shots / f"offline-{user}-lab.png")
    return ctx, page


def test_lab_asks_nothing_of_the_internet_and_nbgrader_shows_only_for_course_members(course_hub, browser, shots):
    hub = course_hub
    local = re.compile(rf"^(?:{re.escape(hub.url)}/|data:|blob:)")
    seen: dict[str, list[str]] = {"alice": [], "dana": []}
    ctx, page = open_lab(browser, hub, "alice", shots, seen["alice"])
    menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
    assert "File" in menus and "Nbgrader" not in menus, menus  # in no course: no nbgrader at all
    assert page.get_by_text(NOT_NEWS).count() == 0
    assert page.get_by_text("Create Assignment").count() == 0
    ctx.close()
    ctx, page = open_lab(browser, hub, "dana", shots, seen["dana"])
    menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
    assert "Nbgrader" in menus, menus  # the course's instructor has it
    page.locator(".lm-MenuBar-itemLabel", has_text="Nbgrader").click()
    page.screenshot(path=shots / "offline-dana-nbgrader-menu.png")
    assert page.get_by_text("Formgrader").count() >= 1
    assert page.get_by_text(NOT_NEWS).count() == 0
    ctx.close()
    for user, urls in seen.items():
        assert any(u.startswith(f"{hub.url}/user/{user}/lab") for u in urls), urls
        foreign = [u for u in urls if not local.match(u)]
        assert foreign == [], f"{user}'s lab page asked other hosts: {foreign}"
    (shots / "offline-requests.txt").write_text(
        "\n".join(f"{user} {u}" for user, urls in seen.items() for u in urls) + "\n"
    )
