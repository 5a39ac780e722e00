"""Charts rendered on the server as SVG with pygal: they print, they need no JavaScript, and a bar
is a link (a bar of a time chart narrows the time range to its bucket: that is the zoom)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pygal
from pygal.style import Style

_STYLE = Style(background="white", plot_background="white", foreground="#333", foreground_strong="#111",
               foreground_subtle="#ccc", opacity=".9", opacity_hover="1", font_family="system-ui, sans-serif",
               colors=("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#be185d",
                       "#4b5563", "#65a30d", "#ea580c"))
OUTCOME_COLORS = {"permit": "#16a34a", "redact": "#d97706", "deny": "#dc2626", "observe": "#2563eb"}

# Bucket sizes for a time range: the first that gives at most ~60 bars.
BUCKETS_MS = (60_000, 300_000, 900_000, 3_600_000, 6 * 3_600_000, 86_400_000, 7 * 86_400_000)


def bucket_for(span_ms: int) -> int:
    for b in BUCKETS_MS:
        if span_ms / b <= 60:
            return b
    return BUCKETS_MS[-1]


def _label(ms: int, bucket_ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    return t.strftime("%m-%d" if bucket_ms >= 86_400_000 else "%m-%d %H:%M")


def _render(chart) -> str:
    return chart.render(is_unicode=True)


def bars(pairs: list[tuple[str, int]], *, title: str, link: Callable[[str], str] | None = None,
         colors: dict[str, str] | None = None, width: int = 520, height: int = 260) -> str:
    """A horizontal bar per (name, count); each bar links to the search narrowed to it."""
    style = _STYLE
    if colors:
        style = Style(**{**_STYLE.to_dict(), "colors": tuple(colors.get(n, "#4b5563") for n, _c in pairs)})
    chart = pygal.HorizontalBar(js=[], disable_xml_declaration=True, width=width, height=height, style=style,
                                title=title, show_legend=bool(colors), legend_at_bottom=True,
                                print_values=True, print_values_position="top", truncate_label=40)
    if not pairs:
        chart.no_data_text = "no records"
    if colors:  # one series per name, so each keeps its colour
        for name, count in pairs:
            chart.add(name, [{"value": count, "xlink": {"href": link(name), "target": "_self"} if link else None}])
    else:
        chart.x_labels = [n for n, _c in pairs]
        chart.add("records", [{"value": c, "xlink": {"href": link(n), "target": "_self"}} if link else c
                              for n, c in pairs])
    return _render(chart)


def over_time(series: list[tuple[int, str, int]], *, start_ms: int, end_ms: int, bucket_ms: int, title: str,
              zoom: Callable[[int, int], str], colors: dict[str, str] | None = None, top: int = 8,
              width: int = 1000, height: int = 320) -> str:
    """Stacked bars per time bucket and group; clicking a bar zooms into its bucket."""
    first = start_ms // bucket_ms * bucket_ms
    buckets = list(range(first, end_ms + 1, bucket_ms)) or [first]
    totals: dict[str, int] = {}
    for _b, g, n in series:
        totals[g] = totals.get(g, 0) + n
    groups = sorted(totals, key=lambda g: -totals[g])
    shown = groups[:top]
    cells: dict[tuple[int, str], int] = {}
    for b, g, n in series:
        g = g if g in shown else "other"
        cells[(b, g)] = cells.get((b, g), 0) + n
    if len(groups) > top:
        shown.append("other")
    style = _STYLE
    if colors:
        style = Style(**{**_STYLE.to_dict(), "colors": tuple(colors.get(g, "#4b5563") for g in shown)})
    chart = pygal.StackedBar(js=[], disable_xml_declaration=True, width=width, height=height, style=style,
                             title=title, legend_at_bottom=True, x_label_rotation=30, show_minor_x_labels=False,
                             truncate_legend=40)
    chart.x_labels = [_label(b, bucket_ms) for b in buckets]
    step = max(1, len(buckets) // 12)
    chart.x_labels_major = chart.x_labels[::step]
    for g in shown:
        chart.add(g, [{"value": cells.get((b, g), 0) or None,
                       "xlink": {"href": zoom(b, b + bucket_ms), "target": "_self"}} for b in buckets])
    if not shown:
        chart.no_data_text = "no decisions in this range"
    return _render(chart)
