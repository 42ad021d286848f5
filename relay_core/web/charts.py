"""Inline SVG charts: plain markup with presentation attributes (no script, no inline CSS), so the
page's CSP allows them and they render with the network cut off."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from html import escape

# Colours that stay apart for the common colour-vision deficiencies (Okabe-Ito), then greys.
PALETTE = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000", "#999999")
WIDTH, HEIGHT = 640, 200
LEFT, BOTTOM, TOP = 56, 24, 8


def colour(index: int) -> str:
    return PALETTE[min(index, len(PALETTE) - 1)]


def stacked_bars(
    title: str,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float]],
    value_text: Callable[[float], str],
    label_text: Callable[[str], str] = str,
) -> str:
    """Bars over `labels`, each stacked from `series` (name -> one value per label), with a y scale, a
    <title> per bar segment (shown on hover and read by screen readers) and a legend."""
    count = max(len(labels), 1)
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    peak = max(totals, default=0.0) or 1.0
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    slot = plot_w / count
    bar_w = max(slot * 0.8, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        f'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h * (1 - fraction)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - 4}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ccc" stroke-width="1"/>')
        parts.append(
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">'
            f"{escape(value_text(peak * fraction))}</text>"
        )
    for i, label in enumerate(labels):
        x = LEFT + i * slot + (slot - bar_w) / 2
        base = float(TOP + plot_h)
        for index, (name, values) in enumerate(series.items()):
            value = values[i]
            if value <= 0:
                continue
            height = plot_h * value / peak
            base -= height
            parts.append(
                f'<rect x="{x:.1f}" y="{base:.1f}" width="{bar_w:.1f}" height="{height:.1f}" fill="{colour(index)}">'
                f"<title>{escape(label_text(label))} {escape(name)}: {escape(value_text(value))}</title></rect>"
            )
    step = max(count // 6, 1)
    for i in range(0, len(labels), step):
        x = LEFT + i * slot + slot / 2
        parts.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle" font-size="11" fill="#555">'
            f"{escape(label_text(labels[i]))}</text>"
        )
    parts.append("</svg>")
    return "".join(parts) + legend(list(series))


def legend(names: Sequence[str]) -> str:
    if len(names) < 2:
        return ""
    items = "".join(
        f'<li><svg width="10" height="10" aria-hidden="true"><rect width="10" height="10" fill="{colour(i)}"/></svg> '
        f"{escape(name)}</li>"
        for i, name in enumerate(names)
    )
    return f'<ul class="legend">{items}</ul>'
