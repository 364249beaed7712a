"""HTTP endpoint for the exporters, and their entry points.

``/metrics`` serves the registry (optionally behind a bearer token), ``/healthz`` answers ``ok``
without a token (for container health checks), anything else is 404. The server is a threading
WSGI server, and the collectors only read immutable state, so concurrent scrapes are safe.

Token: when ``site.metrics_token_env`` names an environment variable, its value is the token and
requests without ``Authorization: Bearer <token>`` get 401 (compared in constant time). Naming a
variable that is unset or empty is a startup error: the endpoint never silently opens.

Entry points: :func:`run_gpu_exporter`, :func:`run_usage_exporter` (block until SIGINT/SIGTERM or
``stop`` is set), and :func:`main_gpu`, :func:`main_usage` (argv), which own the exporters' flags:
``gpuhub exporter gpu|usage`` and ``python -m exporters gpu|usage`` hand them the rest of the line.
A bad site config, token variable or ``--listen`` is one line ``gpuhub: error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app
from prometheus_client.registry import CollectorRegistry

from gpuhub.core.site import Device, SiteConfigError, load_site

log = logging.getLogger(__name__)


class MetricsConfigError(ValueError):
    """The exporter cannot start as configured; the message says how to fix it."""


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9835`` for IPv6; ``:9835`` = all interfaces) → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise MetricsConfigError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:9835 or [::]:9835")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def metrics_token(site: Any, environ: Mapping[str, str] | None = None) -> str | None:
    """The bearer token named by ``site.metrics_token_env`` (None: the endpoint is open).

    When that variable is unset, ``<NAME>_FILE`` may name a file holding the token (the convention of
    the postgres image): a Docker secret in a stack (docker-stack.yml) is a file, never a variable.
    """
    name = getattr(site, "metrics_token_env", None)
    if not name:
        return None
    env = os.environ if environ is None else environ
    value = env.get(name, "").strip()
    path = env.get(f"{name}_FILE", "").strip()
    if not value and path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except OSError as e:
            raise MetricsConfigError(
                f"{name}_FILE names {path}, which cannot be read ({e.strerror or e}); "
                f"mount the token file there (a Docker secret) or set the token in {name} itself"
            ) from None
        if not value:
            raise MetricsConfigError(f"{name}_FILE names {path}, which is empty; write the token into it")
    if not value:
        raise MetricsConfigError(
            f"metrics_token_env names {name}, but {name} is not set or empty; export the token "
            f"(e.g. {name}=$(openssl rand -hex 32)), or name a file holding it in {name}_FILE, "
            "or remove metrics_token_env from the site config"
        )
    return value


def node_devices(site: Any, node: str, simulate: int | None = None, model: str | None = None) -> tuple[Device, ...]:
    """The GPUs the GPU exporter on ``node`` answers for, besides what NVML finds there.

    With ``hub.engine: docker`` the exporter is the site's only one: the site's ``gpus.devices``. With
    ``hub.engine: swarm`` every node runs one (docker-stack.yml) and ``gpus.devices`` is unused, so a node
    claims none of them: with ``gpus.runtime: nvidia`` NVML on the node lists its GPUs; with ``runtime: none``
    the node's GPUs exist only as the labels ``gpuhub node register --simulate N --model MODEL`` wrote, which a
    worker's engine cannot read (node labels answer only on a manager), so the exporter is given the same
    ``simulate``/``model`` and derives the same UUIDs, ``GPU-sim-<node>-<i>``.
    """
    swarm = getattr(site.hub, "engine", "docker") == "swarm"
    if simulate is None:
        return () if swarm else tuple(site.gpus.devices)
    if not swarm or site.gpus.runtime != "none":
        raise MetricsConfigError(
            "--simulate declares a Swarm node's simulated GPUs: it needs hub.engine: swarm and gpus.runtime: none "
            f"(the site has hub.engine: {getattr(site.hub, 'engine', 'docker')}, gpus.runtime: {site.gpus.runtime}); "
            "drop --simulate, and list real GPUs in gpus.devices or let NVML find them"
        )
    if simulate < 0 or model not in site.gpus.models:
        raise MetricsConfigError(
            f"--simulate {simulate} --model {model}: N must be >= 0 and MODEL a gpus.models key of the site "
            f"({', '.join(site.gpus.models) or 'none declared'}), as given to gpuhub node register --simulate"
        )
    if not node:
        raise MetricsConfigError("--simulate needs the node's hostname: pass --node or set GPUHUB_NODE")
    return tuple(Device(uuid, model) for uuid, model in simulated_gpus(node, simulate, model))


def simulated_gpus(hostname: str, count: int, model: str) -> list[tuple[str, str]]:
    """What ``gpuhub node register --simulate`` declares (:func:`gpuhub.node_cli.simulated_gpus`, a layer above
    the exporters, so restated here; tests/exporters/test_swarm_exporter.py holds the two equal)."""
    return [(f"GPU-sim-{hostname}-{i}", model) for i in range(count)]


def make_app(registry: CollectorRegistry, token: str | None = None) -> Callable:
    metrics = make_wsgi_app(registry)
    expected = f"Bearer {token}".encode() if token else None

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        if path != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found; metrics are at /metrics\n"]
        if expected is not None:
            given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1", "replace")
            if not hmac.compare_digest(given, expected):
                start_response(
                    "401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="gpuhub"')]
                )
                return [b"a bearer token is required\n"]
        return metrics(environ, start_response)

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


@dataclass
class MetricsServer:
    """A running endpoint; ``port`` is the bound port (useful with port 0)."""

    host: str
    port: int
    httpd: WSGIServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve(registry: CollectorRegistry, listen: str, token: str | None = None) -> MetricsServer:
    """Start serving ``registry`` on ``listen`` in a daemon thread."""
    host, port = parse_listen(listen)
    server_class = _Server6 if ":" in host else _Server
    httpd = make_server(host, port, make_app(registry, token), server_class=server_class, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="gpuhub-metrics-http", daemon=True
    )
    thread.start()
    return MetricsServer(host, httpd.server_address[1], httpd, thread)


def _wait(stop: threading.Event | None) -> None:
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def run_gpu_exporter(
    site: Any,
    listen: str,
    docker_client: Any = None,
    nvml: Any = None,
    *,
    interval: float = 1.0,
    slow_interval: float = 15.0,
    proc_root: str = "/proc",
    stop: threading.Event | None = None,
    environ: Mapping[str, str] | None = None,
    devices: Any = None,
    node: str = "",
) -> int:
    """Serve the GPU exporter until SIGINT/SIGTERM (or ``stop``). Returns the exit status.

    ``docker_client``: default ``docker.from_env()``, created lazily and retried by the sampler.
    ``nvml``: an NVML source; default real NVML when the site uses it (runtime nvidia / inventory nvml).
    ``devices``: the GPUs it answers for besides NVML's (default the site's; see :func:`node_devices`);
    ``node``: the node it runs on, for the log line.
    """
    from .gpu import build_gpu_exporter

    token = metrics_token(site, environ)
    factory = None
    if docker_client is None:

        def factory() -> Any:
            import docker

            return docker.from_env(timeout=5)

    registry, sampler = build_gpu_exporter(
        site,
        docker_client,
        nvml,
        docker_factory=factory,
        interval=interval,
        proc_root=proc_root,
        nvml_slow_interval=slow_interval,
        devices=devices,
    )
    try:
        sampler.sample_once()  # first values before the first scrape
    except Exception:
        log.exception("first GPU sampling pass failed")
    return _serve_until_stopped(
        registry,
        sampler,
        listen,
        token,
        stop,
        "gpu",
        f", NVML {'on' if sampler.source is not None else 'off'}, {len(sampler.devices)} declared GPU(s)"
        + (f" on node {node}" if node else ""),
    )


def run_usage_exporter(
    site: Any,
    listen: str,
    engine: Any = None,
    *,
    source: Any = None,
    interval: float = 5.0,
    stop: threading.Event | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Serve the usage exporter (ledger at ``site.hub.database_url`` unless ``engine``/``source``)."""
    from .usage import build_usage_exporter

    token = metrics_token(site, environ)
    registry, sampler = build_usage_exporter(site, engine, source=source, interval=interval)
    sampler.refresh()  # first values before the first scrape
    return _serve_until_stopped(registry, sampler, listen, token, stop, "usage")


