"""Reports of token studies: plots, per-ratio tables, BD tables against an anchor method, as
Markdown and as one self-contained HTML page (images inlined)."""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tokencodec.io import write_text_atomic  # noqa: E402
from tokencodec.rd.bd import BDOverlapWarning, BDResult, bd_quality, bd_rate  # noqa: E402
from tokencodec.rd.curve import Curve  # noqa: E402

BD_NOTE = ("BD-quality: mean difference of the metric (method − anchor) over the shared range of token counts, "
           "with a linear token axis. BD-token-rate: mean token difference at equal metric over the shared metric "
           "range, as a % of the anchor's mean token count there. Both use PCHIP on monotonic (isotonic) fits of "
           "each curve, because accuracies on finite test sets are noisy. Where the observer measures FLOPs, the "
           "same metrics follow with FLOPs as the rate: the fair axis for in-LLM methods, whose token count at "
           "the last layer hides the full-length layers before it.")


def bd_rows(curves: Mapping[str, Curve], anchor: str, metrics: Sequence[str], rate: str = "tokens"
            ) -> list[tuple[str, str, BDResult, BDResult]]:
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BDOverlapWarning)
        for name, curve in curves.items():
            if name == anchor:
                continue
            for metric in metrics:
                kw = dict(linear_rate=True, monotonic=True)
                try:
                    q = bd_quality(curves[anchor], curve, rate, metric, **kw)
                    r = bd_rate(curves[anchor], curve, rate, metric, **kw)
                except ValueError as err:  # e.g. a flat curve: say so in the table
                    q = r = BDResult("bd-quality", None, "", 0.0, "no-overlap", "pchip", rate, metric, True)
                    warnings.warn(f"BD of {name} vs {anchor} on {metric}: {err}", stacklevel=2)
                rows.append((name, metric, q, r))
    return rows


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.3g}"


