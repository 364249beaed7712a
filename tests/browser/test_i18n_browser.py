"""The hub in Korean and in English, in a real browser against the real hub (issue 18).

Playwright drives Debian's chromium with the browser locale ``ko-KR`` or ``en-US`` (its ``Accept-Language``)
against tests/harness.py's HubProcess (real Docker, shared-password login). Asserted on strings of the ``ko``
catalog: the spawn form, the home banner, a refusal (the organization at its GPU cap), the spawn progress and
JupyterLab itself; the same in English. Then "My usage" against ``gpuhub billing statement``, the operators'
page (403 for a non-admin), axe-core (0 serious/critical) and a 360 px wide phone. Screenshots go to
tests/artifacts/i18n/. A missing chromium, npm or axe-core fails the tests; nothing is skipped.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from playwright.sync_api import Error as PlaywrightError

from tests.browser.kit import CHROMIUM, fresh_shots
from tests.harness import HubProcess, default_site, login
from tests.procs import free_port

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "i18n"
AXE_DIR = ROOT / "tests" / "i18n"
AXE = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
# What the spawn progress page showed, kept in the tab's sessionStorage, which outlives the page's redirect into
# JupyterLab: reading the live page instead lost a race in CI (the server got ready while the test read it).
RECORD_PROGRESS_PAGE = """
(() => {
  if (!location.pathname.includes('/hub/spawn-pending/')) return;
  sessionStorage.setItem('gpuhub-pending-text', '');
  document.addEventListener('DOMContentLoaded', () =>
    sessionStorage.setItem('gpuhub-pending-text', document.body.innerText));
})();
"""

AT_THE_DOOR = "<!doctype html><title>the server is ready</title>"


@pytest.fixture(scope="module")
def shots():
    return fresh_shots(ARTIFACTS)


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core from tests/i18n/package-lock.json (`npm ci` when it is not installed yet)."""
    if not AXE.exists():
        npm = shutil.which("npm")
        if not npm:
            pytest.fail("npm is not on PATH; apt-get install npm (axe-core comes from npm)", pytrace=False)
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=AXE_DIR, capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"npm ci in {AXE_DIR} failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    return AXE.read_text()


@pytest.fixture(scope="module")
def hub(request, tmp_path_factory, docker_client):
    """A hub whose gist-ai may hold one GPU, so a second GPU server charged to it is refused (org-gpu-limit)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}; apt-get install chromium", pytrace=False)
    tmp = tmp_path_factory.mktemp("i18n-hub")
    site = default_site("x", free_port(), tmp / "state")
    site["organizations"]["gist-ai"]["gpu_limit"] = 1
    hub = HubProcess(tmp, site)
    try:
        hub.start()
        yield hub
    finally:
        if request.session.testsfailed:
            print(hub.dump_logs())
        hub.cleanup()


def page_for(browser, hub, user: str, locale: str, password: str | None = None, width: int = 1280):
    ctx = browser.new_context(locale=locale, viewport={"width": width, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", password or hub.password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(re.escape(hub.url) + r"/(hub|user)/"))
    return ctx, page


def admin_password(hub) -> str:
    return (hub.state / "admin-password").read_text().strip()


def axe(page, source: str) -> list[dict]:
    """axe-core's serious and critical violations on the page as it is now."""
    page.add_script_tag(content=source)
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["html"][:160] for n in v["nodes"][:3]]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def spawn_from_form(page, hub, user: str, org: str, gpus: int, shots: Path, name: str, queue: bool = True) -> None:
    """Start from the spawn form; ``queue`` False unchecks "Wait in line if the GPUs are busy" (refused at once)."""
    page.goto(f"{hub.url}/hub/spawn")
    page.wait_for_selector(".gpuhub-form")
    page.check(f"input[name=org][value={org}]")
    page.select_option("#gpuhub-gpus", str(gpus))
    assert page.is_checked("#gpuhub-queue")  # waiting in line is the default
    if not queue:
        page.uncheck("#gpuhub-queue")
    page.screenshot(path=shots / f"{name}-form.png", full_page=True)
    page.locator("#spawn_form button[type=submit]").click()


