"""The HTTP endpoint over real sockets: bearer token, routes, concurrent scrapes, entry points."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporters.gpu import build_gpu_exporter
from exporters.server import MetricsConfigError, main_usage, metrics_token, parse_listen, run_usage_exporter, serve
from exporters.testing import FakeNvmlSource, fake_gpus
from tests.exporters.helpers import make_site

TOKEN = "s3cret-token-for-tests"


@pytest.fixture
def endpoint(site):
    registry, sampler = build_gpu_exporter(
        site, None, FakeNvmlSource(fake_gpus(2, procs_per_gpu=1)), registry=CollectorRegistry(), interval=0.01
    )
    sampler.sample_once()
    server = serve(registry, "127.0.0.1:0", TOKEN)
    yield server, sampler
    server.close()
    sampler.stop()


def test_bearer_token_is_required(endpoint):
    server, _ = endpoint
    r = requests.get(server.url, timeout=5)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "gpuhub_" not in r.text
    assert requests.get(server.url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
    assert requests.get(server.url, headers={"Authorization": TOKEN}, timeout=5).status_code == 401
    r = requests.get(server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    assert 'gpuhub_gpu_utilization_ratio{uuid="GPU-fake-0"} 0.5' in r.text


def test_health_and_unknown_paths(endpoint):
    server, _ = endpoint
    base = server.url.rsplit("/", 1)[0]
    assert requests.get(f"{base}/healthz", timeout=5).text == "ok\n"  # no token needed
    assert requests.get(f"{base}/nope", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).status_code == 404


def test_open_endpoint_without_token(site):
    registry = CollectorRegistry()
    server = serve(registry, "127.0.0.1:0", None)
    try:
        assert requests.get(server.url, timeout=5).status_code == 200
    finally:
        server.close()


def test_concurrent_scrapes_while_sampling(endpoint):
    server, sampler = endpoint
    sampler.start()  # swaps state every 10 ms during the scrapes

    def scrape(_):
        r = requests.get(server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        names = {f.name for f in text_string_to_metric_families(r.text)}
        return r.status_code, "gpuhub_gpu_utilization_ratio" in names

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(scrape, range(80)))
    assert results == [(200, True)] * 80


def test_metrics_token_from_the_named_variable(tmp_path):
    site = make_site(tmp_path, metrics_token_env="GPUHUB_METRICS_TOKEN")
    assert metrics_token(site, {"GPUHUB_METRICS_TOKEN": " abc \n"}) == "abc"
    with pytest.raises(MetricsConfigError, match="GPUHUB_METRICS_TOKEN is not set"):
        metrics_token(site, {})
    assert metrics_token(make_site(tmp_path), {}) is None


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9835", ("127.0.0.1", 9835)),
        (":9836", ("0.0.0.0", 9836)),
        ("[::1]:9835", ("::1", 9835)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(listen, expected):
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9835", "host:", "host:http", "h:70000"])
def test_parse_listen_rejects(listen):
    with pytest.raises(MetricsConfigError, match="HOST:PORT"):
        parse_listen(listen)


def test_run_usage_exporter_refuses_a_missing_token_before_listening(tmp_path, ledger_engine):
    site = make_site(tmp_path, metrics_token_env="GPUHUB_TEST_UNSET_TOKEN")
    with pytest.raises(MetricsConfigError):
        run_usage_exporter(site, "127.0.0.1:0", ledger_engine, environ={}, stop=threading.Event())


def test_run_usage_exporter_stops_on_event(site, ledger_engine):
    stop = threading.Event()
    result = []
    t = threading.Thread(
        target=lambda: result.append(run_usage_exporter(site, "127.0.0.1:0", ledger_engine, stop=stop))
    )
    t.start()
    stop.set()
    t.join(10)
    assert result == [0]


def test_main_reports_a_bad_site_config(tmp_path, caplog):
    bad = tmp_path / "site.yaml"
    bad.write_text("timezone: Mars/Olympus\nimages: {python: {image: x}}\n")
    assert main_usage(["--site", str(bad), "--listen", "127.0.0.1:0"]) == 2
    assert "not an IANA time zone" in caplog.text


def test_gpuhub_cli_hands_every_exporter_flag_to_the_exporter(capsys, monkeypatch):
    """`gpuhub exporter gpu ...` takes the same flags as `python -m exporters gpu` (one parser)."""
    import pytest

    from exporters import server
    from gpuhub import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["exporter", "gpu", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--listen", "--interval", "--slow-interval", "--proc-root", "--site"):
        assert flag in out, out
    seen = {}
    monkeypatch.setattr(server, "main_usage", lambda argv: seen.setdefault("usage", argv) and 0)
    assert cli.main(["--site", "s.yaml", "exporter", "usage", "--listen", "127.0.0.1:1", "--interval", "2"]) == 0
    assert seen["usage"] == ["--site", "s.yaml", "--listen", "127.0.0.1:1", "--interval", "2"]
    with pytest.raises(SystemExit) as e:
        cli.main(["quota", "status", "--no-such-flag"])
    assert e.value.code == 2
