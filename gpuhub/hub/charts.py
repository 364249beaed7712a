"""Server-side SVG for the hub's usage pages: readable without JavaScript, no library, no CDN.

Each chart is a ``role="img"`` SVG with a ``<title>`` (its accessible name) and a ``<title>`` per bar, and the
page puts the same numbers in a table next to it, so nothing is only in the picture.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

BAR, GAP, HEIGHT, LEFT = 14, 3, 140, 36


def daily_bars(
    chart_id: str, title: str, days: list[dict], mine: list[float], pace: float, fmt, month_days: int = 0
) -> Markup:
    """One bar per day in ``days`` ({date, weighted_gpu_hours}: the organization's use, the month up to today),
    the user's own share drawn over it (``mine``, same order) and a dashed line at ``pace`` GPU-hours per day
    (the monthly budget spread over the month), on an axis of the whole month (``month_days``). ``fmt``
    formats a number for the reader's locale."""
    hours = [float(d["weighted_gpu_hours"]) for d in days]
    top = max([*hours, pace, 1e-9])
    width = LEFT + (BAR + GAP) * max(len(days), month_days, 1)

    def y(v: float) -> float:
        return HEIGHT - HEIGHT * v / top

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{escape(chart_id)}" class="gpuhub-chart" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title" viewBox="0 0 {width} {HEIGHT + 18}" '
        f'width="100%" style="max-width:{width * 1.5:.0f}px" preserveAspectRatio="xMinYMin meet">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<text x="0" y="10" font-size="9" fill="#333">{escape(fmt(top))}</text>',
        f'<line x1="{LEFT - 2}" x2="{LEFT - 2}" y1="0" y2="{HEIGHT}" stroke="#666"/>',
    ]
    for i, (d, v) in enumerate(zip(days, hours, strict=True)):
        x = LEFT + i * (BAR + GAP)
        own = mine[i] if i < len(mine) else 0.0
        label = f"{d['date']}: {fmt(v)} h ({fmt(own)} h)"
        parts.append(
            f'<rect class="gpuhub-bar" data-date="{escape(d["date"])}" data-hours="{v:.6f}" x="{x}" '
            f'y="{y(v):.2f}" width="{BAR}" height="{HEIGHT - y(v):.2f}" fill="#4a78a8"><title>{escape(label)}</title>'
            "</rect>"
        )
        if own > 0:
            parts.append(
                f'<rect class="gpuhub-bar-mine" data-hours="{own:.6f}" x="{x + 3}" y="{y(own):.2f}" '
                f'width="{BAR - 6}" height="{HEIGHT - y(own):.2f}" fill="#e08a1e"/>'
            )
    for day in sorted({1, 10, 20, max(month_days, len(days))}):
        parts.append(
            f'<text x="{LEFT + (day - 1) * (BAR + GAP)}" y="{HEIGHT + 14}" font-size="9" fill="#333">{day}</text>'
        )
    parts.append(f'<line x1="{LEFT - 2}" x2="{width}" y1="{HEIGHT}" y2="{HEIGHT}" stroke="#666"/>')
    if pace > 0:
        parts.append(
            f'<line class="gpuhub-pace" x1="{LEFT - 2}" x2="{width}" y1="{y(pace):.2f}" y2="{y(pace):.2f}" '
            'stroke="#b03a2e" stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def meter(fraction: float, label: str) -> Markup:
    """A horizontal bar for a fraction of a budget (SVG; red from 95 %, amber from 80 %)."""
    f = max(0.0, min(1.0, fraction))
    color = "#b03a2e" if fraction >= 0.95 else ("#b7791f" if fraction >= 0.8 else "#2f7d4a")
    return Markup(
        '<svg xmlns="http://www.w3.org/2000/svg" class="gpuhub-meter" role="img" viewBox="0 0 200 14" width="200" '
        f'height="14"><title>{escape(label)}</title><rect width="200" height="14" fill="#e9ecef"/>'
        f'<rect width="{200 * f:.1f}" height="14" fill="{color}"/></svg>'
    )
