"""Probe kit for the closed-network tests: listeners on the host, a stand-in "outside", a probe run in containers.

Every address used here is on this machine: Docker bridge gateways (the host's own addresses), containers the
test started, and a network namespace the test creates with a benchmark-range address (198.18.0.0/15).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from dataclasses import dataclass, field

OUTSIDE_HOST_IP = "198.19.250.1"  # host end of the veth pair
OUTSIDE_IP = "198.19.250.2"  # the stand-in "internet" inside the namespace

# Runs inside a container: python3 -c PROBE '<json list of [kind, target, port]>'; prints {key: "ok …"|"fail …"}.
PROBE = r"""
import json, os, socket, struct, sys, time

def icmp(ip):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(2)
    ident = os.getpid() & 0xFFFF
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"gpuhub-probe"
    c = sum(struct.unpack("!%dH" % (len(hdr) // 2), hdr))
    c = (c >> 16) + (c & 0xFFFF); c = ~(c + (c >> 16)) & 0xFFFF
    s.sendto(hdr[:2] + struct.pack("!H", c) + hdr[4:], (ip, 0))
    end = time.time() + 2
    while time.time() < end:
        data, addr = s.recvfrom(2048)
        t = data[(data[0] & 0x0F) * 4]
        if addr[0] == ip and t == 0:
            return b"echo-reply"
        if t == 3:
            raise OSError("destination unreachable (ICMP type 3 code %d)" % data[(data[0] & 0x0F) * 4 + 1])
    raise TimeoutError("no echo reply")

out = {}
for kind, target, port in json.loads(sys.argv[1]):
    key = "%s %s:%s" % (kind, target, port)
    try:
        if kind == "tcp":
            s = socket.create_connection((target, port), timeout=2); s.settimeout(2); data = s.recv(200)
        elif kind == "udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
            s.connect((target, port)); s.send(b"probe"); data = s.recv(200)
        elif kind == "icmp":
            data = icmp(target)
        elif kind == "dns":
            data = repr(sorted({a[4][0] for a in socket.getaddrinfo(target, None)})).encode()
        out[key] = "ok " + data.decode(errors="replace")
    except Exception as e:
        out[key] = "fail %s: %s" % (type(e).__name__, e)
print(json.dumps(out))
"""


@dataclass
class Listener:
    """A TCP or UDP listener on (ip, port) that answers ``banner`` and records who came."""

    kind: str
    ip: str
    port: int = 0
    banner: str = ""
    seen: list[str] = field(default_factory=list)

    def start(self) -> Listener:
        st = socket.SOCK_STREAM if self.kind == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, st)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((self.ip, self.port))
        self.port = self.sock.getsockname()[1]
        self.banner = self.banner or f"{self.kind} {self.ip}:{self.port}"
        if self.kind == "tcp":
            self.sock.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def _serve(self) -> None:
        while True:
            try:
                if self.kind == "tcp":
                    conn, addr = self.sock.accept()
                    self.seen.append(addr[0])
                    conn.sendall(self.banner.encode())
                    conn.close()
                else:
                    data, addr = self.sock.recvfrom(2048)
                    self.seen.append(addr[0])
                    self.sock.sendto(self._answer(data), addr)
            except OSError:
                return

    def _answer(self, data: bytes) -> bytes:
        return self.banner.encode()

    def close(self) -> None:
        self.sock.close()


class FakeDns(Listener):
    """Answers every UDP DNS query with an A record for the stand-in outside: a query reaching it resolves."""

    def _answer(self, q: bytes) -> bytes:
        end = q.index(b"\x00", 12) + 5  # end of the question
        head = q[:2] + b"\x81\x80" + q[4:6] + b"\x00\x01\x00\x00\x00\x00"
        answer = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(OUTSIDE_IP)
        return head + q[12:end] + answer


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


class Outside:
    """A network namespace with a veth pair to the host: the test's stand-in for the internet."""

    def __init__(self, tag: str):
        self.ns, self.host_if, self.ns_if = f"gpt-{tag}", f"gpo{tag}"[:15], f"gpi{tag}"[:15]
        self.procs: list[subprocess.Popen] = []

    def up(self, tcp_port: int, udp_port: int) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        sh("ip", "link", "set", self.ns_if, "netns", self.ns)
        sh("ip", "addr", "add", f"{OUTSIDE_HOST_IP}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        for cmd in (
            ["addr", "add", f"{OUTSIDE_IP}/30", "dev", self.ns_if],
            ["link", "set", self.ns_if, "up"],
            ["link", "set", "lo", "up"],
        ):
            sh("ip", "netns", "exec", self.ns, "ip", *cmd)
        code = (
            "import socket,sys,threading\n"
            "t=socket.socket();t.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"t.bind(('{OUTSIDE_IP}',{tcp_port}));t.listen(8)\n"
            "u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"u.bind(('{OUTSIDE_IP}',{udp_port}))\n"
            "def udp():\n"
            "  while True:\n"
            "    d,a=u.recvfrom(2048);print('udp',a[0],flush=True);u.sendto(b'outside-udp',a)\n"
            "threading.Thread(target=udp,daemon=True).start()\n"
            "print('ready',flush=True)\n"
            "while True:\n"
            "  c,a=t.accept();print('tcp',a[0],flush=True);c.sendall(b'outside-tcp');c.close()\n"
        )
        p = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, "python3", "-u", "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready", "the outside stand-in did not start"

    def down(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(10)
        sh("ip", "link", "del", self.host_if, check=False)
        sh("ip", "netns", "del", self.ns, check=False)


def probe(container, targets: list[tuple[str, str, int]], user: str | None = None) -> dict[str, str]:
    """Run PROBE in ``container`` (as ``user``) against ``targets``; returns {"kind ip:port": "ok …"|"fail …"}."""
    r = container.exec_run(["python3", "-c", PROBE, json.dumps(targets)], user=user or "")
    text = r.output.decode(errors="replace")
    assert r.exit_code == 0, f"probe crashed in {container.name}: {text}"
    return json.loads(text.strip().splitlines()[-1])
