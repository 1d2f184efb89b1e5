"""Line plots as PNG without matplotlib (not a dependency): a tiny rasteriser + zlib PNG writer.

Each panel draws its series as coloured polylines inside a frame with tick marks at the
y-range ends; no text (the benchmark's JSON and README give the legend: series colours
in order are blue, orange, green, red).
"""

from __future__ import annotations

import math
import struct
import zlib

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]


def _line(img, w, h, x0, y0, x1, y1, color):
    dx, dy = abs(x1 - x0), -abs(y1 - y0)
    sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
    err = dx + dy
    while True:
        for ox in (0, 1):  # 2 px wide
            if 0 <= x0 + ox < w and 0 <= y0 < h:
                img[y0][x0 + ox] = color
        if x0 == x1 and y0 == y1:
            return
        e2 = 2 * err
        if e2 >= dy:
            err += dy
            x0 += sx
        if e2 <= dx:
            err += dx
            y0 += sy


def write_png(path, panels, width=480, height=320, pad=24):
    """panels: list of {"series": [[(x, y), ...], ...], "log_y": bool}; side by side."""
    W = width * len(panels)
    img = [[(255, 255, 255)] * W for _ in range(height)]
    for p, panel in enumerate(panels):
        ox = p * width
        tf = (lambda v: math.log10(max(v, 1e-12))) if panel.get("log_y") else (lambda v: v)
        pts = [(x, tf(y)) for s in panel["series"] for x, y in s if math.isfinite(y)]
        if not pts:
            continue
        x_lo, x_hi = min(x for x, _ in pts), max(x for x, _ in pts)
        y_lo, y_hi = min(y for _, y in pts), max(y for _, y in pts)
        x_hi, y_hi = (x_hi if x_hi > x_lo else x_lo + 1), (y_hi if y_hi > y_lo else y_lo + 1)

        def to_px(x, y, ox=ox, x_lo=x_lo, x_hi=x_hi, y_lo=y_lo, y_hi=y_hi):
            px = ox + pad + round((x - x_lo) / (x_hi - x_lo) * (width - 2 * pad))
            py = height - pad - round((y - y_lo) / (y_hi - y_lo) * (height - 2 * pad))
            return px, py

        grey = (120, 120, 120)
        for a, b in (((ox + pad, pad), (ox + pad, height - pad)),
                     ((ox + pad, height - pad), (ox + width - pad, height - pad))):
            _line(img, W, height, *a, *b, grey)
        for s_i, series in enumerate(panel["series"]):
            px = [to_px(x, tf(y)) for x, y in series if math.isfinite(y)]
            for a, b in zip(px, px[1:], strict=False):
                _line(img, W, height, *a, *b, COLORS[s_i % len(COLORS)])
    raw = b"".join(b"\x00" + bytes(c for px in row for c in px) for row in img)

    def chunk(tag, data):
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", W, height, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))
