"""``report.html``: one self-contained page (inline PNG images, no network) per recipe run."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from editor.evaluation.results import Comparison
from editor.io import write_text_atomic

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.sig { font-weight: bold; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""

# Lets a headless browser confirm that every image decoded and every table has a size.
_CHECK = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var tables = document.querySelectorAll('table'), shown = 0;
  for (var j = 0; j < tables.length; j++) { if (tables[j].offsetHeight > 0) shown++; }
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-ok', ok);
  document.body.setAttribute('data-tables', tables.length);
  document.body.setAttribute('data-tables-shown', shown);
});
"""


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


class Report:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, rows: list[dict], columns: list[str], bold: str | None = None) -> None:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for r in rows:
            cells = []
            for c in columns:
                value = "" if r.get(c) is None else str(r.get(c))
                cls = ' class="sig"' if bold and c == bold and value.endswith("*") else ""
                cells.append(f"<td{cls}>{html.escape(value)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")

    def comparison(self, comparison: Comparison) -> None:
        self.table(comparison.rows(), Comparison.COLUMNS, bold="change")

    def image(self, png: bytes | Path, caption: str) -> None:
        data = png.read_bytes() if isinstance(png, Path) else png
        encoded = base64.b64encode(data).decode()
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n"
                + "\n".join(self.parts) + f"\n<script>{_CHECK}</script></body></html>\n")

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.render())


def line_plot(series: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str, title: str,
              bands: dict[str, tuple[list[float], list[float]]] | None = None, hlines: dict[str, float] | None = None,
              logx: bool = False) -> bytes:
    """Lines (x, y) with optional shaded intervals and horizontal reference lines, as PNG bytes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", label=label)
        if bands and label in bands:
            ax.fill_between(xs, bands[label][0], bands[label][1], alpha=0.2)
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="grey", linewidth=1)
        ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=8, color="grey",
                    va="bottom")
    if logx:
        ax.set_xscale("log")
    return _finish(fig, ax, xlabel, ylabel, title, legend_size=8)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int) -> bytes:
    """Labels, title, legend and grid every x-y figure shares; the PNG bytes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def bar_plot(groups: dict[str, list[float]], ylabel: str, title: str) -> bytes:
    """One bar per group at its mean, with every individual value (e.g. random seeds) as a dot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    names = list(groups)
    means = [sum(v) / len(v) for v in groups.values()]
    ax.bar(range(len(names)), means, color="#8fb3d9")
    for i, values in enumerate(groups.values()):
        ax.scatter([i] * len(values), values, color="#1f4e79", zorder=3, s=14)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def scatter_plot(groups: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str, title: str,
                 vline: tuple[str, float] | None = None, hline: tuple[str, float] | None = None,
                 symlog_x: float | None = None) -> bytes:
    """One marker per setting, one colour per group: a trade-off of two measures (no lines, since the
    settings of a group are not a sequence). ``symlog_x``: linear within +-that value, logarithmic
    beyond (small changes readable beside huge ones)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (xs, ys) in groups.items():
        ax.scatter(xs, ys, label=label, s=18, alpha=0.8)
    for line, draw in ((vline, ax.axvline), (hline, ax.axhline)):
        if line:
            draw(line[1], linestyle="--", color="grey", linewidth=1, label=line[0])
    if symlog_x:
        ax.set_xscale("symlog", linthresh=symlog_x)
    return _finish(fig, ax, xlabel, ylabel, title, legend_size=7)


def layer_counts_plot(components: list[str], n_layers: int, title: str) -> bytes:
    """How many of ``components`` (``L.I`` names) sit in each layer, as a bar chart."""
    plt = _pyplot()
    counts = [0] * n_layers
    for name in components:
        counts[int(name.split(".")[0])] += 1
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    ax.bar(range(n_layers), counts, color="#8fb3d9")
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)
