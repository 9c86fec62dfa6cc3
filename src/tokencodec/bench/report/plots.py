"""RD plots (matplotlib, rendered to PNG bytes without a display).

One plotter for codecs and token methods: every curve that has both measures goes on the same axes,
so pipelines that share a rate (JPEG and DivPrune judged by one observer, on tokens) appear together.
Each curve keeps one distinct (colour, marker) pair across every figure of a report.
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

from tokencodec.rd.curve import Curve  # noqa: E402
from tokencodec.rd.measures import lookup  # noqa: E402

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")  # 11: coprime with 10 colours


def palette(n: int) -> list[tuple[str, str]]:
    """``n`` distinct (colour, marker) pairs. Curve i gets colour i mod 10 and marker i mod 11, so neighbours
    differ in both and the first 110 pairs are all distinct; beyond that, colours are spread over the hue
    circle (one distinct colour per curve)."""
    if n <= len(COLOURS) * len(MARKERS):
        return [(COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)]) for i in range(n)]
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / n, 0.85 if i % 2 else 0.65, 0.85 if (i // 2) % 2 else 0.6)
        out.append((f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}", MARKERS[i % len(MARKERS)]))
    if len(set(out)) < n:  # hex rounding merged two hues (thousands of curves): fall back on exact floats
        out = [(colorsys.hsv_to_rgb(i / n, 0.8, 0.8), MARKERS[i % len(MARKERS)]) for i in range(n)]
    return out


def styles(curves: Mapping[str, Curve]) -> dict[str, tuple[str, str]]:
    """The (colour, marker) of each curve, by its position among all curves of the report."""
    return dict(zip(curves, palette(len(curves)), strict=True))


def axis_label(curves: Mapping[str, Curve], name: str) -> str:
    measure = next((c.measures[name] for c in curves.values() if name in c.measures), lookup(name))
    return f"{name} ({measure.unit})" if measure.unit else name


def default_title(rate: str, metric: str, dataset: str | None = None) -> str:
    return f"{metric} vs {rate}" + (f" — {dataset}" if dataset and dataset != "unknown" else "")


def draw(ax, curves: Mapping[str, Curve], rate: str, metric: str,
         style: Mapping[str, tuple[str, str]] | None = None) -> int:
    """Draw every curve that has both measures on ``ax``; returns how many were drawn."""
    style = style or styles(curves)
    drawn = 0
    for name, curve in curves.items():
        if rate not in curve.measures or metric not in curve.measures:
            continue
        x, y = curve.column(rate), curve.column(metric)
        keep = np.isfinite(x) & np.isfinite(y)
        order = np.argsort(x[keep], kind="stable")
        colour, marker = style[name]
        ax.plot(x[keep][order], y[keep][order], color=colour, marker=marker, markersize=4, linewidth=1.2,
                label=name)
        drawn += 1
    ax.set_xlabel(axis_label(curves, rate))
    ax.set_ylabel(axis_label(curves, metric))
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize=7 if drawn > 8 else 8, ncol=2 if drawn > 12 else 1)
    return drawn


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def plot_figure(curves: Mapping[str, Curve], rate: str, metric: str, *, title: str | None = None,
                dataset: str | None = None, style: Mapping[str, tuple[str, str]] | None = None) -> bytes:
    """One figure of ``metric`` against ``rate`` as PNG bytes; title by default "<metric> vs <rate> — <data>"."""
    fig, ax = plt.subplots(figsize=(6, 4.4))
    if not draw(ax, curves, rate, metric, style):
        plt.close(fig)
        raise ValueError(f"no curve has both {rate!r} and {metric!r}")
    ax.set_title(title or default_title(rate, metric, dataset), fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plot_panels(curves: Mapping[str, Curve], rate: str, metrics: Sequence[str], *, title: str | None = None,
                dataset: str | None = None) -> bytes:
    """One panel per metric (metrics no curve has are left out), side by side, as PNG bytes."""
    metrics = [m for m in metrics if any(m in c.measures and rate in c.measures for c in curves.values())]
    if not metrics:
        raise ValueError(f"none of the curves has {rate!r} and any of the requested metrics")
    style = styles(curves)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        draw(ax, curves, rate, metric, style)
        ax.set_title(default_title(rate, metric), fontsize=10)
    fig.suptitle(title or (dataset if dataset and dataset != "unknown" else f"{', '.join(metrics)} vs {rate}"))
    fig.tight_layout()
    return _png(fig)


__all__ = ["COLOURS", "MARKERS", "axis_label", "default_title", "draw", "palette", "plot_figure", "plot_panels",
           "styles"]
