"""The spine: real hub, real Docker, spawn through the REST API, run code, stop."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.docker


def test_spawn_runs_code_and_stop_removes_container(hub):
    r = hub.spawn("alice", {"image": "python", "gpus": 0})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("alice")
    (container,) = hub.containers(user="alice")
    labels = container.labels
    assert labels["gpuhub.server"] == ""
    assert labels["gpuhub.org"] == "gist-ai"
    assert labels["gpuhub.image"] == "python"
    assert labels["gpuhub.gpus"] == ""
    assert hub.run_code("alice", "print(6 * 7)").strip() == "42"
    hub.stop_server("alice")
    # The stop itself removed it: DockerSpawner.stop runs `docker stop`, then `docker rm -v` (remove = True).
    # Docker's auto_remove is off: a container that dies on its own is kept, so its FinishedAt can close the
    # ledger's interval, until DockerSpawner removes it at that server's next start (remove = True again).
    hub.wait_containers_gone(user="alice")


def test_gpu_server_gets_its_devices_in_labels_and_env(hub):
    r = hub.spawn("bob", {"image": "python", "gpus": 2, "gpu_model": "H100", "org": "gist-ai"})
    assert r.status_code in (201, 202), r.text
    hub.wait_ready("bob")
    (container,) = hub.containers(user="bob")
    uuids = container.labels["gpuhub.gpus"].split(",")
    assert sorted(uuids) == ["GPU-sim-h100-0", "GPU-sim-h100-1"]
    assert container.labels["gpuhub.org"] == "gist-ai"
    seen = hub.run_code("bob", "import os; print(os.environ['NVIDIA_VISIBLE_DEVICES'])").strip()
    assert sorted(seen.split(",")) == sorted(uuids)
    hub.stop_server("bob")


BAD_OPTIONS = [
    ({"image": "python", "gpus": -1}, "gpus"),
    ({"image": "python", "gpus": 10**9}, "gpus"),
    ({"image": "python", "gpus": "1.5"}, "gpus"),
    ({"image": "python", "gpus": 1.5}, "gpus"),
    ({"image": "python", "gpus": "two"}, "gpus"),
    ({"image": "python", "gpus": True}, "gpus"),
    ({"image": "nope"}, "catalog"),
    ({"image": "python", "org": "no-such-org"}, "does not exist"),
    ({"image": "python", "org": "cnuh-radiology"}, "not a member"),
    ({"image": "python", "env": {"NVIDIA_VISIBLE_DEVICES": "all"}}, "unknown spawn option"),
    ({"image": "python", "gpus": 1, "gpu_model": "V100"}, "not offered"),
    ({"image": "x" * 1_000_000}, "longer than"),
]


@pytest.mark.parametrize("options,words", BAD_OPTIONS, ids=[str(i) for i in range(len(BAD_OPTIONS))])
def test_bad_options_are_refused_with_a_reason_and_no_container(hub, options, words):
    hub.wait_containers_gone(user="alice")
    r = hub.spawn("alice", options)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert words.lower() in r.json()["message"].lower(), r.json()["message"]
    after = hub.containers(all=True, user="alice")
    assert after == [], [(c.name, c.status, c.labels) for c in after]
    model = hub.api("GET", "/users/alice").json()
    assert model["servers"] == {}, model


def test_two_users_stay_apart(hub):
    for user in ("alice", "carol"):
        assert hub.spawn(user, {"image": "python"}).status_code in (201, 202)
    for user in ("alice", "carol"):
        hub.wait_ready(user)
    (a,) = hub.containers(user="alice")
    (c,) = hub.containers(user="carol")
    assert a.name != c.name
    mounts = {
        u: {m["Name"] for m in x.attrs["Mounts"] if m["Type"] == "volume"} for u, x in (("alice", a), ("carol", c))
    }
    assert mounts["alice"] and mounts["carol"] and not mounts["alice"] & mounts["carol"]
    hub.run_code("alice", "open('/home/jovyan/secret.txt', 'w').write('alice only')")
    assert "False" in hub.run_code("carol", "import os; print(os.path.exists('/home/jovyan/secret.txt'))")
    # Routes: carol's token does not open alice's server.
    token = hub.user_token("carol")
    r = requests.get(
        f"{hub.url}/user/alice/api/contents",
        headers={"Authorization": f"token {token}"},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code in (403, 302), r.status_code
    r = requests.get(f"{hub.url}/user/carol/api/contents", headers={"Authorization": f"token {token}"}, timeout=10)
    assert r.status_code == 200
    for user in ("alice", "carol"):
        hub.stop_server(user)


def test_a_named_server_gets_its_own_container_name_and_shares_the_home(hub):
    """Names come from gpuhub.core.naming: "<instance>-<user>" and "<instance>-<user>__<server>"."""
    from gpuhub.core import naming

    for server in ("", "exp1"):
        assert hub.spawn("alice", {"image": "python"}, server=server).status_code in (201, 202)
        hub.wait_ready("alice", server=server)
    names = sorted(c.name for c in hub.containers(user="alice"))
    assert names == [f"{hub.instance}-alice", f"{hub.instance}-alice__exp1"], names
    assert naming.container_name("alice", "exp1", prefix=hub.instance) in names
    hub.run_code("alice", "open('/home/jovyan/both.txt', 'w').write('one home')", server="exp1")
    assert "one home" in hub.run_code("alice", "print(open('/home/jovyan/both.txt').read())")
    for server in ("", "exp1"):
        hub.stop_server("alice", server=server)
