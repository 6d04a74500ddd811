"""Charts drawn with Pillow (no plotting library): every chart synthgen writes is made here."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Line colours of the charts: arms of an evaluation, real / synthetic in histograms.
PALETTE = [(60, 100, 180), (230, 130, 30), (50, 160, 80), (200, 50, 60), (130, 90, 180), (120, 120, 120)]


def bar_chart(counts: dict[str, Sequence[int]], *, series: Sequence[str], title: str,
              highlight: Sequence[str] = (), width: int = 900) -> np.ndarray:
    """RGB uint8 horizontal bar chart: one group of bars per class, one bar per series
    (e.g. before / after expansion). Drawn with Pillow (no plotting library needed)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    names = list(counts)
    row_h = 14 * len(series) + 10
    left, top = 10 + 7 * max((len(n) for n in names), default=5), 40
    height = top + row_h * len(names) + 30
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 10), title, fill="black", font=font)
    vmax = max((max(v) for v in counts.values() if len(v)), default=1) or 1
    colors = [(70, 110, 180), (230, 140, 40), (90, 170, 90)]
    span = width - left - 60
    for r, name in enumerate(names):
        y = top + r * row_h
        draw.text((10, y + 2), name, fill=(200, 30, 30) if name in highlight else "black", font=font)
        for s, v in enumerate(counts[name]):
            w = int(span * v / vmax)
            yy = y + 2 + 14 * s
            draw.rectangle([left, yy, left + max(w, 1), yy + 11], fill=colors[s % len(colors)])
            draw.text((left + w + 4, yy), str(v), fill="black", font=font)
    for s, name in enumerate(series):
        x = left + 120 * s
        draw.rectangle([x, height - 20, x + 10, height - 10], fill=colors[s % len(colors)])
        draw.text((x + 14, height - 21), name, fill="black", font=font)
    return np.asarray(img)


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (about ``n`` of them)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = np.floor(lo / step) * step
    return [round(float(v), 10) for v in np.arange(start, hi + step * 0.999, step)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.1e}"


class _Axes:
    """A plot area on a Pillow image: data -> pixel mapping, frame, grid, ticks, labels, legend."""

    def __init__(self, size, xr, yr, *, title: str, xlabel: str, ylabel: str, right: int = 20, yticks=None):
        from PIL import Image, ImageDraw

        self.img = Image.new("RGB", size, "white")
        self.draw = ImageDraw.Draw(self.img)
        self.font, self.small = _font(15), _font(12)
        self.box = (70, 40, size[0] - right, size[1] - 55)  # left, top, right, bottom
        self.xt, self.yt = _nice_ticks(*xr), yticks or _nice_ticks(*yr)
        self.xr, self.yr = (self.xt[0], self.xt[-1]), (self.yt[0], self.yt[-1])
        l, t, r, b = self.box
        d = self.draw
        d.text((l, 10), title, fill="black", font=self.font)
        for v in self.yt:
            y = self.py(v)
            d.line([l, y, r, y], fill=(225, 225, 225))
            d.text((l - 6, y), _fmt(v), fill="black", font=self.small, anchor="rm")
        for v in self.xt:
            x = self.px(v)
            d.line([x, b, x, b + 5], fill="black")
            d.text((x, b + 8), _fmt(v), fill="black", font=self.small, anchor="mt")
        d.rectangle([l, t, r, b], outline="black")
        d.text(((l + r) / 2, b + 30), xlabel, fill="black", font=self.small, anchor="mt")
        d.text((8, t - 18), ylabel, fill="black", font=self.small)

    def px(self, x: float) -> float:
        l, _, r, _ = self.box
        return l + (x - self.xr[0]) / ((self.xr[1] - self.xr[0]) or 1) * (r - l)

    def py(self, y: float) -> float:
        _, t, _, b = self.box
        return b - (y - self.yr[0]) / ((self.yr[1] - self.yr[0]) or 1) * (b - t)

    def legend(self, entries: list[tuple[str, tuple[int, int, int]]], *, x: int, y: int) -> None:
        for k, (text, col) in enumerate(entries):
            yy = y + 20 * k
            self.draw.rectangle([x, yy + 3, x + 14, yy + 13], fill=col)
            self.draw.text((x + 20, yy), text, fill="black", font=self.small)

    def array(self) -> np.ndarray:
        return np.asarray(self.img)


