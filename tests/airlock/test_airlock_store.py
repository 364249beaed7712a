"""The airlock store on SQLite and PostgreSQL with real Docker volumes: the service copies the file itself,
checks it, keeps the two-person rule, releases once into the requester's home, audits every step."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import text

from quota import airlock as al
from quota.audit import AuditLog
from tests.airlock.conftest import make_site, read_file

SMALL_CELLS = b"region,patients\nseoul,120\nbusan,3\nulsan,45\n"
pytestmark = pytest.mark.docker


def states(view):
    return [h["state"] for h in view.history]


def test_export_end_to_end_two_stewards_release_once(store, make_volume, docker_client, engine):
    project_home = make_volume({"results/table.csv": SMALL_CELLS})
    home = make_volume()
    v = store.submit(
        "cohort",
        "alice",
        "export",
        "results/table.csv",
        "table 2 of the paper",
        source_volume=project_home,
        source="10.0.0.7",
    )
    assert (v.state, v.sha256, v.size) == (al.CHECKS_DONE, hashlib.sha256(SMALL_CELLS).hexdigest(), len(SMALL_CELLS))
    assert [(c["rule"], c["location"]) for c in v.checks if not c["passed"]] == [
        ("cell-count", "line 3, column 'patients'")
    ]
    with pytest.raises(al.AirlockRefusal) as e:
        store.review(v.id, "steve", "approve", "")
    assert e.value.rule == "airlock-reason-required"
    v = store.review(v.id, "steve", "approve", "3 is a count of hospitals, not people")
    assert v.state == al.IN_REVIEW
    with pytest.raises(al.AirlockRefusal) as e:
        store.release(v.id, target_volume=home, uid=1000)
    assert e.value.rule == "airlock-not-releasable"
    v = store.review(v.id, "sara", "approve", "agreed: hospitals")
    assert v.state == al.APPROVED and [r["reviewer"] for r in v.reviews] == ["steve", "sara"]
    v = store.release(v.id, target_volume=home, uid=1000)
    assert v.state == al.RELEASED and v.released_to == f"{home}:exports/cohort/table.csv"
    body, uid = read_file(docker_client, home, "exports/cohort/table.csv")
    assert (hashlib.sha256(body).hexdigest(), uid) == (v.sha256, 1000)
    with pytest.raises(al.AirlockRefusal) as e:
        store.release(v.id, target_volume=home, uid=1000)
    assert e.value.rule == "airlock-not-releasable" and "released once already" in e.value.message
    assert states(v) == ["submitted", "checks_done", "in_review", "approved", "released"]
    audit = AuditLog(engine)
    actions = [r.action for r in audit.rows() if r.project == "cohort"]
    assert actions == ["airlock.export." + s for s in states(v)]
    assert [h["audit_id"] for h in v.history] == [r.id for r in audit.rows()]
    assert audit.verify().ok


def test_the_requester_cannot_review_and_outsiders_see_nothing(store, make_volume):
    vol = make_volume({"out.txt": b"summary\n"})
    v = store.submit("cohort", "sam", "export", "out.txt", "summary", source_volume=vol)
    for user, rule, status in [
        ("sam", "airlock-own-request", 403),
        ("alice", "airlock-not-found", 404),
        ("olga", "airlock-not-found", 404),
    ]:
        with pytest.raises(al.AirlockRefusal) as e:
            store.review(v.id, user, "approve", "ok")
        assert (e.value.rule, e.value.status) == (rule, status), user
    with pytest.raises(al.AirlockRefusal):
        store.get(v.id, "olga")  # a steward of another project
    assert store.list("olga") == [] and store.list("bob") == []
    assert [x.id for x in store.list("steve", project="cohort", state=al.CHECKS_DONE)] == [v.id]
    assert [x.id for x in store.list("sam")] == [v.id]


def test_the_service_reads_the_volume_not_the_client(store, make_volume):
    real = b"hospital,n\nA,40\nB,50\n"
    vol = make_volume({"t.csv": real})
    claimed = hashlib.sha256(b"something else").hexdigest()
    v = store.submit("cohort", "alice", "export", "t.csv", "x", source_volume=vol, client_sha256=claimed)
    assert v.sha256 == hashlib.sha256(real).hexdigest() and v.client_sha256 == claimed
    (c,) = [c for c in v.checks if c["rule"] == "client-hash"]
    assert not c["passed"] and "what is reviewed and released is the file's real content" in c["detail"]


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("../etc/passwd", "airlock-path"),
        ("/etc/passwd", "airlock-path"),
        ("link.csv", "airlock-not-a-file"),
        ("via/secret.txt", "airlock-not-a-file"),
        ("results", "airlock-not-a-file"),
        ("missing.csv", "airlock-not-a-file"),
    ],
)
def test_paths_outside_the_home_links_and_folders_are_refused(store, make_volume, path, rule, tmp_path):
    vol = make_volume({"results/t.csv": b"a\n", "link.csv": ("link", "/etc/passwd"), "via": ("link", "/etc")})
    with pytest.raises(al.AirlockRefusal) as e:
        store.submit("cohort", "alice", "export", path, "x", source_volume=vol)
    assert e.value.rule == rule
    assert list((tmp_path / "quarantine").glob("*")) == []  # nothing left in quarantine


def test_identifier_values_and_size(store, make_volume, tmp_path, engine, clock, docker_client):
    vol = make_volume({"ids.csv": b"pid,score\nP-000102,3.5\n"})
    v = store.submit("cohort", "alice", "export", "ids.csv", "x", source_volume=vol)
    assert ("identifier-value", "line 2, column 'pid'") in [
        (c["rule"], c["location"]) for c in v.checks if not c["passed"]
    ]


def test_members_only_and_reject_then_purge(store, make_volume, clock, tmp_path):
    vol = make_volume({"a.txt": b"hello\n"})
    with pytest.raises(al.AirlockRefusal) as e:
        store.submit("cohort", "mallory", "export", "a.txt", "x", source_volume=vol)
    assert e.value.rule == "airlock-not-member"
    v = store.submit("cohort", "bob", "export", "a.txt", "x", source_volume=vol)
    v = store.review(v.id, "sam", "reject", "not needed outside")
    assert v.state == al.REJECTED
    with pytest.raises(al.AirlockRefusal):
        store.review(v.id, "steve", "approve", "")
    assert store.quarantined_path(v.id, "steve").exists()
    for user in ("bob", "olga"):  # the requester never previews outside the room; other projects see nothing
        with pytest.raises(al.AirlockRefusal):
            store.quarantined_path(v.id, user)
    assert oct((tmp_path / "quarantine").stat().st_mode & 0o777) == "0o700"
    assert store.purge() == []  # retention not over yet
    clock.advance(days=31)
    assert store.purge() == [v.id]
    assert list((tmp_path / "quarantine").glob("*")) == []
    with pytest.raises(al.AirlockRefusal):
        store.quarantined_path(v.id, "steve")


def test_import_needs_one_steward_and_lands_in_the_project_home(store, make_volume, docker_client):
    home, project_home = make_volume({"code/train.py": b"print('hi')\n"}), make_volume()
    v = store.submit("cohort", "alice", "import", "code/train.py", "training script", source_volume=home)
    assert v.needed == 1 and [c["rule"] for c in v.checks if not c["passed"]] == []
    v = store.review(v.id, "steve", "approve")
    assert v.state == al.APPROVED
    v = store.release(v.id, target_volume=project_home, uid=1000)
    assert read_file(docker_client, project_home, "imports/train.py") == (b"print('hi')\n", 1000)


def test_cancel_and_revoke(store, make_volume):
    vol = make_volume({"a.txt": b"hello\n"})
    v = store.submit("cohort", "alice", "export", "a.txt", "x", source_volume=vol)
    assert store.cancel(v.id, "alice").state == al.CANCELLED
    v = store.submit("cohort", "alice", "export", "a.txt", "x", source_volume=vol)
    store.review(v.id, "steve", "approve")
    v = store.review(v.id, "sara", "approve")
    v = store.revoke(v.id, "sam", "wrong version")
    assert v.state == al.REVOKED and states(v)[-1] == "revoked"


def test_a_duplicate_review_row_is_refused_by_the_database(store, make_volume, engine):
    vol = make_volume({"a.txt": b"hello\n"})
    v = store.submit("cohort", "alice", "export", "a.txt", "x", source_volume=vol)
    store.review(v.id, "steve", "approve")
    with pytest.raises(Exception, match="(?i)unique|duplicate"), engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO gpuhub_airlock_review (request_id, reviewer, decision, reason, at) "
                "VALUES (:r, 'steve', 'approve', '', '2026-12-02 01:00:00.000000')"
            ),
            {"r": v.id},
        )


def test_too_large_to_copy_is_refused(engine, tmp_path, clock, docker_client, make_volume):
    from quota.airlock_store import AirlockStore
    from tests.airlock.conftest import TEST_LABEL

    site = make_site(tmp_path, airlock={"max_copy_mb": 0.001, "max_file_mb": 0.0005})
    s = AirlockStore(engine, site, clock, docker_client, labels={TEST_LABEL: "1"})
    vol = make_volume({"big.txt": b"x" * 5000})
    with pytest.raises(al.AirlockRefusal) as e:
        s.submit("cohort", "alice", "export", "big.txt", "x", source_volume=vol)
    assert (e.value.rule, e.value.status) == ("airlock-file-too-large", 413)


def test_two_stewards_at_once_are_serialised(store, make_volume):
    import threading

    vol = make_volume({"a.txt": b"hello\n"})
    v = store.submit("cohort", "alice", "export", "a.txt", "x", source_volume=vol)
    errors, barrier = [], threading.Barrier(3)

    def approve(user):
        barrier.wait()
        try:
            store.review(v.id, user, "approve")
        except al.AirlockRefusal as e:
            errors.append(e.rule)

    threads = [threading.Thread(target=approve, args=(u,)) for u in ("steve", "sara", "steve")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    v = store.get(v.id)
    # steve's second call comes either after his first (already reviewed) or after sara's (already approved)
    assert errors in (["airlock-already-reviewed"], ["airlock-not-reviewable"]) and v.state == al.APPROVED
    assert sorted(r["reviewer"] for r in v.reviews) == ["sara", "steve"]
    assert states(v) == ["submitted", "checks_done", "in_review", "approved"]


def test_a_checker_crash_is_a_finding_not_a_stuck_request(store, make_volume, monkeypatch):
    from quota import disclosure

    def boom(*a, **kw):
        raise ValueError("bad table")

    monkeypatch.setattr(disclosure, "check_file", boom)
    v = store.submit("cohort", "alice", "export", "a.txt", "x", source_volume=make_volume({"a.txt": b"hi\n"}))
    assert v.state == al.CHECKS_DONE
    assert [(c["rule"], c["passed"]) for c in v.checks] == [("checks-error", False)]
    assert "ValueError: bad table" in v.checks[0]["detail"]


def test_a_one_time_download_is_released_once_and_never_after_a_revoke(store, make_volume, engine):
    project_home = make_volume({"a.txt": b"AUC 0.81\n", "b.txt": b"AUC 0.79\n"})
    a = store.submit("cohort", "alice", "export", "a.txt", "fig 1", source_volume=project_home)
    for steward in ("steve", "sara"):
        store.review(a.id, steward, "approve")
    with pytest.raises(al.AirlockRefusal) as e:
        store.download(a.id, "steve")
    assert e.value.rule == "airlock-not-requester"
    view, body = store.download(a.id, "alice", source="10.0.0.7")
    assert body == b"AUC 0.81\n" and (view.state, view.released_to) == (al.RELEASED, "download")
    assert view.history[-1]["actor"] == "alice"
    with pytest.raises(al.AirlockRefusal) as e:
        store.download(a.id, "alice")
    assert e.value.rule == "airlock-not-releasable" and "released once already" in e.value.message
    b = store.submit("cohort", "alice", "export", "b.txt", "fig 2", source_volume=project_home)
    for steward in ("steve", "sara"):
        store.review(b.id, steward, "approve")
    store.revoke(b.id, "steve", "identifies the site")
    with pytest.raises(al.AirlockRefusal) as e:
        store.download(b.id, "alice")
    assert e.value.rule == "airlock-not-releasable" and "revoked" in e.value.message
    released = [r for r in AuditLog(engine).rows() if r.action == "airlock.export.released"]
    assert [(r.account, r.source) for r in released] == [("alice", "10.0.0.7")]
