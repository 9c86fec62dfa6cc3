"""Tokens vs pixels for a machine: the token bitstreams' RD frontier against the pixel codecs at equal bits.

    python scripts/tokens_vs_pixels.py --tokens docs/studies/tokens-vs-pixels/diagnostic \
        --pixels docs/studies/pixels-for-machines/machines-diagnostic --metric accuracy agreement

The token results (one file per quantiser profile × inner method, each swept over keep ratios) are
pooled; their **frontier** is the Pareto front over every (keep ratio, profile) point on (rate,
metric), computed separately for each rate (``bpp``: the whole file; ``payload_bpp``: without its
header), i.e. the joint choice of pruning and quantisation. It is written as ``frontier-<rate>-<metric>.json``
beside the token results and compared by BD-rate (PCHIP, monotonic fit, linear rate) with each pixel
codec; the table is printed as Markdown and a plot written to ``tokens_vs_pixels_<metric>.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tokencodec.provenance import provenance
from tokencodec.rd.bd import bd_rate
from tokencodec.rd.curve import Curve
from tokencodec.rd.measures import lookup
from tokencodec.rd.pareto import pareto_front
from tokencodec.rd.results import load_curve, save_curve

CODECS = ("jpeg", "webp", "avif", "jpeg2000", "jpegxl", "heic")


def frontier(curves: list[Curve], rate: str, metric: str) -> Curve:
    points = [p for c in curves for p in c.points]
    origin = {id(p): c.name for c in curves for p in c.points}
    front = pareto_front(points, lookup(rate), lookup(metric))
    source = [f"{origin[id(p)]}@{p.knob:g}" for p in front]
    return Curve(f"tokens-frontier-{rate}", front, description=f"Pareto front of {len(curves)} token bitstream "
                 f"curves on ({rate}, {metric}); points: {', '.join(source)}",
                 provenance=provenance(config={"frontier_of": [c.name for c in curves], "points": source,
                                               "rate": rate, "metric": metric}))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=Path, required=True, help="folder of token bitstream results (tokens-*.json)")
    p.add_argument("--pixels", type=Path, required=True, help="folder of pixel codec results (<codec>.json)")
    p.add_argument("--metric", nargs="+", default=["accuracy"])
    p.add_argument("--plot-only", action="store_true",
                   help="only draw the figures again, from the frontier files written before")
    args = p.parse_args(argv)
    tokens = [load_curve(f) for f in sorted(args.tokens.glob("tokens-*.json"))]
    pixels = {c: load_curve(args.pixels / f"{c}.json") for c in CODECS if (args.pixels / f"{c}.json").is_file()}
    if args.plot_only:
        for metric in args.metric:
            front = load_curve(args.tokens / f"frontier-bpp-{metric}.json")
            plot(front, tokens, pixels, metric, args.tokens / f"tokens_vs_pixels_{metric}.png")
        return 0
    for metric in args.metric:
        print(f"\n### {metric}: BD-rate of the token frontier against each pixel codec (negative = fewer bits)\n")
        print("| rate | " + " | ".join(pixels) + " |\n|---|" + "---|" * len(pixels))
        fronts = {}
        rates = ["bpp"] + (["payload_bpp"] if all("payload_bpp" in c.measures for c in pixels.values()) else [])
        for rate in rates:          # older pixel results may lack payload_bpp
            front = frontier(tokens, rate, metric)
            fronts[rate] = front
            save_curve(front, args.tokens / f"frontier-{rate}-{metric}.json")
            cells = []
            for curve in pixels.values():
                r = bd_rate(curve, front, rate=rate, metric=metric, monotonic=True)
                cells.append(f"{r.value:+.1f} %" if r.shown else str(r))     # no number below 75 % overlap
            print(f"| {rate} | " + " | ".join(cells) + " |")
        plot(fronts["bpp"], tokens, pixels, metric, args.tokens / f"tokens_vs_pixels_{metric}.png")
        latency(fronts["bpp"], pixels, metric)
    return 0


def latency(front: Curve, pixels: dict[str, Curve], metric: str) -> None:
    """Decode time (ms, mean per file) beside the fidelity: the frontier's points, and each pixel codec's range."""
    print(f"\nDecode latency (ms per file; the bitstream only, not the model) along the token frontier ({metric}):\n")
    print("| bpp | " + metric + " | decode ms |\n|---|---|---|")
    for p in front.points:
        print(f"| {p['bpp']:.3f} | {p[metric]:.3f} | {1e3 * p.values.get('decoding_time', float('nan')):.2f} |")
    print("\n| pixel codec | decode ms (min–max over qualities) |\n|---|---|")
    for name, c in pixels.items():
        t = 1e3 * c.column("decoding_time")
        print(f"| {name} | {t.min():.2f}–{t.max():.2f} |")


def plot(front: Curve, tokens: list[Curve], pixels: dict[str, Curve], metric: str, path: Path) -> None:
    """Pixel codecs in the reports' styles, every token point in grey, the token frontier in black."""
    import numpy as np

    from tokencodec.bench.report.plots import axis_label, format_axis, plt, styles

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in pixels.items():
        colour, marker, line = styles(pixels)[name]
        ax.plot(c.column("bpp"), c.column(metric), color=colour, marker=marker, linestyle=line, ms=4, lw=1.2,
                label=name)
    for c in tokens:
        ax.plot(c.column("bpp"), c.column(metric), ".", color="grey", alpha=0.5)
    ax.plot(front.column("bpp"), front.column(metric), "k*-", lw=2, ms=7, label="token bitstreams (frontier)")
    ax.set_xscale("log")
    format_axis(ax.xaxis, np.concatenate([c.column("bpp") for c in (*pixels.values(), *tokens, front)]), True)
    ax.set_xlabel(axis_label({}, "bpp") + ", whole file")
    ax.set_ylabel(axis_label({}, metric))
    ax.set_title(f"{metric}: token bitstreams (grey points, black frontier) against pixel codecs", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
