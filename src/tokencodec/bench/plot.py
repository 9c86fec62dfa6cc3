"""RD plots of results files (matplotlib, written to PNG without a display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from tokencodec.rd.curve import Curve  # noqa: E402


def _label(curve: Curve, name: str) -> str:
    m = curve.measures[name]
    return f"{name} ({m.unit})" if m.unit else name


def plot_rd(curves: Sequence[Curve], path: str | Path, rate: str = "bpp",
            metrics: Sequence[str] = ("psnr-rgb", "ms-ssim-rgb"), title: str = "") -> Path:
    """One panel per metric, rate on x; curves lacking a metric are left out of that panel."""
    metrics = [m for m in metrics if any(m in c.measures for c in curves)]
    if not metrics:
        raise ValueError("none of the curves has any of the requested metrics")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for curve in curves:
            if metric in curve.measures and rate in curve.measures:
                ax.plot(curve.column(rate), curve.column(metric), marker="o", markersize=3, label=curve.name)
        ref = next(c for c in curves if metric in c.measures)
        ax.set_xlabel(_label(ref, rate) if rate in ref.measures else rate)
        ax.set_ylabel(_label(ref, metric))
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
