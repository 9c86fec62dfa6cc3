"""RD plots (matplotlib, rendered to PNG bytes without a display), made to go into a paper as they are.

One plotter for codecs and token methods: every curve that has both measures goes on the same axes,
so pipelines that share a rate (JPEG and DivPrune judged by one observer, on tokens) appear together.

- Each curve keeps one style across every figure of a report: a colour, a marker and a line style,
  chosen so that any two of the first 110 curves differ in at least two of the three (see ``palette``).
- Axis labels name the measure and its unit once ("visual tokens", "rate (bit/pixel)", "PSNR-RGB (dB)").
- Large counts (FLOPs, bytes) use engineering prefixes ("200 M"), never a "×1e8" offset.
- The rate axis is logarithmic for bit rates (bpp, bits, bytes) and linear for counts (tokens, FLOPs), the
  axes BD metrics integrate on; ``log_rate`` overrides it.
- Where a curve keeps per-item values, a shaded band shows the 95 % bootstrap interval of the metric at
  each point (``rd.bootstrap``).
"""

from __future__ import annotations

import colorsys
import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402

from tokencodec.rd.aggregate import item_matrix  # noqa: E402
from tokencodec.rd.bootstrap import point_intervals  # noqa: E402
from tokencodec.rd.curve import Curve  # noqa: E402
from tokencodec.rd.measures import lookup  # noqa: E402

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")  # 11: coprime with 10 colours
LINESTYLES = ("-", "--", ":", "-.")
BIT_RATES = frozenset({"bpp", "bits", "bytes", "payload_bpp", "payload_bytes", "bpp_mean", "ideal_bits"})

# How a measure reads on an axis, unit included once; other measures read "<name> (<unit>)".
LABELS = {"bpp": "rate (bit/pixel)", "payload_bpp": "payload rate (bit/pixel)",
          "bpp_mean": "rate, per-image mean (bit/pixel)", "bits": "size (bit)", "bytes": "size (byte)",
          "payload_bytes": "payload size (byte)", "ideal_bits": "ideal size (bit)", "tokens": "visual tokens",
          "tokens_avg_layers": "visual tokens, mean over LLM layers", "flops": "FLOPs", "kv_bytes": "KV cache (byte)",
          "latency_s": "latency (s)", "psnr-rgb": "PSNR-RGB (dB)", "ms-ssim-rgb": "MS-SSIM-RGB",
          "ssim-rgb": "SSIM-RGB", "psnr-y": "PSNR-Y (dB)", "ssim-y": "SSIM-Y", "vmaf": "VMAF", "kl": "KL (nat)",
          "top1_agreement": "top-1 agreement", "top5_agreement": "top-5 agreement"}

Style = tuple[str, str, str]   # colour, marker, line style


