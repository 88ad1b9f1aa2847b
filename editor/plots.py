"""Figures as PNG, drawn with matplotlib on its file-only Agg backend (no display on servers and CI).

A leaf module: attribution, evaluation, LoRA and the recipes all draw through it, so none of them
imports another layer for a picture."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from editor.io import atomic_file


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


def line_plot(series: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str, title: str,
              bands: dict[str, tuple[list[float], list[float]]] | None = None, hlines: dict[str, float] | None = None,
              logx: bool = False, errors: dict[str, tuple[list[float], list[float]]] | None = None) -> bytes:
    """Lines (x, y) with optional intervals, shaded (``bands``) or as error bars (``errors``: (lows,
    highs) per series, for lines that overlap), and horizontal reference lines, as PNG bytes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for label, (xs, ys) in series.items():
        line, = ax.plot(xs, ys, marker="o", label=label)
        if bands and label in bands:
            ax.fill_between(xs, bands[label][0], bands[label][1], alpha=0.2)
        if errors and label in errors:
            _error_bars(ax, xs, ys, errors[label], line.get_color())
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", color="grey", linewidth=1)
        ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=8, color="grey",
                    va="bottom")
    if logx:
        ax.set_xscale("log")
    return _finish(fig, ax, xlabel, ylabel, title, legend_size=8)


def _error_bars(ax, xs, ys, interval: tuple[list[float], list[float]], color) -> None:
    """Vertical bars from each interval's low to its high (matplotlib wants distances from the point)."""
    lows, highs = interval
    below = [max(y - lo, 0.0) for y, lo in zip(ys, lows)]
    above = [max(hi - y, 0.0) for y, hi in zip(ys, highs)]
    ax.errorbar(xs, ys, yerr=[below, above], fmt="none", ecolor=color, alpha=0.6, capsize=2, linewidth=1)


def _finish(fig, ax, xlabel: str, ylabel: str, title: str, legend_size: int) -> bytes:
    """Labels, title, legend and grid every x-y figure shares; the PNG bytes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)
    return figure_png(fig)


def bar_plot(groups: dict[str, list[float]], ylabel: str, title: str,
             errors: dict[str, tuple[list[float], list[float]]] | None = None) -> bytes:
    """One bar per group at its mean, with every individual value (e.g. random seeds) as a dot and,
    in ``errors``, each value's interval (lows, highs) as a bar through its dot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    names = list(groups)
    means = [sum(v) / len(v) for v in groups.values()]
    ax.bar(range(len(names)), means, color="#8fb3d9")
    for i, (name, values) in enumerate(groups.items()):
        ax.scatter([i] * len(values), values, color="#1f4e79", zorder=3, s=14)
        if errors and name in errors:
            _error_bars(ax, [i] * len(values), values, errors[name], "#1f4e79")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return figure_png(fig)


def scatter_plot(groups: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str, title: str,
                 vline: tuple[str, float] | None = None, hline: tuple[str, float] | None = None,
                 symlog_x: float | None = None,
                 errors: dict[str, tuple[list[float], list[float]]] | None = None) -> bytes:
    """One marker per setting, one colour per group: a trade-off of two measures (no lines, since the
    settings of a group are not a sequence). ``symlog_x``: linear within +-that value, logarithmic
    beyond (small changes readable beside huge ones). ``errors``: (lows, highs) of y per group."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, (xs, ys) in groups.items():
        dots = ax.scatter(xs, ys, label=label, s=18, alpha=0.8)
        if errors and label in errors:
            _error_bars(ax, xs, ys, errors[label], dots.get_facecolor()[0])
    for line, draw in ((vline, ax.axvline), (hline, ax.axhline)):
        if line:
            draw(line[1], linestyle="--", color="grey", linewidth=1, label=line[0])
    if symlog_x:
        ax.set_xscale("symlog", linthresh=symlog_x)
    return _finish(fig, ax, xlabel, ylabel, title, legend_size=7)


def heatmap(matrix: torch.Tensor, path: str | Path, title: str = "", xlabel: str = "head",
            xticklabels: list[str] | None = None, yticklabels: list[str] | None = None) -> Path:
    """A layers x heads (or x positions) heatmap PNG (diverging colours centred on 0)."""
    plt = _pyplot()
    m = matrix.detach().float().cpu().numpy()
    layers, heads = m.shape
    fig, ax = plt.subplots(figsize=(max(4, min(heads * 0.45 + 2, 24)), max(3, min(layers * 0.22 + 1.5, 40))))
    bound = float(abs(m).max()) or 1.0
    im = ax.imshow(m, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    if xticklabels is not None:
        ax.set_xticklabels(xticklabels, rotation=90, fontsize=7)
    if yticklabels is not None:
        ax.set_yticks(range(len(yticklabels)))
        ax.set_yticklabels(yticklabels, fontsize=6)
        ax.set_ylabel("layer.head")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def save_png(png: bytes, path: str | Path) -> Path:
    """Write PNG bytes whole or not at all."""
    with atomic_file(path, suffix=".png") as tmp:
        tmp.write_bytes(png)
    return Path(path)
