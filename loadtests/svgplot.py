"""Line charts as inline SVG, with nothing to load: a time axis, one line per series
(gaps where a value is missing: a process that was down), and the moments of a run
(a kill, a restart) as labelled vertical lines.  Used by loadtests.report."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

__all__ = ["Chart", "Line", "Mark"]

# Okabe & Ito's palette: told apart by the colour-blind too.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MARK_COLOURS = {"kill": "#D55E00", "stop": "#E69F00", "up": "#009E73", "move": "#999999", "phase": "#555555"}


@dataclass(frozen=True)
class Line:
    name: str
    t: Sequence[float]
    v: Sequence[float | None]
    dashed: bool = False


@dataclass(frozen=True)
class Mark:
    t: float
    label: str
    kind: str  # kill, stop, up, move: a labelled line; anything else: a tick on the time axis
    until: float | None = None  # the end of a band (a process down from t until then)


@dataclass
class Chart:
    title: str
    unit: str
    lines: list[Line] = field(default_factory=list)
    y_min: float | None = 0.0
    y_max: float | None = None
    width: int = 1100
    height: int = 290

    def svg(self, t_end: float, marks: Sequence[Mark] = ()) -> str:
        left, right, top, bottom = 64, 150, 74, 34  # the labels of the marks sit above the plot
        pw, ph = self.width - left - right, self.height - top - bottom
        values = [v for line in self.lines for v in line.v if v is not None and math.isfinite(v)]
        lo = self.y_min if self.y_min is not None else min(values, default=0.0)
        hi = self.y_max if self.y_max is not None else max(values, default=1.0)
        if hi <= lo:
            hi = lo + 1.0
        ticks = _ticks(lo, hi)
        hi = max(hi, ticks[-1])
        span = max(t_end, 1e-9)

        def x(t: float) -> float:
            return left + pw * min(max(t, 0.0), span) / span

        def y(v: float) -> float:
            return top + ph * (1 - (v - lo) / (hi - lo))

        out = [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif" font-size="12">',
            f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(self.title)}</text>',
            f'<text x="{left + pw}" y="18" text-anchor="end" fill="#555">{escape(self.unit)}</text>',
            f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>',
        ]
        for tick in ticks:
            out.append(
                f'<line x1="{left}" x2="{left + pw}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#eee"/>'
            )
            out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{_fmt(tick)}</text>')
        for tick in _ticks(0, span, 10):
            if tick <= span:
                out.append(
                    f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top + ph}" y2="{top + ph + 4}" '
                    'stroke="#888"/>'
                )
                out.append(
                    f'<text x="{x(tick):.1f}" y="{top + ph + 17}" text-anchor="middle">{_fmt(tick)} s</text>'
                )
        rows: list[float] = []  # where each row of labels (above the plot) is free from
        for m in sorted((m for m in marks if m.kind in MARK_COLOURS), key=lambda m: m.t):
            colour = MARK_COLOURS[m.kind]
            # The first row this label fits in (10 px type: about 6 px a character); past
            # the third, labels share the last row rather than cover the plot.
            start = x(m.t) + 3
            row = min(3, next((i for i, free in enumerate(rows) if free <= start), len(rows)))
            rows[row : row + 1] = [start + 6 * len(m.label) + 4]
            baseline = top - 36 + 11 * row
            if m.until is not None:
                out.append(
                    f'<rect x="{x(m.t):.1f}" y="{top}" width="{max(1.0, x(m.until) - x(m.t)):.1f}" '
                    f'height="{ph}" fill="{colour}" fill-opacity="0.15"/>'
                )
            out.append(
                f'<line x1="{x(m.t):.1f}" x2="{x(m.t):.1f}" y1="{baseline - 9}" y2="{top + ph}" '
                f'stroke="{colour}" stroke-dasharray="4 3"/>'
            )
            out.append(
                f'<text x="{start:.1f}" y="{baseline}" fill="{colour}" font-size="10">'
                f"{escape(m.label)}</text>"
            )
        for m in marks:
            if m.kind not in MARK_COLOURS:
                out.append(
                    f'<line x1="{x(m.t):.1f}" x2="{x(m.t):.1f}" y1="{top + ph - 5}" y2="{top + ph}" '
                    f'stroke="#777"><title>{escape(m.label)}</title></line>'
                )
        for i, line in enumerate(self.lines):
            colour = COLOURS[i % len(COLOURS)]
            dash = ' stroke-dasharray="6 3"' if line.dashed else ""
            for segment in _segments(line):
                points = " ".join(f"{x(t):.1f},{y(min(max(v, lo), hi)):.1f}" for t, v in segment)
                if len(segment) == 1:
                    t, v = segment[0]
                    out.append(f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="1.5" fill="{colour}"/>')
                else:
                    out.append(
                        f'<polyline points="{points}" fill="none" stroke="{colour}" '
                        f'stroke-width="1.5"{dash}/>'
                    )
            ly = top + 6 + 16 * i
            out.append(
                f'<line x1="{left + pw + 10}" x2="{left + pw + 30}" y1="{ly}" y2="{ly}" stroke="{colour}" '
                f'stroke-width="2"{dash}/>'
            )
            out.append(f'<text x="{left + pw + 35}" y="{ly + 4}">{escape(line.name)}</text>')
        out.append("</svg>")
        return "\n".join(out)


def _segments(line: Line) -> list[list[tuple[float, float]]]:
    """The runs of points with a value (a missing value breaks the line)."""
    out: list[list[tuple[float, float]]] = [[]]
    for t, v in zip(line.t, line.v, strict=True):
        if v is None or not math.isfinite(v):
            if out[-1]:
                out.append([])
        else:
            out[-1].append((t, v))
    return [s for s in out if s]


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values from ``lo`` covering ``hi``: steps of 1, 2 or 5 times a power of ten."""
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(lo / step) * step
    ticks: list[float] = []
    k = 0
    while not ticks or ticks[-1] < hi:
        ticks.append(round(first + k * step, 10))
        k += 1
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:g}"
