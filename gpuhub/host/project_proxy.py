"""The download filter in front of project servers: Debian's nginx with njs, outside the user's container.

Design (issue 13, item 4). JupyterHub's proxy (configurable-http-proxy) routes a project server's prefix
``/user/NAME/KEY/`` to this nginx on ``127.0.0.1:hub.project_proxy_port`` (the spawner returns that address from
``start()``), never to the container, so every byte between the browser and a project server passes here. nginx
picks the upstream per request from a routes file (:class:`RoutesFile`, JSON, written atomically by the spawner:
tmp file + rename), read by njs (``js_set``): a spawn or a stop never reloads nginx, and a removed route stops
working with the next request. The rules (``project_proxy.js``), checked on nginx's decoded, normalised path
(``%66iles``, ``//``, ``..`` cannot hide a rule; matching ignores case):

- unknown prefix: 404 with a body that says so;
- ``…/files/…``, ``…/nbconvert/…``, ``…/view/…`` (any method) and a contents API read asking ``format=base64``:
  403 before the request reaches the server (rules ``files-download``, ``nbconvert-download``,
  ``view-download``, ``contents-base64``); so is a path with a dot segment (``/../``, ``/./``, also encoded:
  rule ``dot-segments``), because nginx checks the normalised path but sends the server the client's own, and
  ``files/x/../../api/contents/y`` would otherwise be checked as one and routed as the other;
- every contents API read (GET/HEAD ``…/api/contents/…``) is fetched whole through an internal subrequest and
  answered by njs: a reply whose model has ``"format": "base64"`` (a binary file read without asking for a format
  gets one) or that is over the route's ``max_response_bytes`` is a real 403, and nothing of it leaves;
- any other response: a ``Content-Length`` over the limit, or a compressed body (``Content-Encoding``; nginx asks
  the server for identity, so only a server that ignores that sends one), loses its body, which is replaced by
  the refusal text with ``X-Gpuhub-Blocked: RULE``. Limit: njs 0.7.9 cannot set the status of a proxied response
  (nginx sends the upstream's status line whatever a header filter sets; checked when this was built), so these
  keep the upstream's status line. A response without a length is counted and cut when it passes the limit:
  the bytes before the cut (at most the limit) have left;
- websockets (kernels, terminals) and everything else pass unchanged (``Upgrade``/``Connection`` forwarded,
  day-long timeouts). A websocket's frames are not inspected: what a kernel prints reaches the browser, which
  is the safe-zone model (a member can read values off the screen; files cannot be carried out in bulk).

The limit counts the bytes of the response, not of the file: a contents read is JSON, in which a text file
grows (escaped newlines and quotes; non-ASCII text as ``\\uXXXX``, e.g. Korean about twice its UTF-8 size), so
a text file somewhat under ``max_response_mb`` can still be refused.

nginx never writes a body to disk (``proxy_max_temp_file_size 0``, ``proxy_request_buffering off``); a contents
read is held in memory up to :attr:`ProxyLimits.buffer_bytes`. Each refusal is one JSON line in the blocked log
(``access_log … if=$gpuhub_blocked``: time, prefix, user, project, method, path, args, size, status,
X-Forwarded-For, remote address, rule), which ``gpuhub service project-proxy`` turns into audit rows.

What a user-controlled server could still do: the rules name the stock Jupyter server's download paths, so a
member who replaces the server in their container can serve a file under another path; the size limit still
bounds each response, and every such response still goes only through here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

JS_MODULE = Path(__file__).with_name("project_proxy.js")
NJS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")  # Debian's libnginx-mod-http-js
MIB = 1024 * 1024
RUN_DIR = Path("/run/gpuhub")  # a root hub's filter folders (see ProxyPaths.for_state_dir)
RULES = (
    "files-download",
    "nbconvert-download",
    "view-download",
    "contents-base64",
    "response-too-large",
    "encoded-response",
    "dot-segments",
)


def limit_bytes(max_response_mb: float) -> int:
    """``projects.KEY.max_response_mb`` (MiB) as bytes."""
    return int(max_response_mb * MIB)


@dataclass(frozen=True)
class ProxyLimits:
    """Sizes and times of the filter (one set for the whole nginx; the per-route limit is in the routes file).

    ``buffer_bytes`` bounds a contents read held in memory (nginx's ``subrequest_output_buffer_size``); make it
    the largest project limit plus room for the JSON around a file (a contents read over it is refused as too
    large, never passed). ``max_body_bytes`` bounds a request body (a notebook save)."""

    buffer_bytes: int = 8 * MIB
    max_body_bytes: int = 512 * MIB
    websocket_timeout_s: int = 86400
    connect_timeout_s: int = 10
    worker_processes: int = 2

    @classmethod
    def for_limits(cls, route_limits: list[int], **kw) -> ProxyLimits:
        """Limits whose buffer holds the largest route limit (plus 25% for the JSON escaping of a text file)."""
        largest = max([limit_bytes(5), *route_limits])
        return cls(buffer_bytes=max(cls.buffer_bytes, int(largest * 1.25) + MIB), **kw)


@dataclass(frozen=True)
class ProxyPaths:
    """Where the filter keeps its files: one folder (nginx's ``-p`` prefix) under the hub's state dir."""

    runtime_dir: Path

    def __post_init__(self):
        object.__setattr__(self, "runtime_dir", Path(self.runtime_dir))

    @classmethod
    def for_state_dir(cls, state_dir: Path | str) -> ProxyPaths:
        """The filter's folder for a hub whose state dir is ``state_dir`` (the hub and the service agree on it).

        Run as root, nginx's workers are ``nobody`` and cannot enter a private (0700) state dir, which holds the
        hub's secrets; so a root hub's filter lives in ``/run/gpuhub/project-proxy-<hash of the state dir>``
        (root-owned, 0755; nothing secret in it: routes, nginx.conf, the blocked log). Otherwise (workers run as
        the hub's user) it is ``STATE_DIR/project-proxy``."""
        state = Path(state_dir).resolve()
        if os.geteuid() == 0 and RUN_DIR.parent.is_dir():
            return cls(RUN_DIR / f"project-proxy-{hashlib.sha256(str(state).encode()).hexdigest()[:12]}")
        return cls(state / "project-proxy")

    @property
    def conf(self) -> Path:
        return self.runtime_dir / "nginx.conf"

    @property
    def routes(self) -> Path:
        return self.runtime_dir / "routes.json"

    @property
    def blocked_log(self) -> Path:
        return self.runtime_dir / "blocked.log"

    @property
    def pid(self) -> Path:
        return self.runtime_dir / "nginx.pid"

    @property
    def temp(self) -> Path:
        return self.runtime_dir / "tmp"


def _q(value: object) -> str:
    """An nginx string literal."""
    text = str(value)
    if any(c in text for c in '"\\\n$'):
        raise ValueError(f"project proxy: {text!r} cannot be written into nginx.conf; use a plain path")
    return f'"{text}"'


_PROXY = """\
            proxy_http_version 1.1;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $gpuhub_connection;
            proxy_set_header X-Forwarded-For {xff};
            proxy_set_header Accept-Encoding "";
            proxy_connect_timeout {connect}s;
            proxy_read_timeout {ws}s;
            proxy_send_timeout {ws}s;
            proxy_max_temp_file_size 0;
            proxy_request_buffering off;
            proxy_redirect off;"""

_LOG_FIELDS = (
    ("time", "$time_iso8601"),
    ("prefix", "$gpuhub_prefix"),
    ("user", "$gpuhub_user"),
    ("project", "$gpuhub_project"),
    ("method", "$request_method"),
    ("path", "$uri"),
    ("args", "$args"),
    ("size", "$gpuhub_size"),
    ("status", "$status"),
    ("forwarded_for", "$http_x_forwarded_for"),
    ("remote_addr", "$remote_addr"),
    ("rule", "$gpuhub_blocked"),
)


_JS_VARS = ("prefix", "user", "project", "limit", "rest", "blocked", "size", "count", "cut", "upstream_uri")

_CONF = """\
# generated by gpuhub.host.project_proxy.render_nginx_conf (gpuhub service project-proxy); do not edit
load_module {njs_module};
daemon off;
worker_processes {workers};
pid {pid};
error_log {error_log} notice;
events {{ worker_connections 4096; }}

http {{
    server_tokens off;
    access_log off;
    default_type text/plain;
    client_body_temp_path {tmp_body};
    proxy_temp_path {tmp_proxy};
    fastcgi_temp_path {tmp_fastcgi};
    uwsgi_temp_path {tmp_uwsgi};
    scgi_temp_path {tmp_scgi};
    client_max_body_size {max_body};
    js_path {js_path};
    js_import gpuhub from {js_name};
    js_var $gpuhub_routes_path {routes};
    js_var $gpuhub_cap {cap};
    {js_vars}
    js_set $gpuhub_target gpuhub.target;
    js_set $gpuhub_request_rule gpuhub.requestRule;
    js_set $gpuhub_message gpuhub.requestMessage;
    js_set $gpuhub_contents_read gpuhub.contentsRead;
    map $http_upgrade $gpuhub_connection {{ default upgrade; "" ""; }}
    log_format gpuhub_blocked escape=json '{log_format}';

    server {{
        listen {listen_host}:{port};
        access_log {blocked_log} gpuhub_blocked if=$gpuhub_blocked;
        if ($gpuhub_target = "") {{
            return 404 "gpuhub project proxy: no project server is routed at $uri; start it from the hub home page\\n";
        }}
        if ($gpuhub_request_rule) {{
            return 403 $gpuhub_message;
        }}
        location / {{
            error_page 418 = @gpuhub_contents;
            if ($gpuhub_contents_read) {{
                return 418;
            }}
            proxy_pass $gpuhub_target$request_uri;
{proxy}
            js_header_filter gpuhub.headerFilter;
            js_body_filter gpuhub.bodyFilter buffer_type=buffer;
        }}
        location @gpuhub_contents {{
            js_content gpuhub.contentsReadHandler;
        }}
        location = /_gpuhub_contents {{
            internal;
            proxy_pass http://unix:{sock}:$gpuhub_upstream_uri;
{proxy}
            subrequest_output_buffer_size {buffer};
        }}
    }}

    server {{  # the contents reads' second hop: cuts a reply at the limit, so it fits the buffer above
        listen unix:{sock};
        access_log off;
        if ($gpuhub_target = "") {{
            return 404 "gpuhub project proxy: no project server is routed at $uri\\n";
        }}
        if ($gpuhub_request_rule) {{  # also here: a host user who finds the socket gets no download path either
            return 403 $gpuhub_message;
        }}
        location / {{
            proxy_pass $gpuhub_target$request_uri;
{inner_proxy}
            js_header_filter gpuhub.headerFilter;
            js_body_filter gpuhub.bodyFilter buffer_type=buffer;
        }}
    }}
}}
"""


def render_nginx_conf(
    listen_port: int,
    routes_path: Path | str,
    blocked_log_path: Path | str,
    limits: ProxyLimits,
    runtime_dir: Path | str,
    *,
    listen_host: str = "127.0.0.1",
    js_module: Path = JS_MODULE,
    njs_module: Path = NJS_MODULE,
    error_log: str = "stderr",
) -> str:
    """The whole nginx.conf: run it as ``nginx -p RUNTIME_DIR -c CONF -e stderr`` (foreground, ``daemon off``)."""
    run = Path(runtime_dir)
    sock = str(run / "filter.sock")
    if len(sock) > 100 or any(c in sock for c in " :;{}\"'$"):
        raise ValueError(f"project proxy: socket path {sock!r} is too long or not plain; use a shorter runtime dir")
    timeouts = {"connect": limits.connect_timeout_s, "ws": limits.websocket_timeout_s}
    tmp = {f"tmp_{k}": _q(run / "tmp" / k) for k in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return _CONF.format(
        njs_module=_q(njs_module),
        workers=int(limits.worker_processes),
        pid=_q(run / "nginx.pid"),
        error_log=error_log,
        max_body=int(limits.max_body_bytes),
        js_path=_q(Path(js_module).parent),
        js_name=Path(js_module).name,
        routes=_q(routes_path),
        cap=max(1, limits.buffer_bytes - 64 * 1024),  # the refusal text and headers fit in the rest
        js_vars=" ".join(f"js_var $gpuhub_{v};" for v in _JS_VARS),
        log_format="{" + ",".join(f'"{k}":"{v}"' for k, v in _LOG_FIELDS) + "}",
        listen_host=listen_host,
        port=int(listen_port),
        blocked_log=_q(blocked_log_path),
        proxy=_PROXY.format(xff="$proxy_add_x_forwarded_for", **timeouts),
        inner_proxy=_PROXY.format(xff="$http_x_forwarded_for", **timeouts),  # the outer hop added the client
        sock=sock,
        buffer=int(limits.buffer_bytes),
        **tmp,
    )


def user_of(prefix: str) -> str:
    """The user name in a JupyterHub server prefix ``…/user/NAME/KEY/`` (URL-decoded), or "" if none."""
    parts = [p for p in prefix.split("/") if p]
    return unquote(parts[-2]) if len(parts) >= 3 and parts[-3] == "user" else ""


class RoutesFile:
    """The routes nginx reads per request: ``{"routes": {PREFIX: {target, project, user, max_response_bytes}}}``.

    Writers (the spawner, in the hub) serialise on ``PATH.lock`` (flock) and replace the file atomically
    (tmp + fsync + rename), so nginx always reads a whole file; the file is 0644 (nginx's workers run as nobody).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def all(self) -> dict[str, dict]:
        try:
            return json.loads(self.path.read_text()).get("routes", {})
        except FileNotFoundError:
            return {}

    def set(self, prefix: str, target: str, *, project: str, max_response_bytes: int, user: str | None = None) -> None:
        """Route ``prefix`` (a server's base url, ``/user/NAME/KEY/``) to ``target`` (``http://IP:PORT``)."""
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise ValueError(f"project proxy route {prefix!r}: a prefix starts and ends with '/' (/user/NAME/KEY/)")
        if not target.startswith("http://") or target.count("/") != 2:
            raise ValueError(f"project proxy route {prefix}: target {target!r} must be http://IP:PORT (no path)")
        if max_response_bytes <= 0:
            raise ValueError(f"project proxy route {prefix}: max_response_bytes must be > 0 (a project's limit)")
        entry = {
            "target": target,
            "project": project,
            "user": user if user is not None else user_of(prefix),
            "max_response_bytes": int(max_response_bytes),
        }
        with self._locked() as routes:
            routes[prefix] = entry

    def ensure(self) -> None:
        """Create an empty table if there is no file yet (every prefix is a 404 until the spawner adds one)."""
        with self._locked():
            pass

    def remove(self, prefix: str) -> bool:
        """Drop a route; True if it was there. The next request to it gets the 404."""
        with self._locked() as routes:
            return routes.pop(prefix, None) is not None

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            routes = self.all()
            yield routes
            self._write(routes)

    def _write(self, routes: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".routes-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": 1, "routes": routes}, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
