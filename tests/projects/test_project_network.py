"""The closed room's network on the real engine: from a project container nothing answers but the hub API.

Probes aim only at this machine (see tests/projects/netkit.py). Two project-A containers: A1 is set up as a
project server will be (``cap_drop: ALL``, default route deleted, ``dns`` = the project gateway); A2 is the
worst case the firewall alone must hold: root, Docker's default capabilities (raw sockets), default route kept.
"""

from __future__ import annotations

import ipaddress
import subprocess
import time
import uuid

import pytest

from gpuhub.host import project_network as pn
from gpuhub.host.dockerenv import USER_NETWORK_OPTIONS, _facts
from tests.harness import BASE_IMAGE
from tests.projects.netkit import OUTSIDE_IP, FakeDns, Listener, Outside, probe, sh

pytestmark = pytest.mark.docker
TAG = uuid.uuid4().hex[:8]
RUN = {"gpuhub.test-run": TAG}
SERVE = ["python3", "-m", "http.server", "8888", "--bind", "0.0.0.0"]


def bridge_gateways(client) -> dict[str, str]:
    """{network name: gateway} of every bridge network on this engine: the addresses Docker gave the host."""
    out = {}
    for n in client.networks.list(filters={"driver": "bridge"}):
        n.reload()
        try:
            out[n.name] = _facts(n.name, n.attrs).gateway
        except RuntimeError:  # an IPv6-only bridge: nothing to probe over IPv4
            continue
    return out


def run(client, name, network, **kw):
    return client.containers.run(
        BASE_IMAGE, kw.pop("command", SERVE), name=f"gpt-{name}-{TAG}", network=network, labels=RUN, detach=True, **kw
    )


