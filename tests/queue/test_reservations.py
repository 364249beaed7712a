"""Class reservations (table tests): weekly windows in Asia/Seoul, one-off dates, devices, notices, preference;
and the config keys' validation."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime

import pytest

from gpuhub.core.site import SiteConfigError
from quota import reservations as rsv
from quota.queue_order import Held
from tests.queue.kit import make_site, site_data

SEOUL = zoneinfo.ZoneInfo("Asia/Seoul")


def ts(*a, tz=SEOUL) -> float:
    return datetime(*a, tzinfo=tz).timestamp()


@pytest.mark.parametrize(
    ("when", "active"),
    [
        ((2026, 12, 8, 12, 59), False),  # Tue 12:59 Seoul
        ((2026, 12, 8, 13, 0), True),  # Tue 13:00 = 04:00 UTC
        ((2026, 12, 8, 14, 59), True),
        ((2026, 12, 8, 15, 0), False),  # the end is exclusive
        ((2026, 12, 15, 13, 30), True),  # the next Tuesday
        ((2027, 3, 30, 13, 30), True),  # spring: Seoul has no DST, same wall time
        ((2026, 12, 9, 13, 30), False),  # Wednesday
    ],
)
def test_weekly_window_in_seoul(site, when, active):
    assert bool(rsv.active_at(site.queue.reservations, site.tz, ts(*when))) is active


def test_weekly_window_start_is_0400_utc_and_devices_are_the_last_of_the_model(site):
    (a,) = rsv.assign(site.queue.reservations, site.tz, site.gpus.devices, ts(2026, 12, 8, 0, 0), ts(2026, 12, 9))
    assert datetime.fromtimestamp(a.window.start, UTC) == datetime(2026, 12, 8, 4, 0, tzinfo=UTC)
    assert a.devices == ("GPU-h3", "GPU-h2") and a.short == 0


def test_one_off_dates_and_overlapping_windows_get_disjoint_devices(tmp_path):
    data = site_data()
    data["courses"]["ml101"]["reservations"] = [
        {"gpus": 2, "model": "H100", "dates": ["2026-12-10 09:00-12:00"]},
        {"gpus": 2, "model": "H100", "dates": ["2026-12-10 11:00-13:00", "2026-12-24 09:00-10:00"]},
    ]
    from gpuhub.core.site import parse_site

    site = parse_site(data, tmp_path / "site.yaml")
    res, inv = site.queue.reservations, site.gpus.devices
    got = rsv.assign(res, site.tz, inv, ts(2026, 12, 10), ts(2026, 12, 11))
    assert [a.devices for a in got] == [("GPU-h3", "GPU-h2"), ("GPU-h1", "GPU-h0")]
    assert rsv.reserved_at(res, site.tz, inv, ts(2026, 12, 10, 12, 30)) == {"GPU-h1": "ml101", "GPU-h0": "ml101"}
    assert rsv.active_at(res, site.tz, ts(2026, 12, 24, 9, 30)) and not rsv.active_at(res, site.tz, ts(2026, 12, 25, 9))


def test_notices_warn_before_and_stop_at_the_start_but_spare_the_course(site):
    holders = [
        type("H", (), dict(device_uuid="GPU-h3", server_key="bob/", user="bob", org="gist-ai"))(),
        type("H", (), dict(device_uuid="GPU-h2", server_key="erin/", user="erin", org="academy"))(),
    ]
    res, inv = site.queue.reservations, site.gpus.devices
    assert rsv.notices(res, site.tz, inv, holders, ts(2026, 12, 8, 12, 40), 900) == []
    (warn,) = rsv.notices(res, site.tz, inv, holders, ts(2026, 12, 8, 12, 50), 900)
    assert (warn.server_key, warn.action) == ("bob/", "warn")
    assert "reserved for course 'ml101'" in warn.message and "Tue 2026-12-08 13:00 KST" in warn.message
    (stop,) = rsv.notices(res, site.tz, inv, holders, ts(2026, 12, 8, 13, 0), 900)
    assert stop.action == "stop"


def test_others_prefer_devices_no_window_needs_soon(site):
    prefer = rsv.preference(site.queue.reservations, site.tz, site.gpus.devices, ts(2026, 12, 8, 10, 0))
    h100 = [d for d in site.gpus.devices if d.model == "H100"]
    other = Held("x", "gist-ai", "bob")
    assert [d.uuid for d in prefer(other, h100)] == ["GPU-h0", "GPU-h1", "GPU-h2", "GPU-h3"]
    student = type("R", (), {"courses": ("ml101",)})()
    during = rsv.preference(site.queue.reservations, site.tz, site.gpus.devices, ts(2026, 12, 8, 13, 30))
    assert [d.uuid for d in during(student, h100)][:2] == ["GPU-h2", "GPU-h3"]


def test_queue_config_defaults_and_shares(tmp_path):
    data = site_data(quota={})
    del data["organizations"]["cnuh"]["share"]
    q = make_site(tmp_path, quota={}, organizations=data["organizations"]).queue
    assert (q.max_wait_minutes, q.half_life_hours, q.notice_minutes) == (120.0, 168.0, 15.0)
    assert q.shares == {"gist-ai": 2 / 9, "cnuh": 6 / 9, "academy": 1 / 9}  # cnuh weighs its gpu_limit (6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weekly": "Tue 15:00-13:00"}, "courses.ml101.reservations[0].weekly: 'Tue 15:00-13:00' is not allowed"),
        ({"weekly": "Tus 13:00-15:00"}, 'allowed: a weekday and a span like "Tue 13:00-15:00"'),
        ({"model": "V100"}, "courses.ml101.reservations[0].model: 'V100' is not declared under gpus.models"),
        ({"gpus": 7}, "is more than organizations.academy.gpu_limit (6)"),
        ({"gpus": 5}, "is more than the 4 H100 device(s) listed under gpus.devices"),
        ({"dates": ["2026-02-30 09:00-10:00"]}, "give exactly one of 'weekly'"),
    ],
)
def test_reservation_errors_name_the_key_and_the_fix(tmp_path, change, message):
    data = site_data()
    data["courses"]["ml101"]["reservations"][0].update(change)
    from gpuhub.core.site import parse_site

    with pytest.raises(SiteConfigError, match=None) as e:
        parse_site(data, tmp_path / "site.yaml")
    assert message in str(e.value)


def test_queue_keys_are_checked(tmp_path):
    with pytest.raises(SiteConfigError, match="quota.max_queue_wait_minutes: 0.0 is not allowed; allowed: minutes > 0"):
        make_site(tmp_path, quota={"max_queue_wait_minutes": 0})
    data = site_data()
    data["organizations"]["cnuh"]["share"] = -1
    with pytest.raises(SiteConfigError, match="organizations.cnuh.share: -1.0 is not allowed"):
        make_site(tmp_path, organizations=data["organizations"])
