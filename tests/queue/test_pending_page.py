"""The spawn progress page of a request waiting in line, in a real browser against a real hub: its button reads
Cancel in the user's language (not "Stop Server": there is no server yet) and cancels THAT pending server, the
named one too (JupyterHub's own button always stops the default server), leaving the user's running default
server alone."""

from __future__ import annotations

import time

import pytest

from tests.browser.kit import browser  # noqa: F401 - one chromium for this module
from tests.browser.test_i18n_browser import page_for
from tests.harness import HubProcess
from tests.queue.test_spawn_queue import store_of

pytestmark = pytest.mark.docker


@pytest.fixture
def hub(tmp_path, docker_client, request):
    h = HubProcess(tmp_path).start()  # gist-ai may hold 2 GPUs; bob is in gist-ai and cnuh-radiology
    yield h
    if getattr(request.node, "rep_call", None) is None or request.node.rep_call.failed:
        print(h.dump_logs())
    h.cleanup()


def test_a_queued_requests_progress_page_offers_cancel_and_cancels_that_server(hub, browser):  # noqa: F811
    h = hub
    r = h.spawn("alice", {"image": "python", "gpus": 2, "gpu_model": "H100", "org": "gist-ai"})
    assert r.status_code in (201, 202), r.text[:300]
    assert h.spawn("bob", {"image": "python", "gpus": 0, "org": "cnuh-radiology"}).status_code in (201, 202)
    h.wait_ready("alice")
    h.wait_ready("bob")
    r = h.spawn("bob", {"image": "python", "gpus": 1, "gpu_model": "H100", "org": "gist-ai"}, server="q")
    assert r.status_code == 202, r.text[:300]  # gist-ai is at its gpu_limit: in line

    ctx, page = page_for(browser, h, "bob", "ko-KR")
    try:
        page.goto(f"{h.url}/hub/spawn-pending/bob/q")
        log = page.locator("#progress-log")
        try:
            # the spawn came through the REST API without a language, so its progress is English; the page is bob's
            log.locator("text=position 1 of 1").first.wait_for(state="attached", timeout=30_000)
        except Exception as e:
            raise AssertionError(f"{page.url}: {page.inner_text('body')[:800]} | log: {log.text_content()}") from e
        button = page.locator("#stop-server-btn")
        assert button.inner_text().strip() == "취소" and button.get_attribute("data-gpuhub-queued") == "q"
        assert "Stop Server" not in page.inner_text("body")
        button.click()
        page.locator("#stop-server-status", has_text="대기열에서 빠졌습니다").wait_for(timeout=30_000)
        page.wait_for_url(f"{h.url}/hub/home", timeout=30_000)  # not into /user/bob/q (his default server)
        assert page.locator("#gpuhub-queued").count() == 0
    finally:
        ctx.close()
    deadline = time.monotonic() + 30
    while "q" in h.api("GET", "/users/bob").json()["servers"] and time.monotonic() < deadline:
        time.sleep(0.5)
    servers = h.api("GET", "/users/bob").json()["servers"]
    assert "q" not in servers and servers[""]["ready"], servers  # that request ended, his running server did not
    store = store_of(h)
    assert [e.server_key for e in store.entries(states=("cancelled",))] == ["bob/q"] and not store.entries()
