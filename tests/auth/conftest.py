"""Fixtures for the login tests: a real OIDC provider (node) and real hub subprocesses.

Missing node, npm or configurable-http-proxy fails the tests loudly; nothing is skipped.
Hub and provider logs are printed when a test that used them fails.
"""

from __future__ import annotations

import pytest

from tests.auth.hubproc import AuthHub, HubFailed, free_port
from tests.auth.sites import OIDC, site_dict
from tests.oidc_provider.harness import OIDCProvider, ProviderError, proxy_command

_LIVE: list = []  # provider / hubs whose logs to show on failure


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"auth_rep_{rep.when}", rep)


@pytest.fixture(autouse=True)
def _dump_logs_on_failure(request):
    yield
    rep = getattr(request.node, "auth_rep_call", None)
    if rep is not None and rep.failed:
        for thing in _LIVE:
            print(f"\n===== {type(thing).__name__} log ({thing.log_file}) =====\n{thing.logs()}")


@pytest.fixture(scope="session")
def hub_ports():
    """Ports for the hubs, known before the provider starts (its client's redirect URIs)."""
    return {"main": free_port(), "alt": free_port()}


@pytest.fixture(scope="session")
def oidc(tmp_path_factory, hub_ports):
    try:
        proxy_command()
        provider = OIDCProvider(
            tmp_path_factory.mktemp("oidc"),
            redirect_uris=[f"http://127.0.0.1:{p}/hub/oauth_callback" for p in hub_ports.values()],
        )
        provider.start()
    except ProviderError as e:
        pytest.fail(str(e), pytrace=False)
    _LIVE.append(provider)
    yield provider
    provider.stop()
    _LIVE.remove(provider)


def oidc_site(oidc: OIDCProvider, **auth) -> dict:
    return site_dict(auth={**OIDC, "issuer": oidc.issuer, "client_id": oidc.client_id, **auth})


def _start(hub: AuthHub) -> AuthHub:
    try:
        hub.start()
    except HubFailed as e:
        hub.stop()
        pytest.fail(str(e), pytrace=False)
    return hub


@pytest.fixture(scope="session")
def auth_hub(tmp_path_factory, oidc, hub_ports):
    """The hub most login tests share: OIDC against `oidc`, auth refreshed every 2 s."""
    hub = AuthHub(
        tmp_path_factory.mktemp("hub"),
        oidc_site(oidc),
        port=hub_ports["main"],
        secret=oidc.client_secret,
        refresh_age=2,
    )
    _LIVE.append(hub)
    _start(hub)
    yield hub
    hub.stop()
    _LIVE.remove(hub)


@pytest.fixture
def alt_hub(tmp_path_factory, oidc, hub_ports):
    """Factory for a second, short-lived hub on the other registered port."""
    hubs = []

    def make(*, secret: str | None = "<the provider's>", start=True, **auth):
        if secret == "<the provider's>":
            secret = oidc.client_secret
        hub = AuthHub(tmp_path_factory.mktemp("althub"), oidc_site(oidc, **auth), port=hub_ports["alt"], secret=secret)
        hubs.append(hub)
        _LIVE.append(hub)
        return _start(hub) if start else hub

    yield make
    for hub in hubs:
        hub.stop()
        _LIVE.remove(hub)