def histogram(groups: dict[str, Sequence[float]], *, title: str, xlabel: str, size=(640, 340)) -> np.ndarray:
    """RGB uint8 histogram of several groups on shared bins, bars side by side within each bin."""
    values = [float(v) for g in groups.values() for v in g]
    lo, hi = min(values), max(values)
    span = max(hi - lo, 10.0, 0.5 * hi)  # a few similar sizes still get a readable axis
    mid = (lo + hi) / 2
    lo, hi = max(0.0, mid - 0.55 * span), mid + 0.55 * span
    edges = np.asarray(_nice_ticks(lo, hi, n=10))
    counts = {k: np.histogram(v, bins=edges)[0] for k, v in groups.items()}
    top = max(1, max(int(c.max()) for c in counts.values()))
    step = max(1, int(np.ceil(top / 5)))
    ax = _Axes(size, (edges[0], edges[-1]), (0, top), title=title, xlabel=xlabel, ylabel="lesions", right=190,
               yticks=list(range(0, top + step, step)))
    n = len(groups)
    for g, (k, c) in enumerate(counts.items()):
        col = PALETTE[g % len(PALETTE)]
        for b, cnt in enumerate(c):
            if cnt:
                x0, x1 = ax.px(edges[b]), ax.px(edges[b + 1])
                w = (x1 - x0 - 2) / n
                ax.draw.rectangle([x0 + 1 + g * w, ax.py(cnt), x0 + 1 + (g + 1) * w - 1, ax.py(0)], fill=col)
    ax.legend([(k, PALETTE[g % len(PALETTE)]) for g, k in enumerate(groups)], x=ax.box[2] + 12, y=ax.box[1])
    return ax.array()


def line_chart(series: dict[str, list[list[tuple[float, float]]]], *, title: str, xlabel: str, ylabel: str,
               size=(720, 380)) -> np.ndarray:
    """RGB uint8 line chart: per key (an arm) thin lines (one per run) and a thick line, their mean at
    the steps every run has."""
    xs = [x for runs in series.values() for pts in runs for x, _ in pts]
    ys = [y for runs in series.values() for pts in runs for _, y in pts]
    hi = max(ys) * 1.05 or 1.0
    if 0 <= min(ys) and max(ys) <= 1:  # a score: keep the axis within [0, 1]
        hi = min(hi, 1.0)
    ax = _Axes(size, (min(0.0, min(xs)), max(xs)), (min(0.0, min(ys)), hi), title=title,
               xlabel=xlabel, ylabel=ylabel, right=170)
    legend = []
    for k, (arm, runs) in enumerate(series.items()):
        col = PALETTE[k % len(PALETTE)]
        pale = tuple(int(c + (255 - c) * 0.55) for c in col)
        for pts in runs:
            if len(pts) > 1:
                ax.draw.line([(ax.px(x), ax.py(y)) for x, y in sorted(pts)], fill=pale, width=1)
        common = sorted(set.intersection(*({x for x, _ in pts} for pts in runs)))
        mean = [(x, float(np.mean([dict(pts)[x] for pts in runs]))) for x in common]
        if len(mean) > 1:
            ax.draw.line([(ax.px(x), ax.py(y)) for x, y in mean], fill=col, width=3, joint="curve")
        for x, y in mean:
            ax.draw.ellipse([ax.px(x) - 3, ax.py(y) - 3, ax.px(x) + 3, ax.py(y) + 3], fill=col)
        legend.append((f"{arm} ({len(runs)} seeds)", col))
    ax.legend(legend, x=ax.box[2] + 12, y=ax.box[1])
    return ax.array()
