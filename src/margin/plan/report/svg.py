"""Tiny inline-SVG charts for the offline report: lines with a band, bars, a waterfall.

No JavaScript, no fonts to fetch, no CDN: the report must open from a USB stick on a plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Callable, Sequence

import numpy as np

PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"]
W, H = 860, 280
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 16, 58


@dataclass
class Line:
    name: str
    x: Sequence[float]
    y: Sequence[float]
    color: str | None = None
    dash: bool = False
    fill: bool = False           # filled area to the axis (e.g. demand)
    width: float = 1.4


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def _fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:.4g}"


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = 1500) -> tuple[np.ndarray, np.ndarray]:
    """Keep each bucket's maximum, so peaks survive (NaN gaps survive too)."""
    n = len(x)
    if n <= max_points:
        return x, y
    k = math.ceil(n / max_points)
    m = n // k * k
    yb = y[:m].reshape(-1, k)
    with np.errstate(all="ignore"):
        allnan = np.isnan(yb).all(axis=1)
        yy = np.where(allnan, np.nan, np.nanmax(np.where(np.isnan(yb), -np.inf, yb), axis=1))
    return x[:m:k], yy


def _path(px: np.ndarray, py: np.ndarray) -> str:
    parts, pen = [], False
    for a, b in zip(px, py):
        if not (math.isfinite(a) and math.isfinite(b)):
            pen = False
            continue
        parts.append(f"{'L' if pen else 'M'}{a:.1f},{b:.1f}")
        pen = True
    return "".join(parts)


def line_chart(lines: list[Line], title: str, y_label: str,
               x_format: Callable[[float], str] = _fmt,
               band: tuple[Sequence[float], Sequence[float], Sequence[float]] | None = None,
               y_min: float | None = 0.0) -> str:
    xs = np.concatenate([np.asarray(ln.x, float) for ln in lines] or [np.array([0.0])])
    ys = np.concatenate([np.asarray(ln.y, float) for ln in lines] or [np.array([0.0])])
    if band is not None:
        xs = np.concatenate([xs, np.asarray(band[0], float)])
        ys = np.concatenate([ys, np.asarray(band[2], float)])
    fin = ys[np.isfinite(ys)]
    x0, x1 = float(np.nanmin(xs)), float(np.nanmax(xs))
    y0 = y_min if y_min is not None else float(fin.min()) if len(fin) else 0.0
    y1 = float(fin.max()) * 1.05 if len(fin) else 1.0
    if y1 <= y0:
        y1 = y0 + 1
    if x1 <= x0:
        x1 = x0 + 1
    sx = lambda v: PAD_L + (np.asarray(v, float) - x0) / (x1 - x0) * (W - PAD_L - PAD_R)  # noqa: E731
    sy = lambda v: H - PAD_B - (np.asarray(v, float) - y0) / (y1 - y0) * (H - PAD_T - PAD_B)  # noqa: E731
    out = [_open(title)]
    for t in nice_ticks(y0, y1):
        y = float(sy(t))
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#e5e7eb"/><text x="{PAD_L - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{_fmt(t)}</text>')
    for i in range(6):
        xv = x0 + (x1 - x0) * i / 5
        out.append(f'<text x="{float(sx(xv)):.1f}" y="{H - PAD_B + 16}" text-anchor="middle">'
                   f'{escape(x_format(xv))}</text>')
    out.append(f'<text x="14" y="{(H - PAD_B) / 2}" transform="rotate(-90 14 {(H - PAD_B) / 2})"'
               f' text-anchor="middle">{escape(y_label)}</text>')
    if band is not None:
        bx, lo, hi = (np.asarray(v, float) for v in band)
        bx, lo = downsample(bx, lo)
        _, hi = downsample(np.asarray(band[0], float), hi)
        pts = [f"{a:.1f},{b:.1f}" for a, b in zip(sx(bx), sy(hi))] + \
              [f"{a:.1f},{b:.1f}" for a, b in zip(sx(bx[::-1]), sy(lo[::-1]))]
        out.append(f'<polygon points="{" ".join(pts)}" fill="#93c5fd" fill-opacity="0.45" '
                   'stroke="none"><title>80 % interval</title></polygon>')
    for i, ln in enumerate(lines):
        color = ln.color or PALETTE[i % len(PALETTE)]
        x, y = downsample(np.asarray(ln.x, float), np.asarray(ln.y, float))
        px, py = sx(x), sy(y)
        if ln.fill:
            ok = np.isfinite(py)
            pts = [f"{px[ok][0]:.1f},{H - PAD_B}"] + [f"{a:.1f},{b:.1f}" for a, b in
                                                      zip(px[ok], py[ok])] + \
                [f"{px[ok][-1]:.1f},{H - PAD_B}"] if ok.any() else []
            out.append(f'<polygon points="{" ".join(pts)}" fill="{color}" fill-opacity="0.18" '
                       f'stroke="none"><title>{escape(ln.name)}</title></polygon>')
            continue
        dash = ' stroke-dasharray="5 3"' if ln.dash else ""
        out.append(f'<path d="{_path(px, py)}" fill="none" stroke="{color}" '
                   f'stroke-width="{ln.width:g}"{dash}><title>{escape(ln.name)}</title></path>')
    out.append(_legend([(ln.name, ln.color or PALETTE[i % len(PALETTE)], ln.fill)
                        for i, ln in enumerate(lines)] +
                       ([("80 % interval", "#93c5fd", True)] if band is not None else [])))
    out.append("</svg>")
    return "".join(out)