def palette(n: int) -> list[Style]:
    """``n`` distinct (colour, marker, line style) triples. Curve i gets colour i mod 10, marker i mod 11 and
    line style ⌊i/10⌋ mod 4, so any two of the first 110 curves differ in at least two of the three (the first
    20 already in every pair); beyond that, colours are spread over the hue circle (one per curve)."""
    if n <= len(COLOURS) * len(MARKERS):
        return [(COLOURS[i % len(COLOURS)], MARKERS[i % len(MARKERS)], LINESTYLES[(i // len(COLOURS)) % 4])
                for i in range(n)]
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb(i / n, 0.85 if i % 2 else 0.65, 0.85 if (i // 2) % 2 else 0.6)
        out.append((f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}", MARKERS[i % len(MARKERS)],
                    LINESTYLES[i % 4]))
    if len(set(out)) < n:  # hex rounding merged two hues (thousands of curves): fall back on exact floats
        out = [(colorsys.hsv_to_rgb(i / n, 0.8, 0.8), MARKERS[i % len(MARKERS)], LINESTYLES[i % 4]) for i in range(n)]
    return out


def styles(curves: Mapping[str, Curve]) -> dict[str, Style]:
    """The style of each curve, by its position among all curves of the report."""
    return dict(zip(curves, palette(len(curves)), strict=True))


def axis_label(curves: Mapping[str, Curve], name: str) -> str:
    """The measure's name and unit, the unit once: "visual tokens", "rate (bit/pixel)", "psnr (dB)"."""
    if name in LABELS:
        return LABELS[name]
    measure = next((c.measures[name] for c in curves.values() if name in c.measures), lookup(name))
    unit = measure.unit
    if not unit or unit.lower().rstrip("s") in name.lower():
        return name
    return f"{name} ({unit})"


def default_title(rate: str, metric: str, dataset: str | None = None) -> str:
    return f"{metric} vs {rate}" + (f" — {dataset}" if dataset and dataset != "unknown" else "")


def default_log_rate(rate: str) -> bool:
    """Log axis for bit rates (codec gains are multiplicative), linear for counts: BD's own axes."""
    return rate in BIT_RATES


def format_axis(axis, values: np.ndarray, log: bool) -> None:
    """Engineering prefixes for large numbers, plain numbers on log axes, never an offset."""
    big = values.size and np.nanmax(np.abs(values)) >= 1e4
    if log:
        positive = values[np.isfinite(values) & (values > 0)] if values.size else values
        decades = np.log10(positive.max() / positive.min()) if positive.size else 2.0
        # 1-2-5 ticks over several decades; denser within about one decade, where 1-2-5 leaves two or three
        subs = (1.0, 2.0, 5.0) if decades > 1.5 else (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0)
        axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        axis.set_major_formatter(ticker.EngFormatter(sep=" ") if big else
                                 ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(ticker.NullFormatter())
    elif big:
        axis.set_major_formatter(ticker.EngFormatter(sep=" "))
    else:
        formatter = ticker.ScalarFormatter(useOffset=False)
        formatter.set_scientific(False)
        axis.set_major_formatter(formatter)


def draw(ax, curves: Mapping[str, Curve], rate: str, metric: str, style: Mapping[str, Style] | None = None,
         *, log_rate: bool | None = None, bands: bool = True, legend: bool = True) -> int:
    """Draw every curve that has both measures on ``ax`` (with its interval band when it keeps per-item values);
    returns how many were drawn."""
    style = style or styles(curves)
    drawn, xs, ys = 0, [], []
    for name, curve in curves.items():
        if rate not in curve.measures or metric not in curve.measures:
            continue
        x, y = curve.column(rate), curve.column(metric)
        keep = np.isfinite(x) & np.isfinite(y)
        order = np.argsort(x[keep], kind="stable")
        colour, marker, line = style[name]
        ax.plot(x[keep][order], y[keep][order], color=colour, marker=marker, linestyle=line, markersize=4,
                linewidth=1.2, label=name)
        found = point_intervals(curve, metric) if bands else None
        if found and any(iv is not None for iv in found):
            lo = np.array([np.nan if iv is None else iv.low for iv in found])[keep][order]
            hi = np.array([np.nan if iv is None else iv.high for iv in found])[keep][order]
            ax.fill_between(x[keep][order], lo, hi, color=colour, alpha=0.15, linewidth=0)
        xs.append(x[keep])
        ys.append(y[keep])
        drawn += 1
    x_all = np.concatenate(xs) if xs else np.array([])
    log = default_log_rate(rate) if log_rate is None else log_rate
    log = bool(log and x_all.size and np.all(x_all > 0))
    if log:
        ax.set_xscale("log")
    format_axis(ax.xaxis, x_all, log)
    format_axis(ax.yaxis, np.concatenate(ys) if ys else np.array([]), False)
    ax.set_xlabel(axis_label(curves, rate))
    ax.set_ylabel(axis_label(curves, metric))
    ax.grid(True, which="major", alpha=0.3)
    if not legend:
        pass
    elif drawn > 8:      # many curves: the legend goes beside the axes, where it hides none of them
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  ncol=2 if drawn > 20 else 1)
    elif drawn:
        ax.legend(fontsize=8)
    return drawn


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def plot_figure(curves: Mapping[str, Curve], rate: str, metric: str, *, title: str | None = None,
                dataset: str | None = None, style: Mapping[str, Style] | None = None,
                log_rate: bool | None = None) -> bytes:
    """One figure of ``metric`` against ``rate`` as PNG bytes; title by default "<metric> vs <rate> — <data>"."""
    fig, ax = plt.subplots(figsize=(6, 4.4))
    if not draw(ax, curves, rate, metric, style, log_rate=log_rate):
        plt.close(fig)
        raise ValueError(f"no curve has both {rate!r} and {metric!r}")
    ax.set_title(title or default_title(rate, metric, dataset), fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plot_panels(curves: Mapping[str, Curve], rate: str, metrics: Sequence[str], *, title: str | None = None,
                dataset: str | None = None, log_rate: bool | None = None) -> bytes:
    """One panel per metric (metrics no curve has are left out), side by side, as PNG bytes."""
    metrics = [m for m in metrics if any(m in c.measures and rate in c.measures for c in curves.values())]
    if not metrics:
        raise ValueError(f"none of the curves has {rate!r} and any of the requested metrics")
    style = styles(curves)
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.6 * len(metrics), 4.4), squeeze=False)
    for i, (ax, metric) in enumerate(zip(axes[0], metrics, strict=True)):
        # with many curves one legend, beside the last panel, serves them all
        draw(ax, curves, rate, metric, style, log_rate=log_rate, legend=len(curves) <= 8 or i == len(metrics) - 1)
        ax.set_title(default_title(rate, metric), fontsize=10)
    fig.suptitle(title or (dataset if dataset and dataset != "unknown" else f"{', '.join(metrics)} vs {rate}"))
    fig.tight_layout()
    return _png(fig)


def has_bands(curves: Mapping[str, Curve], metric: str) -> bool:
    """Whether some curve keeps per-item values of ``metric`` (its figure shows interval bands)."""
    return any(item_matrix(c, metric) is not None for c in curves.values())


__all__ = ["COLOURS", "LABELS", "LINESTYLES", "MARKERS", "axis_label", "default_log_rate", "default_title", "draw",
           "format_axis", "has_bands", "palette", "plot_figure", "plot_panels", "styles"]
