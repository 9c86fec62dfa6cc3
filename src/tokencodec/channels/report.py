"""The report of a channel study: accuracy (any metric) against packet loss, one curve per scheme with 95 %
bootstrap bands over samples, and Markdown tables (the metric per loss with its interval, bytes on the
wire, packetisation and FEC overheads, the drop from loss 0, unequal minus equal protection).

Pipelines named ``burst-…`` go to a second panel (bursty loss). The bootstrap resamples the samples (the
same resample for every loss of a scheme, paired differences for UEP − EEP), 2 000 times, seeded.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

RESAMPLES = 2000


def load(folder: Path, metric: str) -> dict[str, dict]:
    """{pipeline name: {loss, values [samples × losses], rates}} from the results files of a study folder."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        if data.get("knob") != "loss" or "per_item" not in data:
            continue
        items = data["per_item"]
        values = np.array([items[s][metric] for s in sorted(items)], dtype=float)
        out[data["name"]] = {"loss": np.array(data["results"]["loss"]), "values": values,
                             "results": data["results"], "provenance": data["provenance"]}
    return out


def bootstrap(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(2.5 %, 97.5 %) percentiles of the mean over samples, per column; rows resampled together."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), (RESAMPLES, len(values)))
    means = values[idx].mean(axis=1)                          # [resamples, losses]
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def paired_interval(a: np.ndarray, b: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a − b (per sample, same channel realisation) and its 95 % bootstrap interval."""
    d = a - b
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), (RESAMPLES, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def figure(curves: dict[str, dict], metric: str, path: Path, title: str, lines: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("i.i.d. loss", [n for n in curves if not n.startswith("burst-")]),
              ("bursty loss (Gilbert–Elliott, mean burst 4)", [n for n in curves if n.startswith("burst-")])]
    panels = [(t, names) for t, names in panels if names]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.8), squeeze=False, sharey=True)
    colours = {}
    for ax, (panel, names) in zip(axes[0], panels, strict=True):
        for name in names:
            c = curves[name]
            base = name.removeprefix("burst-")
            colour = colours.setdefault(base, f"C{len(colours) % 10}")
            style = "-" if base.startswith("tokens") else "--"
            lo, hi = bootstrap(c["values"])
            kb = c["results"]["bytes"][0] / 1000
            ax.plot(100 * c["loss"], c["values"].mean(0), style, marker="o", ms=3, color=colour,
                    label=f"{base} ({kb:.2g} kB)")
            ax.fill_between(100 * c["loss"], lo, hi, color=colour, alpha=0.15, lw=0)
        for j, (label, value) in enumerate(lines.items()):
            ax.axhline(value, color="k", lw=0.8, ls=[":", "-."][j % 2], label=label)
        ax.set_xlabel("packet loss rate (%)")
        ax.set_title(panel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    axes[0][0].set_ylabel(f"{metric} (mean, 95 % bootstrap band over samples)")
    fig.suptitle(textwrap.fill(title, 70 * len(panels)))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def summary(curves: dict[str, dict], metric: str, title: str) -> str:
    losses = next(iter(curves.values()))["loss"]
    head = "| scheme | bytes on the wire | " + " | ".join(f"{100 * v:g} %" for v in losses) + " |"
    lines = [f"# {title}", "", f"{metric} (mean over {len(next(iter(curves.values()))['values'])} samples; "
             "95 % bootstrap interval in brackets) against the packet loss rate:", "", head,
             "|---|---:|" + "---:|" * len(losses)]
    for name, c in curves.items():
        lo, hi = bootstrap(c["values"])
        cells = [f"{m:.3f} [{a:.3f}, {b:.3f}]" for m, a, b in zip(c["values"].mean(0), lo, hi, strict=True)]
        lines.append(f"| {name} | {c['results']['bytes'][0]:.0f} | " + " | ".join(cells) + " |")
    lines += ["", "Bytes per image (means): the file (container or pixel file), the packets (headers, CRCs, "
              "positions, range-coder flushes), what FEC adds, datagrams sent, repair symbols, and at loss 0:",
              "", "| scheme | file | packets | packetisation overhead | FEC | datagrams | repair |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in curves.items():
        r = c["results"]
        file, packets, fec = r["file_bytes"][0], r["packet_bytes"][0], r["fec_bytes"][0]
        lines.append(f"| {name} | {file:.0f} | {packets:.0f} | {100 * (packets / file - 1):+.1f} % | {fec:.0f} | "
                     f"{r['datagrams'][0]:.1f} | {r['repair'][0]:.1f} |")
    return "\n".join(lines) + "\n"


def drops(curves: dict[str, dict], at: float) -> dict[str, tuple[float, float, float]]:
    """Per scheme: the loss in metric from loss 0 to ``at`` (paired per sample) with its interval."""
    out = {}
    for name, c in curves.items():
        j = int(np.flatnonzero(np.isclose(c["loss"], at))[0])
        out[name] = paired_interval(c["values"][:, 0], c["values"][:, j])
    return out


def write_channel_report(folder: Path, metric: str, title: str | None = None,
                         lines: dict[str, float] | None = None) -> dict[str, Path]:
    """``<metric>_vs_loss.png`` and ``summary.md`` in ``folder`` from its channel results files."""
    folder = Path(folder)
    curves = load(folder, metric)
    if not curves:
        raise ValueError(f"{folder}: no results with knob 'loss' (a channel study)")
    title = title or f"{metric} vs packet loss: {folder.name}"
    png = folder / f"{metric}_vs_loss.png"
    figure(curves, metric, png, title, lines or {})
    text = summary(curves, metric, title)
    text += "\nDrop from loss 0 (paired per sample, 95 % bootstrap interval), in points:\n\n"
    text += "| scheme | at 10 % | at 30 % |\n|---|---:|---:|\n"
    at = [v for v in (0.1, 0.3) if all(np.isclose(c["loss"], v).any() for c in curves.values())]
    found = {v: drops(curves, v) for v in at}
    for name in curves:
        cells = [f"{100 * found[v][name][0]:.1f} [{100 * found[v][name][1]:.1f}, {100 * found[v][name][2]:.1f}]"
                 if v in found else "" for v in (0.1, 0.3)]
        text += f"| {name} | " + " | ".join(cells) + " |\n"
    pairs = [(u, u.replace("uep", "eep")) for u in curves if "uep" in u and u.replace("uep", "eep") in curves]
    pairs += [(u, e) for u in curves for e in curves if "uep-" in u and e == u.split("uep-")[0] + "eep"]
    if pairs:
        losses = curves[pairs[0][0]]["loss"]
        text += "\nUnequal minus equal protection (same bits, same channel realisation per sample), in points:\n\n"
        text += "| pair | " + " | ".join(f"{100 * v:g} %" for v in losses) + " |\n"
        text += "|---|" + "---:|" * len(losses) + "\n"
        for u, e in dict.fromkeys(pairs):
            cells = []
            for j in range(len(curves[u]["loss"])):
                m, lo, hi = paired_interval(curves[u]["values"][:, j], curves[e]["values"][:, j])
                cells.append(f"{100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")
            text += f"| {u} − {e} | " + " | ".join(cells) + " |\n"
    md = folder / "summary.md"
    md.write_text(text)
    return {"html": png, "markdown": md}


__all__ = ["bootstrap", "figure", "load", "paired_interval", "summary", "write_channel_report"]
