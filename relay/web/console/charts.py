"""Server-rendered SVG charts (no JavaScript, readable without colour)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape


def bars(
    points: Sequence[tuple[str, float | None]],
    *,
    title: str,
    unit: str = "",
    width: int = 640,
    height: int = 180,
) -> str:
    """A bar chart of (label, value) pairs as an inline SVG with a title and a description."""
    values = [v for _, v in points if v is not None]
    top = max(values) if values else 0.0
    top = top or 1.0
    left, bottom, pad = 44, 24, 6
    inner_w, inner_h = width - left - pad, height - bottom - pad
    n = max(1, len(points))
    step = inner_w / n
    bar_w = max(1.0, step * 0.75)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" preserveAspectRatio="none">',
        f"<title>{escape(title)}</title>",
        f'<line x1="{left}" y1="{pad + inner_h}" x2="{width - pad}" y2="{pad + inner_h}" class="axis"/>',
        f'<text x="{left - 4}" y="{pad + 10}" text-anchor="end" class="tick">{top:,.0f}{escape(unit)}</text>',
        f'<text x="{left - 4}" y="{pad + inner_h}" text-anchor="end" class="tick">0</text>',
    ]
    label_every = max(1, n // 8)
    for index, (label, value) in enumerate(points):
        x = left + index * step + (step - bar_w) / 2
        if value is not None:
            h = inner_h * value / top
            parts.append(
                f'<rect x="{x:.1f}" y="{pad + inner_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" class="bar"><title>{escape(label)}: {value:,.0f}{escape(unit)}</title></rect>'
            )
        if index % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                f'class="tick">{escape(label[5:] if len(label) == 10 else label)}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)
