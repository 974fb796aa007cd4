# Copyright (c) transfuse-monai contributors.
# Licensed under the Apache License, Version 2.0.
"""Line charts as PNG with Pillow only (the lent GPU machine has Pillow, not matplotlib): the GPU kit's training
curves."""

from __future__ import annotations

from pathlib import Path

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207))


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def line_chart(series: dict[str, list[tuple[float, float]]], path: str | Path, title: str, xlabel: str,
               ylabel: str, size: tuple[int, int] = (800, 480)) -> Path:
    """Draw ``series`` (label -> (x, y) points) as lines with markers, axes, tick labels and a legend; save a PNG.

    Args:
        series: the curves; empty ones are listed in the legend as "(no data)".
        path: the PNG to write (atomically).
        title: the chart's title; ``xlabel``, ``ylabel``: the axis labels.
        size: (width, height) in pixels.

    Returns:
        ``path``.
    """
    from PIL import Image, ImageDraw, ImageFont

    from transfuse_monai.utils.io import atomic_path

    w, h = size
    left, right, top, bottom = 80, 20, 40, 60
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    points = [p for pts in series.values() for p in pts]
    xs, ys = [p[0] for p in points] or [0.0, 1.0], [p[1] for p in points] or [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (w - left - right), top + (y1 - y) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _ticks(x0, x1):
        px, _ = to_px(t, y0)
        d.line([px, h - bottom, px, h - bottom + 5], fill="black")
        d.text((px - 12, h - bottom + 8), f"{t:.4g}", fill="black", font=font)
    for t in _ticks(y0, y1):
        _, py = to_px(x0, t)
        d.line([left - 5, py, left, py], fill="black")
        d.line([left, py, w - right, py], fill=(230, 230, 230))
        d.text((5, py - 6), f"{t:.4g}", fill="black", font=font)
    d.text((left, 12), title, fill="black", font=font)
    d.text(((w - left) // 2, h - 22), xlabel, fill="black", font=font)
    d.text((5, top - 16), ylabel, fill="black", font=font)
    for i, (label, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        px = [to_px(x, y) for x, y in sorted(pts)]
        if len(px) > 1:
            d.line(px, fill=colour, width=2)
        for x, y in px:
            d.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        ly = top + 8 + 14 * i
        d.line([w - right - 220, ly + 6, w - right - 200, ly + 6], fill=colour, width=3)
        d.text((w - right - 195, ly), label + ("" if pts else " (no data)"), fill="black", font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, "PNG")
    return Path(path)