def _open(title: str, h: int = H) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {h}" role="img" '
            f'font-family="system-ui,sans-serif" font-size="11" fill="#374151">'
            f'<title>{escape(title)}</title>')


def _legend(items: list[tuple[str, str, bool]]) -> str:
    """Legend under the x axis, wrapping to a second row when it runs out of width."""
    out, x, y = [], float(PAD_L), H - 20
    for name, color, filled in items:
        width = 24 + 6.2 * len(name)
        if x + width > W - PAD_R and x > PAD_L:
            x, y = float(PAD_L), y + 14
        out.append(f'<rect x="{x:.0f}" y="{y - 8}" width="12" height="{8 if filled else 3}" '
                   f'fill="{color}"/><text x="{x + 16:.0f}" y="{y}">{escape(name)}</text>')
        x += width
    return "".join(out)


def bar_chart(labels: list[str], values: list[float], title: str, value_format=_fmt,
              colors: list[str] | None = None) -> str:
    n = max(1, len(labels))
    row = 24
    h = PAD_T + n * row + 8
    vmax = max([v for v in values if math.isfinite(v)] + [1e-12])
    out = [_open(title, h)]
    left = 230
    for i, (lab, v) in enumerate(zip(labels, values)):
        y = PAD_T + i * row
        w = max(0.0, v) / vmax * (W - left - 120)
        c = (colors or PALETTE)[i % len(colors or PALETTE)]
        out.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{escape(lab[:38])}'
                   f'</text><rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row - 8}" '
                   f'fill="{c}"/><text x="{left + w + 6:.1f}" y="{y + 15}">'
                   f'{escape(value_format(v))}</text>')
    out.append("</svg>")
    return "".join(out)


def waterfall(start_label: str, start: float, steps: list[tuple[str, float]], end_label: str,
              title: str, value_format=_fmt) -> str:
    """Bars falling from the starting bill by each saving, to the bill after all of them."""
    labels = [start_label] + [s[0] for s in steps] + [end_label]
    n = len(labels)
    h = H
    out = [_open(title, h)]
    top = max(start, 1e-12)
    sy = lambda v: H - PAD_B - v / top * (H - PAD_T - PAD_B)  # noqa: E731
    bw = (W - PAD_L - PAD_R) / n
    level = start
    for i, lab in enumerate(labels):
        x = PAD_L + i * bw + 4
        if i == 0 or i == n - 1:
            v = start if i == 0 else level
            y0, y1, color, txt = sy(v), sy(0), "#4b5563", value_format(v)
        else:
            saving = steps[i - 1][1]
            y0, y1, color, txt = sy(level), sy(level - saving), "#16a34a", "−" + value_format(saving)
            level -= saving
        out.append(f'<rect x="{x:.1f}" y="{min(y0, y1):.1f}" width="{bw - 8:.1f}" '
                   f'height="{max(abs(y1 - y0), 0.5):.1f}" fill="{color}"/>'
                   f'<text x="{x + (bw - 8) / 2:.1f}" y="{min(y0, y1) - 4:.1f}" '
                   f'text-anchor="middle">{escape(txt)}</text>'
                   f'<text x="{x + (bw - 8) / 2:.1f}" y="{H - PAD_B + 16}" text-anchor="middle">'
                   f'{escape(lab[:26])}</text>')
    out.append("</svg>")
    return "".join(out)