def value_table(curves: Mapping[str, Curve], columns: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    header = ["method", "keep ratio", *columns]
    rows = []
    for name, curve in curves.items():
        for p in curve.points:
            rows.append([name, f"{p.knob:g}", *(_fmt(p.values[c]) if c in p.values else "" for c in columns)])
    return header, rows


def group_table(curves: Mapping[str, Curve], metric: str, group_of: Callable[[str], str | None]
                ) -> tuple[list[str], list[list[str]]]:
    """Mean ``metric`` per group of samples (from each curve's per-item values), one row per operating point."""
    groups = sorted({g for c in curves.values() for sid in c.per_item if (g := group_of(sid)) is not None})
    rows = []
    for name, curve in curves.items():
        for k, p in enumerate(curve.points):
            sums: dict[str, list[float]] = defaultdict(list)
            for sid, values in curve.per_item.items():
                if (g := group_of(sid)) is not None and metric in values:
                    sums[g].append(values[metric][k])
            rows.append([name, f"{p.knob:g}", *(_fmt(sum(sums[g]) / len(sums[g])) if sums[g] else "" for g in groups)])
    return ["method", "keep ratio", *groups], rows


def retention_table(curves: Mapping[str, Curve], metric: str, anchor: str
                    ) -> tuple[list[str], list[list[str]]] | None:
    """``metric`` at each keep ratio as a share of the uncompressed value (the anchor's keep-1.0 point):
    the figure behind claims such as "25 % of the tokens keep 95 % of the accuracy". ``None`` when the
    anchor has no keep-1.0 point or the metric is not higher-is-better."""
    ref = next((p.values.get(metric) for p in curves[anchor].points if p.knob == 1.0), None)
    if not ref or not curves[anchor].measures[metric].higher_is_better:
        return None
    ratios = sorted({p.knob for c in curves.values() for p in c.points}, reverse=True)
    rows = []
    for name, curve in curves.items():
        at = {p.knob: p.values[metric] / ref for p in curve.points}
        rows.append([name, *(f"{at[r]:.3f}" if r in at else "" for r in ratios)])
    return ["method", *(f"keep {r:g}" for r in ratios)], rows


def _bd_table(rows, rate: str = "tokens") -> tuple[list[str], list[list[str]]]:
    name = "BD-token-rate" if rate == "tokens" else f"BD-rate ({rate})"
    header = ["method", "metric", "BD-quality", f"overlap ({rate})", name, "overlap (metric)"]
    body = [[n, m, "no overlap" if q.value is None else f"{q.value:+.4f}", f"{q.overlap:.0%}",
             "no overlap" if r.value is None else f"{r.value:+.1f} %", f"{r.overlap:.0%}"] for n, m, q, r in rows]
    return header, body


def plot_curves(curves: Mapping[str, Curve], rate: str, metric: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, curve in curves.items():
        if rate in curve.measures and metric in curve.measures:
            ax.plot(curve.column(rate), curve.column(metric), marker="o", markersize=3, label=name)
    ref = next(iter(curves.values()))
    unit = ref.measures[rate].unit
    ax.set_xlabel(f"{rate} ({unit})" if unit else rate)
    ax.set_ylabel(metric)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _md_table(header, rows) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(r) + " |" for r in rows)]) + "\n"


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(curves: Mapping[str, Curve], out_dir: str | Path, title: str, anchor: str,
                 metrics: Sequence[str], rates: Sequence[str] = ("tokens",), description: str = "",
                 group_of: Callable[[str], str | None] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and one PNG per (rate, metric); returns their paths.

    ``group_of`` maps a sample id to its group (e.g. a question type): the report then adds a table of
    the first metric per group and operating point."""
    out_dir = Path(out_dir)
    any_curve = next(iter(curves.values()))
    rates = [r for r in rates if r in any_curve.measures]
    plots = {}
    for rate in rates:
        for metric in metrics:
            png = plot_curves(curves, rate, metric)
            path = out_dir / f"{metric}_vs_{rate}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png)
            plots[(rate, metric)] = (path, png)
    values = value_table(curves, [*rates, *metrics, "latency_s"])
    bd = _bd_table(bd_rows(curves, anchor, metrics))
    bd_more = {r: _bd_table(bd_rows(curves, anchor, metrics, rate=r), r) for r in rates if r != "tokens"}
    grouped = group_table(curves, metrics[0], group_of) if group_of else None
    if grouped and len(grouped[0]) == 2:  # no sample has a group
        grouped = None
    group_title = f"{metrics[0]} per group" if grouped else ""
    kept = retention_table(curves, metrics[0], anchor)
    kept_title = f"{metrics[0]} as a share of the uncompressed model's"
    kept_note = (f"Each cell is the method's {metrics[0]} at that keep ratio divided by the uncompressed model's "
                 f"({anchor} at keep 1, which runs every token); 0.95 or more meets a '95 % of {metrics[0]}' bar.")
    prov = any_curve.provenance
    versions = ", ".join(f"{k} {v}" for k, v in sorted(prov.get("packages", {}).items()))
    md = [f"# {title}\n", description + "\n" if description else "",
          f"Anchor for BD metrics: **{anchor}**. {BD_NOTE}\n", "## BD metrics against the anchor\n", _md_table(*bd),
          *(part for r, t in bd_more.items() for part in (f"\n## BD metrics against the anchor, {r} as the rate\n",
                                                          _md_table(*t))),
          *((f"\n## {kept_title}\n\n{kept_note}\n\n", _md_table(*kept)) if kept else ()),
          "\n## Values per keep ratio\n", _md_table(*values),
          *((f"\n## {group_title}\n", _md_table(*grouped)) if grouped else ()),
          "\n## Plots\n", *(f"![{m} vs {r}]({p.name})\n" for (r, m), (p, _) in plots.items()),
          f"\n## Provenance\n\ntokencodec {prov.get('tokencodec')} (commit {prov.get('git_commit')}), "
          f"{prov.get('date')}; seed {prov.get('seed')}; {versions}\n"]
    images = "".join(f'<figure><img alt="{html.escape(m)} vs {html.escape(r)}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(m)} vs {html.escape(r)}'
                     f"</figcaption></figure>" for (r, m), (_, png) in plots.items())
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}figure{{display:inline-block;margin:0.5em}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(description)}</p>
<h2>BD metrics against {html.escape(anchor)}</h2><p>{html.escape(BD_NOTE)}</p>{_html_table(*bd)}
{"".join(f"<h2>BD metrics against {html.escape(anchor)}, {html.escape(r)} as the rate</h2>{_html_table(*t)}"
         for r, t in bd_more.items())}
{f"<h2>{html.escape(kept_title)}</h2><p>{html.escape(kept_note)}</p>{_html_table(*kept)}" if kept else ""}
<h2>Plots</h2>{images}<h2>Values per keep ratio</h2>{_html_table(*values)}
{f"<h2>{html.escape(group_title)}</h2>{_html_table(*grouped)}" if grouped else ""}
<h2>Provenance</h2><p>tokencodec {html.escape(str(prov.get('tokencodec')))} (commit
{html.escape(str(prov.get('git_commit')))}), {html.escape(str(prov.get('date')))}; seed
{html.escape(str(prov.get('seed')))}; {html.escape(versions)}</p></body></html>
"""
    return {"markdown": write_text_atomic(out_dir / "report.md", "".join(md)),
            "html": write_text_atomic(out_dir / "report.html", page), **{f"{m}_vs_{r}": p for (r, m), (p, _) in
                                                                            plots.items()}}
