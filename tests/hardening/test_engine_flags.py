"""scripts/docker-engine.sh: the engine the project starts itself is hardened; an engine it did not start is left alone.

The flags are proven on this host's own dockerd without touching the running engine (other tests
use it): a private dockerd in its own mount, network and PID namespaces, with its own data root,
exec root, socket, containerd and cgroup parent, started exactly with what the script would pass.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "docker-engine.sh"
FLAGS = ["--live-restore", "--no-new-privileges", "--icc=false", "--userland-proxy=false"]
# a one-line TCP server (perl-base is in debian:bookworm-slim) and a client with a deadline
PONG = (
    "my $s = IO::Socket::INET->new(LocalPort => 80, Listen => 5, ReuseAddr => 1) or die; "
    'while (my $c = $s->accept) { print $c "pong\\n"; close $c }'
)
KNOCK = "timeout 5 bash -c 'exec 3<>/dev/tcp/{ip}/{port} && head -1 <&3' 2>/dev/null || echo 'no answer'"


def script_flags(config: Path | None = None) -> list[str]:
    env = {**os.environ, "GPUHUB_DOCKERD_CONFIG": str(config or "/nonexistent/daemon.json")}
    out = subprocess.run(["bash", str(SCRIPT), "--print-flags"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


class TrialEngine:
    """dockerd in private namespaces; ``docker(*args)`` talks to it only."""

    def __init__(self, flags: list[str], config: Path | None = None):
        if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("unshare"):
            pytest.fail(
                "this test starts a private dockerd: it needs root, dockerd and unshare (util-linux)", pytrace=False
            )
        self.dir = Path(tempfile.mkdtemp(prefix="gpuhub-dockerd-"))
        self.sock = self.dir / "docker.sock"
        args = [
            "dockerd",
            "--data-root",
            f"{self.dir}/data",
            "--exec-root",
            f"{self.dir}/exec",
            "--pidfile",
            f"{self.dir}/dockerd.pid",
            "-H",
            f"unix://{self.sock}",
            "--cgroup-parent",
            f"gpuhub-trial-{self.dir.name}",
            *(["--config-file", str(config)] if config else []),
            *flags,
        ]
        # /run hidden: the host engine's socket and containerd stay out of reach; lo up for the bridge setup
        inner = "mount -t tmpfs tmpfs /run && ip link set lo up && exec " + " ".join(args)
        self.log = open(self.dir / "dockerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--kill-child", "sh", "-c", inner],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dockerd {' '.join(flags)} exited {self.proc.returncode}:\n{self.logs()}")
            if self.sock.exists() and self.docker("info", check=False).returncode == 0:
                return
            time.sleep(0.3)
        raise AssertionError(f"dockerd {' '.join(flags)} did not answer in 60 s:\n{self.logs()}")

    def docker(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", "-H", f"unix://{self.sock}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=120,
            **kw,
        )

    def logs(self) -> str:
        return (self.dir / "dockerd.log").read_text(errors="replace")[-4000:]

    def pid(self) -> int:
        """dockerd's PID as this host sees it (its pidfile holds 1: its own PID namespace's view)."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return int(children[0])

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        finally:
            self.log.close()
            subprocess.run(["rm", "-rf", str(self.dir)], check=False)
            for parent in Path("/sys/fs/cgroup").glob(f"*/gpuhub-trial-{self.dir.name}"):  # its (empty) cgroups
                for d in sorted((p for p in [parent, *parent.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)):
                    d.rmdir()


def test_an_engine_that_answers_is_left_alone(docker_client):
    before = docker_client.info()["ID"]
    r = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert docker_client.info()["ID"] == before


def test_the_flags_it_starts_dockerd_with_work_on_this_hosts_dockerd(docker_client):
    assert script_flags() == FLAGS
    engine = TrialEngine(script_flags())
    try:
        assert engine.docker("info", "--format", "{{.LiveRestoreEnabled}}").stdout.strip() == "true"
        icc = engine.docker(
            "network", "inspect", "bridge", "--format", '{{index .Options "com.docker.network.bridge.enable_icc"}}'
        ).stdout.strip()
        assert icc == "false"
        forward = subprocess.run(
            ["nsenter", "-t", str(engine.pid()), "-n", "iptables", "-S"], capture_output=True, text=True, check=True
        ).stdout
        assert "-A FORWARD -i docker0 -o docker0 -j DROP" in forward, forward  # icc=false: docker0 -> docker0
        # a container: no new privileges by default; a port published on loopback answers there without
        # a docker-proxy process (what tests/compose relies on: PostgreSQL and Prometheus on 127.0.0.1);
        # another container on the default bridge cannot reach it
        save = subprocess.Popen(["docker", "save", "debian:bookworm-slim"], stdout=subprocess.PIPE)
        engine.docker("load", stdin=save.stdout)
        save.wait(60)
        engine.docker(
            "run",
            "-d",
            "--name",
            "probe",
            "-p",
            "127.0.0.1:18765:80",
            "debian:bookworm-slim",
            "perl",
            "-MIO::Socket::INET",
            "-e",
            PONG,
        )
        status = engine.docker("exec", "probe", "grep", "NoNewPrivs", "/proc/self/status").stdout.split()
        assert status == ["NoNewPrivs:", "1"]
        proxies = subprocess.run(["pgrep", "-af", "docker-proxy.*-host-port 18765"], capture_output=True, text=True)
        assert proxies.stdout == "", proxies.stdout
        host = subprocess.run(
            ["nsenter", "-t", str(engine.pid()), "-n", "bash", "-c", KNOCK.format(ip="127.0.0.1", port=18765)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert host.stdout.strip() == "pong", (host.stdout, host.stderr)
        ip = engine.docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", "probe").stdout.strip()
        other = engine.docker(
            "run", "--rm", "debian:bookworm-slim", "bash", "-c", KNOCK.format(ip=ip, port=80), check=False
        )
        assert other.stdout.strip() == "no answer", (other.stdout, other.stderr)
        engine.docker("rm", "-f", "probe")
    finally:
        engine.stop()


def test_a_setting_the_operators_daemon_json_has_stays_theirs(tmp_path):
    config = tmp_path / "daemon.json"
    config.write_text(json.dumps({"icc": False, "live-restore": True}))
    flags = script_flags(config)
    assert flags == ["--no-new-privileges", "--userland-proxy=false"]
    engine = TrialEngine(flags, config=config)  # dockerd refuses a flag that the file sets too
    try:
        assert engine.docker("info", "--format", "{{.LiveRestoreEnabled}}").stdout.strip() == "true"
    finally:
        engine.stop()
    # what the script avoids: the same setting as a flag and in the file (in private namespaces too)
    both = subprocess.run(
        [
            "unshare",
            "--mount",
            "--net",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            f"mount -t tmpfs tmpfs /run && exec dockerd --config-file {config} --icc=false "
            f"--data-root {tmp_path}/d -H unix://{tmp_path}/x.sock",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert both.returncode != 0 and "both as a flag and in the configuration file" in both.stderr, both.stderr
