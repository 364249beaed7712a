"""The usage pages' SVG: one bar per day given, the user's share inside it, an accessible name, no script."""

from __future__ import annotations

import re

from gpuhub.hub import charts
from gpuhub.hub.i18n import Messages


def test_one_bar_per_day_up_to_today_on_an_axis_of_the_whole_month():
    days = [{"date": f"2026-12-{d:02d}", "weighted_gpu_hours": float(d)} for d in range(1, 6)]
    svg = str(charts.daily_bars("c1", "GIST <AI>", days, [0.5, 0, 1, 0, 0], 3.2, Messages("ko").number, 31))
    assert svg.count('class="gpuhub-bar"') == 5 and svg.count('class="gpuhub-bar-mine"') == 2
    assert 'role="img"' in svg and '<title id="c1-title">GIST &lt;AI&gt;</title>' in svg
    assert 'class="gpuhub-pace"' in svg and "<script" not in svg
    assert re.search(r'viewBox="0 0 (\d+) ', svg).group(1) == str(charts.LEFT + (charts.BAR + charts.GAP) * 31)
    heights = [float(h) for h in re.findall(r'class="gpuhub-bar" [^>]*height="([0-9.]+)"', svg)]
    assert heights == sorted(heights) and heights[-1] == charts.HEIGHT  # the biggest day fills the chart


def test_the_budget_meter_is_capped_and_named():
    svg = str(charts.meter(1.7, "170 % of the budget used"))
    assert 'width="200.0"' in svg and "<title>170 % of the budget used</title>" in svg and "#b03a2e" in svg
