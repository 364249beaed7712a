"""A project server in a real browser (issue 13): a member reads and accepts the data use agreement in the spawn form,
starts the project server, opens a notebook that reads the dataset, and finds no Download in JupyterLab's menus,
while the same member's ordinary server still has it (so the check can fail).

Playwright (sync API) drives Debian's chromium against the real hub (shared-password login, GpuhubSpawner, real
Docker, the download filter). Screenshots of every step go to tests/artifacts/projects/. A missing chromium fails.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.browser.kit import CHROMIUM, fresh_shots
from tests.browser.test_browser_e2e import run_cell
from tests.procs import cleaned_up
from tests.projects.serverkit import cleanup_projects, dua_sha, make_hub

pytestmark = pytest.mark.docker
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "projects"
TAG = uuid.uuid4().hex[:6]


@pytest.fixture(scope="module")
def shots():
    return fresh_shots(ARTIFACTS)


@pytest.fixture(scope="module")
def project_hub(request, tmp_path_factory, docker_client):
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"chromium not found at {CHROMIUM}; apt-get install chromium", pytrace=False)
    hub, keys = make_hub(tmp_path_factory.mktemp("project-browser-hub"), TAG)
    try:
        with cleaned_up(request, hub):
            hub.start()
            r = hub.spawn("alice", {"image": "python"})  # the control: an ordinary server keeps its Download
            assert r.status_code in (201, 202), r.text
            hub.wait_ready("alice", timeout=120)
            yield hub, keys
    finally:
        cleanup_projects(hub, keys)


def put_notebook(hub, prefix: str, name: str, source: str) -> None:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {}, "outputs": [],
                   "source": source}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }  # fmt: skip
    r = requests.put(
        f"{prefix}api/contents/{name}",
        headers={"Authorization": f"token {hub.user_token('alice')}"},
        json={"type": "notebook", "format": "json", "content": nb},
        timeout=30,
    )
    assert r.status_code in (200, 201), r.text[:500]


def file_menu_items(page) -> list[str]:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
    menu = page.locator(".lm-Menu").first
    menu.wait_for()
    items = [t.strip() for t in menu.locator(".lm-Menu-itemLabel").all_inner_texts()]
    return items


def context_menu_items(page, filename: str) -> list[str]:
    page.locator(".jp-DirListing-item", has_text=filename).first.click(button="right")
    menu = page.locator(".lm-Menu").first
    menu.wait_for()
    return [t.strip() for t in menu.locator(".lm-Menu-itemLabel").all_inner_texts()]


def test_a_member_accepts_the_dua_starts_the_project_server_and_finds_no_download(project_hub, browser, shots):
    hub, keys = project_hub
    main = keys["main"]
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", "alice")
    page.fill("#password_input", hub.password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/(hub|user)/"))

    # --- the default server's form links to the project's own spawn page
    page.goto(f"{hub.url}/hub/spawn/alice/spare")
    page.wait_for_selector(".gpuhub-form")
    link = page.locator(f"a.gpuhub-project-link[data-project='{main}']")
    assert link.count() == 1 and keys["other"] not in page.inner_text(".gpuhub-form")  # only the user's projects
    page.screenshot(path=shots / "01-form-project-links.png", full_page=True)

    # --- the project's form: its DUA, the checkbox, only the project's org and images
    link.click()
    page.wait_for_url(re.compile(rf"/hub/spawn/alice/{main}"))
    page.wait_for_selector("#gpuhub-dua")
    dua = page.inner_text("#gpuhub-dua pre")
    assert "Never try to re-identify anyone." in dua
    assert page.get_attribute("#gpuhub-accept-dua", "value") == dua_sha()
    assert page.is_checked("#gpuhub-accept-dua") is False
    assert page.locator("input[name=org]").count() == 1 and page.locator("input[name=org][value=gist-ai]").count() == 1
    page.screenshot(path=shots / "02-project-form-dua.png", full_page=True)
    page.check("#gpuhub-accept-dua")
    page.screenshot(path=shots / "03-project-form-accepted.png", full_page=True)
    page.get_by_role("button", name=re.compile("Start")).first.click()
    page.wait_for_url(re.compile(rf"/user/alice/{main}/lab"), timeout=180_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    page.screenshot(path=shots / "04-project-lab.png")
    (c,) = hub.containers(user="alice", server=main)
    assert c.labels["gpuhub.project"] == main

    # --- a notebook that reads the dataset
    prefix = f"{hub.url}/user/alice/{main}/"
    put_notebook(hub, prefix, "analysis.ipynb", "print(open('/data/cohort/cohort.csv').read().splitlines()[1])")
    page.goto(f"{prefix}lab/tree/analysis.ipynb")
    wait_kernel_idle_at(hub, prefix, "analysis.ipynb")
    out = run_cell(page, 0, shots / "05b-cell-retry.png")
    assert out.inner_text().strip() == "p-001,54,I21"
    page.screenshot(path=shots / "05-project-notebook.png")

    # --- no Download, no export, in the File menu and the file browser's context menu
    items = file_menu_items(page)
    page.screenshot(path=shots / "06-project-file-menu.png")
    print("project server File menu:", items)
    assert "Save and Export Notebook As" not in " ".join(items) and "Download" not in items, items
    page.keyboard.press("Escape")
    ctx_items = context_menu_items(page, "analysis.ipynb")
    page.screenshot(path=shots / "07-project-context-menu.png")
    print("project server file context menu:", ctx_items)
    assert not {"Download", "Copy Download Link", "Open in New Browser Tab"} & set(ctx_items), ctx_items
    page.keyboard.press("Escape")

    # --- the same member's ordinary server still offers Download (the control)
    put_notebook(hub, f"{hub.url}/user/alice/", "control.ipynb", "print(1)")
    page.goto(f"{hub.url}/user/alice/lab")
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    page.locator(".jp-DirListing-item", has_text="control.ipynb").first.wait_for()
    ordinary = file_menu_items(page)
    page.screenshot(path=shots / "08-ordinary-file-menu.png")
    print("ordinary server File menu:", ordinary)
    assert "Download" in ordinary, ordinary
    page.keyboard.press("Escape")
    ordinary_ctx = context_menu_items(page, "control.ipynb")
    page.screenshot(path=shots / "08b-ordinary-context-menu.png")
    print("ordinary server file context menu:", ordinary_ctx)
    assert {"Download", "Open in New Browser Tab"} <= set(ordinary_ctx), ordinary_ctx
    page.keyboard.press("Escape")

    # --- the home page lists the project server
    page.goto(f"{hub.url}/hub/home")
    page.screenshot(path=shots / "09-home.png", full_page=True)
    ctx.close()


def wait_kernel_idle_at(hub, prefix: str, name: str, timeout: float = 120) -> None:
    """Like tests.browser.test_browser_e2e.wait_kernel_idle, for alice's server at ``prefix`` (a named server)."""
    h = {"Authorization": f"token {hub.user_token('alice')}"}
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        r = requests.get(f"{prefix}api/sessions", headers=h, timeout=10)
        seen = [(s.get("path"), (s.get("kernel") or {}).get("execution_state")) for s in r.json()] if r.ok else []
        if (name, "idle") in seen:
            return
        time.sleep(1)
    pytest.fail(f"the kernel of {name} was not idle after {timeout:.0f} s; sessions: {seen}")