def _serve_until_stopped(
    registry: CollectorRegistry,
    sampler: Any,
    listen: str,
    token: str | None,
    stop: threading.Event | None,
    kind: str,
    detail: str = "",
) -> int:
    """Start the sampler's loop and the endpoint; on SIGINT/SIGTERM (or ``stop``) close both."""
    sampler.start()
    server = serve(registry, listen, token)
    log.info("%s exporter on %s (token %s%s)", kind, server.url, "required" if token else "off", detail)
    try:
        _wait(stop)
    finally:
        server.close()
        sampler.stop()
    return 0


# ------------------------------------------------------------------------------------------ command line
# `gpuhub exporter gpu|usage` (gpuhub.cli) and `python -m exporters gpu|usage` hand their flags to these.

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _LogFormatter(logging.Formatter):
    """Time-stamped log lines, except a startup error the operator must fix: that is the one line
    ``gpuhub: error: ...`` that every gpuhub command prints."""

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "user_error", False):
            return f"gpuhub: error: {record.getMessage()}"
        return super().format(record)


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds > 0")
    return value


def _parser(kind: str, default_listen: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gpuhub exporter {kind}", description=f"Serve gpuhub's {kind} exporter")
    p.add_argument("--site", help="site config YAML (default: $GPUHUB_SITE_CONFIG or examples/site.yaml)")
    p.add_argument(
        "--listen", default=default_listen, help=f"HOST:PORT to serve /metrics on (default {default_listen})"
    )
    p.add_argument("--interval", type=_seconds, help="seconds between samples (gpu: 1, usage: 5)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="default INFO")
    if kind == "gpu":
        p.add_argument("--proc-root", default="/proc", help="the host's /proc (when running in a container)")
        p.add_argument(
            "--slow-interval",
            type=_seconds,
            default=15.0,
            help="seconds between NVML's costly reads: energy, per-process utilization, MIG layout "
            "(default 15, a usual scrape interval; ~6.8 ms CPU per H100 each time)",
        )
        p.add_argument(
            "--node",
            default=os.environ.get("GPUHUB_NODE") or socket.gethostname(),
            help="the Swarm node this exporter runs on (default $GPUHUB_NODE, else this host's name; "
            'docker-stack.yml sets GPUHUB_NODE to "{{.Node.Hostname}}")',
        )
        p.add_argument(
            "--simulate",
            type=int,
            metavar="N",
            help="hub.engine swarm with gpus.runtime none: the node's N simulated GPUs GPU-sim-<node>-<i>, "
            "as declared by `gpuhub node register --simulate N --model MODEL`",
        )
        p.add_argument("--model", help="with --simulate: the simulated GPUs' model (a gpus.models key)")
    return p


def _main(kind: str, argv: list[str] | None) -> int:
    args = _parser(kind, "127.0.0.1:9835" if kind == "gpu" else "127.0.0.1:9836").parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_LogFormatter(LOG_FORMAT))
    logging.basicConfig(level=args.log_level, handlers=[handler])
    try:
        parse_listen(args.listen)  # before any sampling starts, so a typo is the only line printed
        site = load_site(args.site)
        if kind == "gpu":
            return run_gpu_exporter(
                site,
                args.listen,
                interval=args.interval or 1.0,
                slow_interval=args.slow_interval,
                proc_root=args.proc_root,
                devices=node_devices(site, args.node, args.simulate, args.model),
                node=args.node,
            )
        return run_usage_exporter(site, args.listen, interval=args.interval or 5.0)
    except (SiteConfigError, MetricsConfigError) as e:
        log.error("%s", e, extra={"user_error": True})
        return 2
    except OSError as e:
        log.error(
            "cannot listen on %s: %s; choose a free HOST:PORT with --listen",
            args.listen,
            e.strerror or e,
            extra={"user_error": True},
        )
        return 2


def main_gpu(argv: list[str] | None = None) -> int:
    return _main("gpu", argv)


def main_usage(argv: list[str] | None = None) -> int:
    return _main("usage", argv)