def start_servers(client, a, b, user) -> dict:
    """A1, A2 on project A, B1 on project B, U1 on the user network (see the module docstring); ``ips``."""
    found = {
        "a1": run(client, "a1", a.name, cap_drop=["ALL"], **pn.container_host_config(a)),
        "a2": run(client, "a2", a.name, user="root", **pn.container_host_config(a)),
        "b1": run(client, "b1", b.name, cap_drop=["ALL"], **pn.container_host_config(b)),
        "u1": run(client, "u1", user.name, user="root"),
    }
    for c in found.values():
        c.reload()
    pn.drop_default_route(found["a1"].attrs["State"]["Pid"])  # what the spawner will do after start
    found["ips"] = {c.name: next(iter(c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
                    for c in found.values()}  # fmt: skip
    return found


@pytest.fixture(scope="module")
def room(request, docker_client):
    client, fw = docker_client, pn.Firewall()
    keys = [f"pt-a-{TAG}", f"pt-b-{TAG}"]
    outside, listeners = Outside(TAG), []
    try:
        live = {n.attrs["Labels"][pn.PROJECT] for n in client.networks.list(filters={"label": pn.PROJECT})}
        pn.forget_projects({k for k in fw.keys() - live if k.startswith("pt-")}, fw)  # a killed run's rules
        user = client.networks.create(
            f"gpt-user-{TAG}", driver="bridge", options=USER_NETWORK_OPTIONS, labels={**RUN, "gpuhub.managed": "1"}
        )
        user.reload()
        user_gw = _facts(user.name, user.attrs).gateway
        a, b = (pn.ensure_project_network(client, k, labels=RUN) for k in keys)
        hub_api = Listener("tcp", user_gw, banner="hub-api").start()  # the hub's real listening address
        listeners.append(hub_api)
        hub = pn.HubPath(ip=user_gw, port=hub_api.port)
        for net in (a, b):
            fw.allow_project(net, hub)
        dns = FakeDns("udp", a.gateway, 53, banner="dns").start()
        listeners.append(dns)
        gateways = bridge_gateways(client)
        for ip in sorted(set(gateways.values())):
            listeners += [Listener("tcp", ip).start(), Listener("udp", ip).start()]
        outside.up(tcp_port=18080, udp_port=18081)

        servers = start_servers(client, a, b, user)
        yield dict(client=client, fw=fw, a=a, b=b, user_gw=user_gw, hub=hub, hub_api=hub_api, dns=dns,
                   gateways=gateways, listeners=listeners, outside=outside, **servers)  # fmt: skip
    finally:
        for c in client.containers.list(all=True, filters={"label": f"gpuhub.test-run={TAG}"}):
            if request.session.testsfailed:
                print(f"--- {c.name} logs ---\n{c.logs(tail=50).decode(errors='replace')}")
            c.remove(force=True)
        for n in client.networks.list(filters={"label": f"gpuhub.test-run={TAG}"}):
            n.remove()
        for k in keys:
            fw.remove_project(k)
        if not fw.rules():
            fw.remove_all()
        outside.down()
        for lst in listeners:
            lst.close()


def ok(result: str) -> bool:
    return result.startswith("ok ")


def host_targets(room) -> list[tuple[str, str, int]]:
    return [(lst.kind, lst.ip, lst.port) for lst in room["listeners"] if lst not in (room["hub_api"], room["dns"])]


def test_the_project_network_is_internal_and_closed(room):
    attrs = room["client"].networks.get(room["a"].name).attrs
    assert attrs["Internal"] is True and attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert attrs["Labels"]["gpuhub.managed"] == "1" and attrs["Labels"]["gpuhub.project"] == room["a"].key
    again = pn.ensure_project_network(room["client"], room["a"].key)
    assert again == room["a"]


def test_an_open_network_of_that_name_is_refused(docker_client):
    key = f"pt-open-{TAG}"
    net = docker_client.networks.create(pn.project_network_name(key), driver="bridge", labels=RUN)
    try:
        with pytest.raises(pn.ProjectNetworkError) as e:
            pn.ensure_project_network(docker_client, key)
        assert str(e.value) == (
            f"docker network gpuhub-project-{key} exists but it is not --internal, inter-container traffic (icc) "
            f"is on, its label gpuhub.project is not '{key}': the project would not be closed; stop its "
            f"containers and remove it (`docker network rm gpuhub-project-{key}`), gpuhub recreates it"
        )
    finally:
        net.remove()


def test_bad_project_keys_are_refused():
    with pytest.raises(pn.ProjectNetworkError, match=r"projects.Bad_Key: a project key must be 1-40 lower-case"):
        pn.project_network_name("Bad_Key")


@pytest.mark.parametrize("who", ["a1", "a2"])
def test_nothing_on_the_host_answers_a_project_container(room, who):
    """TCP and UDP to a listener on every bridge gateway (this project's, the other's, docker0, the user
    network's, any other helper's) fail; the hub API through the project gateway answers."""
    targets = host_targets(room) + [("tcp", room["a"].gateway, room["hub"].port)]
    got = probe(room[who], targets, user="root" if who == "a2" else None)
    for t in targets[:-1]:
        print(who, t, "->", got[f"{t[0]} {t[1]}:{t[2]}"])
    opened = {k: v for k, v in got.items() if ok(v)}
    assert opened == {f"tcp {room['a'].gateway}:{room['hub'].port}": "ok hub-api"}
    project_net = ipaddress.ip_network(room["a"].subnet)
    for lst in room["listeners"]:
        if lst is not room["hub_api"]:
            assert not [s for s in lst.seen if ipaddress.ip_address(s) in project_net], (lst, lst.seen)


@pytest.mark.parametrize("who", ["a1", "a2"])
def test_the_hub_is_reachable_only_through_the_door(room, who):
    """Dialling the hub's own address directly (not through the DNAT on the project gateway) fails."""
    got = probe(room[who], [("tcp", room["user_gw"], room["hub"].port)], user="root" if who == "a2" else None)
    print(who, got)
    assert not ok(next(iter(got.values())))


@pytest.mark.parametrize("who", ["a1", "a2"])
def test_no_other_container_answers_a_project_container(room, who):
    ips = room["ips"]
    peers = [n for n in ips if not n.startswith(f"gpt-{who}-")]
    targets = [("tcp", ips[n], 8888) for n in peers]
    got = probe(room[who], targets, user="root" if who == "a2" else None)
    print(who, got)
    assert not [k for k, v in got.items() if ok(v)]


def test_the_outside_stand_in_answers_an_ordinary_container_only(room):
    targets = [("tcp", OUTSIDE_IP, 18080), ("udp", OUTSIDE_IP, 18081), ("icmp", OUTSIDE_IP, 0)]
    ordinary = probe(room["u1"], targets + [("tcp", room["user_gw"], room["hub"].port)])
    print("u1", ordinary)
    assert ordinary == {
        f"tcp {OUTSIDE_IP}:18080": "ok outside-tcp",
        f"udp {OUTSIDE_IP}:18081": "ok outside-udp",
        f"icmp {OUTSIDE_IP}:0": "ok echo-reply",
        f"tcp {room['user_gw']}:{room['hub'].port}": "ok hub-api",
    }  # the ordinary server as today
    for who in ("a1", "a2"):
        got = probe(room[who], targets[:2] + ([targets[2]] if who == "a2" else []), user="root")
        print(who, got)
        assert not [k for k, v in got.items() if ok(v)]


def test_icmp_from_a_root_project_container_gets_no_echo(room):
    """A2 keeps raw sockets; ping every gateway, the other project's and the ordinary container."""
    ips = room["ips"]
    targets = [("icmp", ip, 0) for ip in sorted(set(room["gateways"].values()))]
    targets += [("icmp", ips[c.name], 0) for c in (room["b1"], room["u1"], room["a1"])]
    got = probe(room["a2"], targets, user="root")
    print(got)
    assert not [k for k, v in got.items() if ok(v)]
    control = probe(room["u1"], [("icmp", room["user_gw"], 0)])  # ICMP itself works from an ordinary container
    assert control == {f"icmp {room['user_gw']}:0": "ok echo-reply"}


def test_routing_table_and_ipv6(room):
    routes = room["a1"].exec_run(["cat", "/proc/net/route"]).output.decode().splitlines()[1:]
    print(routes)
    assert routes and not [r for r in routes if r.split()[1] == "00000000"]  # no default route
    assert room["a1"].exec_run(["cat", "/proc/net/if_inet6"]).output.decode().strip() == ""
    assert room["a1"].exec_run(["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"]).output.decode().strip() == "1"
    # A1 cannot put the route back: it has no capabilities
    r = room["a1"].exec_run(["python3", "-c", "import os; print(open('/proc/self/status').read())"])
    assert "CapEff:\t0000000000000000" in r.output.decode()


def test_outside_names_do_not_resolve(room):
    """The resolver may forward only to the project gateway, where a fake DNS would answer; the firewall keeps
    the query from reaching it, so the name fails, while the project's own container names still resolve."""
    for c in (room["a1"], room["a2"], room["b1"]):
        net = room["a"] if c is not room["b1"] else room["b"]
        assert c.attrs["HostConfig"]["Dns"] == [net.gateway]  # checked BEFORE any lookup: nothing can leave
    for who in ("a1", "a2", "b1"):
        t0 = time.monotonic()
        got = probe(room[who], [("dns", "example.com", 0), ("dns", "example.org", 0)], user="root")
        took = time.monotonic() - t0
        print(who, got, f"({took:.2f} s for both lookups)")
        assert took < 8  # dns_opt: a tool gives up within seconds, it does not hang
        assert not [k for k, v in got.items() if ok(v)]
    assert room["dns"].seen == []
    same_net = probe(room["a1"], [("dns", room["a2"].name, 0)])
    assert same_net == {f"dns {room['a2'].name}:0": f"ok ['{room['ips'][room['a2'].name]}']"}


def test_the_resolver_forwards_only_to_the_gateway_and_the_firewall_is_what_stops_it(room):
    """Control for the test above: open port 53 on the project gateway for a moment and the name resolves to the
    fake DNS's answer (a local address): the embedded resolver forwards there and nowhere else."""
    a = room["a"]
    rule = [
        "-i",
        a.bridge,
        "-p",
        "udp",
        "-d",
        a.gateway,
        "--dport",
        "53",
        "-j",
        "ACCEPT",
        "-m",
        "comment",
        "--comment",
        f"gpuhub-project={a.key}",
    ]
    sh("iptables", "-w", "10", "-I", pn.CHAIN, "1", *rule)
    try:
        got = probe(room["a1"], [("dns", "example.com", 0)])
    finally:
        sh("iptables", "-w", "10", "-D", pn.CHAIN, *rule)
    print("a1 with port 53 opened:", got, "fake DNS saw", room["dns"].seen)
    assert got == {"dns example.com:0": f"ok ['{OUTSIDE_IP}']"}
    assert set(room["dns"].seen) == {room["ips"][room["a1"].name]}
    room["dns"].seen.clear()


def test_the_host_reaches_the_project_server(room):
    """The proxy's path: the host opens a connection into the project container (replies come back)."""
    for c in (room["a1"], room["b1"]):
        r = sh(
            "python3",
            "-c",
            f"import urllib.request; print(urllib.request.urlopen("
            f"'http://{room['ips'][c.name]}:8888/', timeout=5).status)",
        )
        assert r.stdout.strip() == "200"


def test_rules_are_ours_idempotent_and_rewritten_closed(room):
    fw, b, hub = room["fw"], room["b"], room["hub"]
    mine = fw.rules(b.key)
    assert len(mine) == 7 and all(f"gpuhub-project={b.key}" in r for r in mine)
    fw.allow_project(b, hub)  # a hub restart: nothing changes, nothing doubles
    assert fw.rules(b.key) == mine
    moved = pn.HubPath(ip=hub.ip, port=hub.port, gateway_port=hub.port + 1)
    fw.allow_project(b, moved)  # a changed door: rewritten behind a guard that is gone afterwards
    now = fw.rules(b.key)
    assert len(now) == 7 and now != mine and f"--dport {hub.port + 1}" in now[0]
    listing = sh("iptables", "-S").stdout + sh("iptables", "-t", "nat", "-S").stdout
    assert "gpuhub-guard" not in listing
    assert probe(room["b1"], [("tcp", b.gateway, hub.port + 1)]) == {f"tcp {b.gateway}:{hub.port + 1}": "ok hub-api"}
    fw.allow_project(b, hub)
    assert fw.rules(b.key) == mine
    assert sh("iptables", "-S", "INPUT").stdout.splitlines()[1] == f"-A INPUT -j {pn.CHAIN}"  # first in INPUT
    assert sh("iptables", "-S", "DOCKER-USER").stdout.splitlines()[1] == f"-A DOCKER-USER -j {pn.FWD_CHAIN}"
    assert sh("iptables", "-t", "nat", "-S", "PREROUTING").stdout.splitlines()[1] == f"-A PREROUTING -j {pn.CHAIN}"


def test_one_projects_rules_are_not_anothers():
    """``pt-a`` must not pick up ``pt-ab``'s rules (a key that is a prefix of another)."""
    listing = (
        "-N GPUHUB-PROJECTS\n"
        "-A GPUHUB-PROJECTS -i br-1 -m comment --comment gpuhub-project=pt-ab -j ACCEPT\n"
        "-A GPUHUB-PROJECTS -i br-2 -m comment --comment gpuhub-project=pt-a -j ACCEPT\n"
    )
    fw = pn.Firewall(run=lambda argv, **kw: subprocess.CompletedProcess(argv, 0, listing, ""))
    assert {r.split(": ", 1)[1] for r in fw.rules("pt-a")} == {
        "-A GPUHUB-PROJECTS -i br-2 -m comment --comment gpuhub-project=pt-a -j ACCEPT"
    }


def test_a_rewrite_keeps_the_room_closed_throughout():
    """Order of the iptables calls when a project's rules change: the reject-all guards go in before any old rule
    is deleted and come out only after every new rule is in."""
    calls: list[list[str]] = []
    old = "-A GPUHUB-PROJECTS -i br-x -j ACCEPT -m comment --comment gpuhub-project=k"

    def fake(argv, **kw):
        calls.append(argv[3:])
        listing = f"-N X\n{old}\n" if argv[3:4] == ["-t"] and "-S" in argv and "GPUHUB-PROJECTS" in argv else ""
        rc = 1 if "-C" in argv else 0  # nothing matches: a rewrite is needed
        return subprocess.CompletedProcess(argv, rc, listing, "")

    net = pn.ProjectNetwork("k", "gpuhub-project-k", "br-x", "10.9.0.1", "10.9.0.0/24")
    pn.Firewall(run=fake).allow_project(net, pn.HubPath("10.8.0.1", 8081))
    verbs = [(c[2], c[3]) for c in calls if c[0] == "-t" and c[2] in ("-I", "-A", "-D") and "-j" in c
             and c[3] != "INPUT" and c[3] != "DOCKER-USER" and c[3] != "PREROUTING"]  # fmt: skip
    guard_in = [i for i, (v, _) in enumerate(verbs) if v == "-I"]
    deletes = [i for i, (v, _) in enumerate(verbs) if v == "-D"]
    adds = [i for i, (v, _) in enumerate(verbs) if v == "-A"]
    assert len(guard_in) == 3 and len(adds) == 7
    guard_out = deletes[-3:]
    assert max(guard_in) < min(deletes) and max(adds) < min(guard_out)
    inserted = [" ".join(c) for c in calls if c[2] == "-I" and c[3] in (pn.CHAIN, pn.FWD_CHAIN)]
    assert len(inserted) == 3 and all("REJECT" in c and "gpuhub-guard=k" in c for c in inserted)
