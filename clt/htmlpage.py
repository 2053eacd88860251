"""One self-contained HTML page: styles, script and pictures inline, nothing fetched, opens from disk.

The pieces are plain functions returning HTML text, every value escaped: a page of sections, tables
(sortable by a click on a heading, with a few lines of inline script), PNGs as base64 data URIs, and
line charts drawn here as inline SVG, so several runs' curves share one pair of axes.
"""

from __future__ import annotations

import base64
import html
import math
from typing import Any, Sequence

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1b2a41;color:#fff;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#c9d3e0;font-size:13px}main{padding:8px 28px 40px;max-width:1280px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;margin:16px 0;padding:12px 18px}
h2{font-size:17px;margin:4px 0 10px}h3{font-size:14px;margin:12px 0 6px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #dde1e6;padding:3px 8px;text-align:left}
th{background:#eef1f4}table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#99a}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f3f4f6;padding:8px;font-size:12px;overflow:auto;max-height:420px}
img{max-width:100%;height:auto;border:1px solid #eee}.row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.missing{color:#8a5a00;background:#fff8e6;border:1px solid #f0dba8;padding:6px 10px;border-radius:4px;font-size:13px}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px}figure{margin:0}figcaption{font-size:12px;color:#555}
svg text{font-family:system-ui,Helvetica,Arial,sans-serif}.cols{display:grid;gap:16px}
"""

# sorts a table by the clicked column: numbers as numbers, the rest as text; a second click reverses
SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th").forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.from(body.rows), up = th.dataset.dir !== "up";
      th.dataset.dir = up ? "up" : "down";
      var key = function (row) { var t = row.cells[col] ? row.cells[col].textContent.trim() : "";
        var n = parseFloat(t.replace("%", "")); return isNaN(n) ? t : n; };
      rows.sort(function (a, b) { var x = key(a), y = key(b);
        var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return up ? c : -c; });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def page(title: str, subtitle_lines: Sequence[str], sections: Sequence[str]) -> str:
    """The whole document."""
    lines = "".join(f"<p>{esc(line)}</p>" for line in subtitle_lines)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{esc(title)}</title>"
            f"<style>{STYLE}</style></head><body><header><h1>{esc(title)}</h1>{lines}</header><main>"
            + "".join(sections) + f"</main><script>{SCRIPT}</script></body></html>\n")


def section(title: str, *parts: str, anchor: str = "") -> str:
    ident = f" id=\"{esc(anchor)}\"" if anchor else ""
    return f"<section{ident}><h2>{esc(title)}</h2>{''.join(parts)}</section>"


def heading(text: str) -> str:
    return f"<h3>{esc(text)}</h3>"


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def missing(what: str, command: str) -> str:
    """A part the store does not hold yet, with the command that makes it."""
    return f"<p class=\"missing\">{esc(what)}: make it with <code>{esc(command)}</code></p>"


def preformatted(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def row(*parts: str) -> str:
    return f"<div class=\"row\">{''.join(parts)}</div>"


def columns(parts: Sequence[str]) -> str:
    """Side by side, one column per run."""
    return (f"<div class=\"cols\" style=\"grid-template-columns:repeat({max(1, len(parts))},minmax(0,1fr))\">"
            + "".join(f"<div>{p}</div>" for p in parts) + "</div>")


def fmt(value: Any) -> str:
    """Numbers for a table cell: shares in [0, 1] of accuracy-like names are formatted by the caller."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], sortable: bool = True) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(
        f"<td class=\"num\">{esc(fmt(c))}</td>" if isinstance(c, (int, float)) and not isinstance(c, bool)
        else f"<td>{esc(fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    kind = ' class="sortable"' if sortable else ""
    return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    return table(["", ""], [(k, v) for k, v in pairs], sortable=False).replace("<thead><tr><th></th><th></th></tr>"
                                                                                "</thead>", "")


def png(data: bytes, alt: str, caption: str = "", width: int | None = None) -> str:
    """A PNG inline, as a base64 data URI."""
    style = f" style=\"max-width:{width}px\"" if width else ""
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure><img src=\"{source}\" alt=\"{esc(alt)}\"{style}>{cap}</figure>"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values spanning [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if raw <= m * step)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.2e}"


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float | None]]], title: str, x_label: str,
               y_label: str, width: int = 540, height: int = 300, chart_id: str = "") -> str:
    """Series of (label, xs, ys) on one pair of axes, as inline SVG with a legend; None or non-finite
    ys are gaps. Each line carries its label in data-series, for tests and for a reader's tools."""
    kept = [(label, [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(y)])
            for label, xs, ys in series]
    kept = [(label, points) for label, points in kept if points]
    left, right, top, bottom = 62, 14, 28, 44 + 16 * len(kept)
    inner_w, inner_h = width - left - right, height - top - bottom
    ident = f" id=\"{esc(chart_id)}\"" if chart_id else ""
    out = [f"<svg{ident} class=\"chart\" width=\"{width}\" height=\"{height}\" "
           f"viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"{esc(title)}\">",
           f"<rect width=\"{width}\" height=\"{height}\" fill=\"#fff\"/>",
           f"<text x=\"{width / 2}\" y=\"17\" text-anchor=\"middle\" font-size=\"13\">{esc(title)}</text>"]
    if not kept:
        out.append(f"<text x=\"{width / 2}\" y=\"{height / 2}\" text-anchor=\"middle\" font-size=\"12\" "
                   "fill=\"#888\">no values recorded</text></svg>")
        return "".join(out)
    xs = [x for _, points in kept for x, _ in points]
    ys = [y for _, points in kept for _, y in points]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 0.5), y1 + (abs(y1) * 0.1 or 0.5)
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    px = lambda x: left + (x - x0) / (x1 - x0) * inner_w  # noqa: E731
    py = lambda y: top + (y1 - y) / (y1 - y0) * inner_h  # noqa: E731
    for tick in _ticks(y0, y1):
        out.append(f"<line x1=\"{left}\" x2=\"{left + inner_w}\" y1=\"{py(tick):.1f}\" y2=\"{py(tick):.1f}\" "
                   f"stroke=\"#e5e7eb\"/><text x=\"{left - 5}\" y=\"{py(tick) + 4:.1f}\" text-anchor=\"end\" "
                   f"font-size=\"10\">{_label(tick)}</text>")
    for tick in _ticks(x0, x1):
        out.append(f"<text x=\"{px(tick):.1f}\" y=\"{top + inner_h + 14}\" text-anchor=\"middle\" "
                   f"font-size=\"10\">{_label(tick)}</text>")
    out.append(f"<rect x=\"{left}\" y=\"{top}\" width=\"{inner_w}\" height=\"{inner_h}\" fill=\"none\" "
               "stroke=\"#9ca3af\"/>")
    out.append(f"<text x=\"{left + inner_w / 2}\" y=\"{top + inner_h + 30}\" text-anchor=\"middle\" "
               f"font-size=\"11\">{esc(x_label)}</text>")
    out.append(f"<text transform=\"translate(14 {top + inner_h / 2}) rotate(-90)\" text-anchor=\"middle\" "
               f"font-size=\"11\">{esc(y_label)}</text>")
    for i, (label, points) in enumerate(kept):
        color = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in points)
        out.append(f"<g class=\"series\" data-series=\"{esc(label)}\"><polyline fill=\"none\" stroke=\"{color}\" "
                   f"stroke-width=\"1.8\" points=\"{path}\"/>")
        if len(points) <= 40:
            out.extend(f"<circle cx=\"{px(x):.1f}\" cy=\"{py(y):.1f}\" r=\"2.6\" fill=\"{color}\"/>" for x, y in points)
        out.append("</g>")
        legend_y = top + inner_h + 44 + 16 * i
        out.append(f"<line x1=\"{left}\" x2=\"{left + 22}\" y1=\"{legend_y - 4}\" y2=\"{legend_y - 4}\" "
                   f"stroke=\"{color}\" stroke-width=\"2.5\"/><text class=\"legend\" x=\"{left + 28}\" "
                   f"y=\"{legend_y}\" font-size=\"11\">{esc(label)}</text>")
    out.append("</svg>")
    return "".join(out)