def watch_progress_page(ctx, hub, user: str):
    """As soon as the hub calls the spawn pending: its progress stream, read by a thread (a browser tab connects
    too late on a quiet machine, after the few seconds a start takes), and a second tab on the progress page for
    its own words (the form's tab shows that page only when the spawn takes longer than JupyterHub's 10 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        server = hub.api("GET", f"/users/{user}").json().get("servers", {}).get("")
        if server and (server.get("pending") or server.get("ready")):
            break
        time.sleep(0.05)
    events: list[str] = []

    def read_stream():
        with requests.get(
            f"{hub.url}/hub/api/users/{user}/server/progress",
            headers={"Authorization": f"token {hub.user_token(user)}"},
            stream=True,
            timeout=180,
        ) as r:
            for line in r.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    event = json.loads(line[5:])
                    events.append(event.get("message", ""))
                    if event.get("ready") or event.get("failed"):
                        return

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    tab = ctx.new_page()
    tab.add_init_script(RECORD_PROGRESS_PAGE)
    # The tab stops at the server's door: two tabs of one browser entering a new server at once run two OAuth
    # logins whose state cookies overwrite each other, and both end on JupyterHub's 403 "oauth state does not
    # match" (seen here; the form's tab is the one that goes into Lab).
    tab.route(re.compile(re.escape(f"{hub.url}/user/{user}/")), lambda route: route.fulfill(body=AT_THE_DOOR))
    tab.goto(f"{hub.url}/hub/spawn-pending/{user}")
    return tab, reader, events


def progress_page_seen(tab, user: str) -> str | None:
    """The progress page's text as it loaded (None: never shown, "": left before it loaded), from
    :data:`RECORD_PROGRESS_PAGE`, once the tab went on to the server (where :data:`AT_THE_DOOR` stopped it)."""
    tab.wait_for_url(re.compile(rf"/user/{user}/"), timeout=180_000)
    return tab.evaluate("() => sessionStorage.getItem('gpuhub-pending-text')")


def screenshot_progress(tab, path: Path) -> None:
    """A picture of the progress page with its log open, when the page is still there to take it."""
    try:
        if "/spawn-pending/" in tab.url:
            tab.locator("#progress-log .progress-log-event").first.wait_for(state="attached", timeout=10_000)
            tab.evaluate("() => { const d = document.getElementById('progress-details'); if (d) d.open = true; }")
            tab.screenshot(path=path)
    except PlaywrightError:  # the server got ready meanwhile: what the page showed is in sessionStorage
        pass


def test_korean_form_banner_progress_and_jupyterlab(hub, browser, shots, axe_source):
    ctx, page = page_for(browser, hub, "alice", "ko-KR")
    page.goto(f"{hub.url}/hub/spawn")
    form = page.locator(".gpuhub-form")
    form.wait_for()
    text = form.inner_text()
    assert "비용을 청구할 조직" in text and "사용 중인 GPU 0 / 1" in text and "GPU 개수" in text, text
    assert "Organization to charge" not in text
    assert page.locator("h1").first.inner_text() == "서버 옵션"
    assert page.locator("#spawn_form button[type=submit]").inner_text().strip() == "시작"
    assert axe(page, axe_source) == []

    page.goto(f"{hub.url}/hub/home")
    banner = page.locator("#gpuhub-budgets").inner_text()
    assert "GPU 1개 중 0개 사용 중; 이번 달 100 GPU시간 중 0.0 사용(0%)." in banner, banner
    assert page.locator("#gpuhub-usage-link").inner_text() == "내 사용량: 예산, GPU시간, 실행 중인 서버"
    page.screenshot(path=shots / "ko-KR-home.png", full_page=True)
    assert axe(page, axe_source) == []

    spawn_from_form(page, hub, "alice", "gist-ai", 1, shots, "ko-KR-01")
    tab, reader, events = watch_progress_page(ctx, hub, "alice")
    screenshot_progress(tab, shots / "ko-KR-02-progress.png")
    pending_text = progress_page_seen(tab, "alice")
    reader.join(60)
    if pending_text:  # (None: the server was ready before the tab loaded, as on a quiet machine)
        for korean in ("서버를 시작하는 중입니다.", "진행 기록", "서버 중지"):  # JupyterHub's own words too
            assert korean in pending_text, pending_text
        assert "Event log" not in pending_text and "Stop Server" not in pending_text, pending_text
    if len(events) > 1:  # (one event: the stream connected after the spawn, and sent only "ready")
        assert not any("Allocating" in m or "Server requested" in m for m in events), events
        assert events[0] == "서버를 요청했습니다" and "요청을 확인하는 중" in events, events
        assert any("gist-ai에 GPU 1개를 할당하는 중" in m for m in events), events
    page.wait_for_url(re.compile(r"/user/alice/lab"), timeout=180_000)
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    page.wait_for_selector(".lm-MenuBar-itemLabel >> text=파일", timeout=60_000)
    menus = page.locator(".lm-MenuBar-itemLabel").all_inner_texts()
    assert "파일" in menus and "File" not in menus, menus
    page.screenshot(path=shots / "ko-KR-03-jupyterlab.png")
    r = requests.get(
        f"{hub.url}/user/alice/lab/api/settings/@jupyterlab/translation-extension:plugin",
        headers={"Authorization": f"token {hub.user_token('alice')}"},
        timeout=30,
    )
    assert r.ok and r.json()["settings"]["locale"] == "ko_KR", r.text[:500]
    # the progress the spawner recorded: every message in Korean
    events = hub.api("GET", "/users/alice").json()
    assert events["servers"][""]["ready"]
    ctx.close()


def test_a_refusal_in_korean_and_in_english(hub, browser, shots):
    """gist-ai is at its cap (alice holds its one GPU): bob, in gist-ai and cnuh-radiology, asks it for one
    with "Wait in line" unchecked, so he gets the refusal at once."""
    assert hub.api("GET", "/users/alice").json()["servers"][""]["ready"], "the first test's server is gone"
    for locale, want in (
        ("ko-KR", "org-gpu-limit: 조직 gist-ai은(는) GPU 1개 중 1개를 사용 중이며 1개를 더 요청했습니다"),
        ("en-US", "org-gpu-limit: organization gist-ai has 1 of 1 GPUs in use and 1 more were requested"),
    ):
        ctx, page = page_for(browser, hub, "bob", locale)
        spawn_from_form(page, hub, "bob", "gist-ai", 1, shots, f"{locale}-refusal", queue=False)
        error = page.locator(".spawn-error-msg")
        error.wait_for(timeout=60_000)
        assert want in error.inner_text(), error.inner_text()
        page.screenshot(path=shots / f"{locale}-refusal-org-at-cap.png", full_page=True)
        ctx.close()


def test_a_busy_request_waits_in_line_in_korean_and_cancel_takes_it_out(hub, browser, shots, axe_source):
    """The same request with "Wait in line" checked (the default): the progress page shows bob's place in line in
    Korean, the home page lists his waiting server and its Stop button reads 취소 (Cancel), which ends it."""
    ctx, page = page_for(browser, hub, "bob", "ko-KR")
    try:
        spawn_from_form(page, hub, "bob", "gist-ai", 1, shots, "ko-KR-queue")
        page.wait_for_url(re.compile(r"/hub/spawn-pending/bob"), timeout=30_000)
        log = page.locator("#progress-log")
        log.locator("text=대기 순서 1개 중 1번째").wait_for(state="attached", timeout=30_000)
        events = log.text_content()
        assert "GPU 1개를 기다리는 중" in events and "Waiting in line" not in events, events
        page.evaluate("() => { const d = document.getElementById('progress-details'); if (d) d.open = true; }")
        page.screenshot(path=shots / "ko-KR-queue-progress.png", full_page=True)

        page.goto(f"{hub.url}/hub/home")
        notice = page.locator("#gpuhub-queued [data-gpuhub-queued='']")
        assert "서버 bob/이(가) GPU 대기열에서 기다리는 중입니다" in notice.inner_text(), notice.inner_text()
        cancel = page.locator("#stop")
        assert cancel.inner_text().strip() == "취소" and cancel.get_attribute("data-gpuhub-queued") == ""
        page.screenshot(path=shots / "ko-KR-queue-home.png", full_page=True)
        assert axe(page, axe_source) == []
        cancel.click()
        deadline = time.monotonic() + 30
        while hub.api("GET", "/users/bob").json()["servers"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert hub.api("GET", "/users/bob").json()["servers"] == {}, "Cancel did not end the waiting server"
        page.goto(f"{hub.url}/hub/home")
        assert page.locator("#gpuhub-queued").count() == 0  # out of the line
    finally:
        ctx.close()
        if hub.api("GET", "/users/bob").json()["servers"]:
            hub.stop_server("bob")  # never leave bob in line: alice's GPU would go to him later


def test_usage_page_numbers_are_the_statements(hub, browser, shots, axe_source):
    ctx, page = page_for(browser, hub, "alice", "ko-KR")
    page.goto(f"{hub.url}/hub/usage")
    shown_at = time.monotonic()
    orgs = page.locator(".gpuhub-org").evaluate_all("els => els.map(e => e.dataset.org)")
    assert orgs == ["gist-ai"]  # only alice's own organization
    mine = float(page.locator(".gpuhub-org[data-org=gist-ai] .gpuhub-mine").get_attribute("data-gpu-seconds"))
    rows = [r for r in hub.cli_json("billing", "statement") if r["user"] == "alice" and r["org"] == "gist-ai"]
    elapsed = time.monotonic() - shown_at
    cli = sum(r["gpu_seconds"] for r in rows)
    print(f"running: usage page {mine:.3f} GPU-s, statement {cli:.3f} GPU-s, {elapsed:.1f} s apart")
    assert mine - 2 <= cli <= mine + elapsed + 2, (mine, cli, elapsed)  # her server still runs (1 GPU)
    today = datetime.now(ZoneInfo("Asia/Seoul")).day
    assert page.locator("#chart-gist-ai rect.gpuhub-bar").count() == today
    assert page.locator("#gpuhub-running").inner_text().count("alice/") == 1
    assert "내 사용량" in page.locator("h1").inner_text()
    page.screenshot(path=shots / "ko-KR-usage.png", full_page=True)
    assert axe(page, axe_source) == []
    ctx.close()

    hub.stop_server("alice")
    s = login(hub, "alice")
    html = s.get(f"{hub.url}/hub/usage", headers={"Accept-Language": "en-US"}, timeout=30).text
    shown = float(re.search(r'class="gpuhub-mine" data-gpu-seconds="([0-9.]+)"', html).group(1))
    cli = sum(
        r["gpu_seconds"] for r in hub.cli_json("billing", "statement") if r["user"] == "alice" and r["org"] == "gist-ai"
    )
    print(f"usage page: alice/gist-ai {shown:.3f} GPU-seconds; gpuhub billing statement: {cli:.3f}")
    assert cli > 0 and abs(shown - cli) <= 2, (shown, cli)
    assert "Your share:" in html and "My usage" in html
    carol = login(hub, "carol").get(f"{hub.url}/hub/usage", timeout=30).text
    assert 'data-org="cnuh-radiology"' in carol and 'data-org="gist-ai"' not in carol


def test_operators_page_is_for_admins_only(hub, browser, shots, axe_source):
    r = login(hub, "alice").get(f"{hub.url}/hub/operators", timeout=30)
    assert r.status_code == 403 and "hub.admin_users" in r.text
    assert login(hub, "alice").get(f"{hub.url}/hub/operators/statement.csv", timeout=30).status_code == 403
    before = hub.cli_json("quota", "status")["this_month"]["refusals"].get("cnuh-radiology", {})
    r = hub.spawn("carol", {"image": "python", "gpus": 3, "org": "cnuh-radiology"})  # it allows 1 per server
    rule = r.headers.get("X-Gpuhub-Rule")
    assert r.status_code == 400 and rule in ("max-gpus-per-server", "user-gpu-limit"), (r.status_code, r.text)
    want = before.get(rule, 0) + 1
    ctx, page = page_for(browser, hub, "operator", "en-US", password=admin_password(hub))
    page.goto(f"{hub.url}/hub/operators")
    orgs = page.locator("#gpuhub-orgs tr[data-org]").evaluate_all("els => els.map(e => e.dataset.org)")
    assert sorted(orgs) == ["cnuh-radiology", "gist-ai"]
    # carol's refusal is this month's, under its rule id and her organization
    assert "Refusals by rule this month" in page.inner_text("body")
    refused = page.locator(f"#gpuhub-refusals tr[data-rule={rule}]")
    assert refused.locator(".gpuhub-refusal-count").inner_text() == str(want)
    assert f"cnuh-radiology {want}" in refused.inner_text()
    cnuh = page.locator("#gpuhub-orgs tr[data-org=cnuh-radiology]")
    assert cnuh.locator(".gpuhub-refused").inner_text() == str(sum(before.values()) + 1)
    assert cnuh.locator(".gpuhub-idle-hours").inner_text() == "0.00"  # no GPU exporter here: nothing seen idle
    month = hub.cli_json("quota", "status")["this_month"]  # `gpuhub quota status`: the same function, the same numbers
    assert month["refusals"]["cnuh-radiology"] == before | {rule: want}
    assert month["idle_gpu_hours"] == {"cnuh-radiology": 0.0, "gist-ai": 0.0}
    assert page.locator("#gpuhub-devices tbody tr").count() == 4
    page.screenshot(path=shots / "en-US-operators.png", full_page=True)
    assert axe(page, axe_source) == []
    s = login(hub, "operator", admin_password(hub))
    got = s.get(f"{hub.url}/hub/operators/statement.csv", timeout=30)
    assert got.ok and got.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(got.text)))
    want = {(r["org"], r["user"], r["gpu_model"]): r["gpu_seconds"] for r in hub.cli_json("billing", "statement")}
    assert {(r["org"], r["user"], r["gpu_model"]): float(r["gpu_seconds"]) for r in rows} == pytest.approx(want)
    ctx.close()


def test_english_progress_and_jupyterlab_and_the_language_switch(hub, browser, shots, axe_source):
    ctx, page = page_for(browser, hub, "bob", "en-US")
    page.goto(f"{hub.url}/hub/spawn")
    text = page.locator(".gpuhub-form").inner_text()
    assert "Organization to charge" in text and "GPUs in use 0 / 1" in text, text
    page.goto(f"{hub.url}/hub/home")
    assert "0 of 1 GPUs in use; 0.0 of 100 GPU-hours used this month" in page.locator("#gpuhub-budgets").inner_text()
    page.screenshot(path=shots / "en-US-home.png", full_page=True)
    spawn_from_form(page, hub, "bob", "gist-ai", 1, shots, "en-US-01")
    tab, reader, events = watch_progress_page(ctx, hub, "bob")
    screenshot_progress(tab, shots / "en-US-02-progress.png")
    pending_text = progress_page_seen(tab, "bob")
    reader.join(60)
    if pending_text:
        for english in ("Your server is starting up.", "Event log", "Stop Server"):
            assert english in pending_text, pending_text
    if len(events) > 1:
        assert events[0] == "Server requested" and any("Allocating 1 GPU for gist-ai" in m for m in events), events
        assert not any("할당" in m for m in events), events
    page.wait_for_url(re.compile(r"/user/bob/lab"), timeout=180_000)
    page.wait_for_selector(".lm-MenuBar-itemLabel >> text=File", timeout=120_000)
    page.screenshot(path=shots / "en-US-03-jupyterlab.png")
    r = requests.get(
        f"{hub.url}/user/bob/lab/api/settings/@jupyterlab/translation-extension:plugin",
        headers={"Authorization": f"token {hub.user_token('bob')}"},
        timeout=30,
    )
    assert r.ok and r.json()["settings"].get("locale", "en") == "en", r.text[:500]

    # the navbar switch: Korean for bob from now on, whatever his browser says
    page.goto(f"{hub.url}/hub/usage")
    assert axe(page, axe_source) == []
    page.locator("#gpuhub-language button[value=ko]").click()
    page.wait_for_url(re.compile(r"/hub/usage"))
    assert "내 사용량" in page.locator("h1").inner_text()
    page.goto(f"{hub.url}/hub/home")
    assert "GPU 1개 중 1개 사용 중" in page.locator("#gpuhub-budgets").inner_text()
    page.screenshot(path=shots / "en-US-browser-switched-to-ko-home.png", full_page=True)
    ctx.close()
    hub.stop_server("bob")


def test_a_rest_spawn_takes_jupyterlabs_language_from_accept_language(hub):
    hub.ensure_user("carol")
    r = hub.api(
        "POST", "/users/carol/server", json={"gpus": 0}, headers={"Accept-Language": "ko-KR,ko;q=0.9"}, timeout=120
    )
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("carol", timeout=180)
    r = requests.get(
        f"{hub.url}/user/carol/lab/api/settings/@jupyterlab/translation-extension:plugin",
        headers={"Authorization": f"token {hub.user_token('carol')}"},
        timeout=30,
    )
    assert r.ok and r.json()["settings"]["locale"] == "ko_KR", r.text[:500]
    hub.stop_server("carol")


def test_the_language_switch_refuses_what_it_does_not_offer_and_stays_on_the_hub(hub):
    s = login(hub, "carol")
    xsrf = s.cookies.get("_xsrf", path="/hub/") or s.cookies.get("_xsrf")
    r = s.post(f"{hub.url}/hub/language", data={"lang": "fr", "_xsrf": xsrf}, timeout=30)
    assert r.status_code == 400 and "choose one of: ko, en" in r.text
    for target, lands in (("/hub/usage", "/hub/usage"), ("//example.invalid/x", "/hub/home"), ("/\\x", "/hub/home")):
        r = s.post(
            f"{hub.url}/hub/language",
            data={"lang": "ko", "next": target, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )
        assert r.status_code == 302 and r.headers["Location"] == lands, (target, r.headers.get("Location"))
    assert s.cookies.get("gpuhub-lang") == "ko"
    assert "내 사용량" in s.get(f"{hub.url}/hub/usage", headers={"Accept-Language": "en-US"}, timeout=30).text


@pytest.mark.parametrize("path", ["/hub/spawn", "/hub/home", "/hub/usage", "/hub/operators"])
def test_pages_fit_a_phone_and_pass_axe_in_korean(hub, browser, shots, axe_source, path):
    user, password = ("operator", admin_password(hub)) if path == "/hub/operators" else ("bob", None)
    ctx, page = page_for(browser, hub, user, "ko-KR", password=password, width=360)
    page.goto(f"{hub.url}{path}")
    page.wait_for_load_state("load")
    overflow = page.evaluate("() => document.documentElement.scrollWidth")
    page.screenshot(path=shots / f"ko-KR-360px-{path.rsplit('/', 1)[-1]}.png", full_page=True)
    assert overflow <= 360, f"{path} is {overflow} px wide at a 360 px viewport"
    if path == "/hub/operators":
        assert "이번 달 규칙별 거절" in page.inner_text("body") and "이번 달 거절 수" in page.inner_text("body")
    assert axe(page, axe_source) == []
    ctx.close()
