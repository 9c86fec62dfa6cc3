"""Reports of curves (studies, token sweeps, codec sweeps) as sections, and the files written from them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tokencodec.bench.report import plots, render
from tokencodec.bench.report.sections import Figure, Heading, Paragraph, Provenance, Section, Table
from tokencodec.bench.report.tables import (
    BDRow,
    bd_note,
    bd_rows,
    bd_table,
    group_table,
    knob_header,
    retention_table,
    to_csv,
    value_table,
)
from tokencodec.io import write_bytes_atomic, write_text_atomic
from tokencodec.rd.comparable import DataIdentity, check_comparable
from tokencodec.rd.curve import Curve

VALUES_NOTE = ("Means over items; in brackets the 95 % percentile-bootstrap interval over items (1000 resamples, "
               "seed 0), to the digits it supports. Rates per pixel are pixel-weighted (total bits / total pixels) "
               "where the files record pixel counts. Timings have no interval (machine noise, not sampling).")


def provenance_section(curves: Mapping[str, Curve], identity: DataIdentity) -> Provenance:
    prov = next(iter(curves.values())).provenance if curves else {}
    commit = prov.get("git_commit")
    dirty = " with uncommitted changes" if prov.get("git_dirty") else ""
    items = [("tokencodec", f"{prov.get('tokencodec')} (commit {commit or 'unknown'}{dirty})"),
             ("date", str(prov.get("date"))), ("seed", str(prov.get("seed"))),
             ("data", str(identity) + (f", fingerprint {identity.fingerprint}" if identity.fingerprint else ""))]
    if prov.get("packages"):
        items.append(("packages", ", ".join(f"{k} {v}" for k, v in sorted(prov["packages"].items()))))
    if prov.get("libraries"):
        items.append(("libraries", ", ".join(f"{k} {v}" for k, v in sorted(prov["libraries"].items()))))
    return Provenance(tuple(items))


def data_notes(curves: Mapping[str, Curve]) -> list[Paragraph]:
    """Items left out because they could not be read, and items far outside the data's size range."""
    config = (next(iter(curves.values())).provenance or {}).get("config") or {} if curves else {}
    notes = []
    skipped = (config.get("data") or {}).get("skipped") if isinstance(config.get("data"), dict) else None
    if skipped:
        notes.append(Paragraph(f"Skipped ({len(skipped)} could not be read): "
                               + "; ".join(f"{k} ({v.split(':')[0]})" for k, v in skipped.items()) + "."))
    outliers = config.get("size_outliers")
    if outliers:
        notes.append(Paragraph("Far outside the data's size range (rates per pixel are pixel-weighted, so they do "
                               "not dominate): " + "; ".join(f"{k}: {v}" for k, v in outliers.items()) + "."))
    return notes


def figure_name(metric: str, rate: str) -> str:
    return f"{metric}_vs_{rate}.png"


def build_report(curves: Mapping[str, Curve], *, title: str, anchor: str, metrics: Sequence[str],
                 rates: Sequence[str], description: str = "", group_of: Callable[[str], str | None] | None = None,
                 allow_mismatch: bool = False, log_rate: bool | None = None) -> list[Section]:
    """The report as sections: BD tables against ``anchor`` per rate, the share of the uncompressed value,
    values per operating point, ``metrics[0]`` per group (``group_of`` maps a sample id to its group, e.g. a
    question type), one figure per (rate, metric) and the provenance. Curves measured on different data
    raise ``DataMismatchError`` unless ``allow_mismatch``."""
    if not curves:
        raise ValueError("a report needs at least one curve")
    if anchor not in curves:
        raise KeyError(f"anchor {anchor!r} is not among the curves: {', '.join(curves)}")
    if not metrics:
        raise ValueError("a report needs at least one metric")
    identity = check_comparable(curves, allow_mismatch=allow_mismatch)
    rates = [r for r in rates if r in curves[anchor].measures]
    style = plots.styles(curves)
    out: list[Section] = [Heading(title, 1)]
    if description:
        out.append(Paragraph(description))
    out.append(Paragraph(f"Data: **{identity}**. Anchor for BD metrics: **{anchor}**."))
    out += data_notes(curves)
    for rate in rates:
        header, rows = bd_table(bd_rows(curves, anchor, metrics, rate), show_anchor=False)
        out.append(Table(f"BD metrics against the anchor, {rate} as the rate", header, rows, bd_note(rate)))
    kept = retention_table(curves, metrics[0], anchor)
    if kept:
        out.append(Table(f"{metrics[0]} as a share of the uncompressed model's", *kept,
                         note=f"Each cell is the method's {metrics[0]} at that keep ratio divided by the uncompressed "
                              f"model's ({anchor} at keep 1, which runs every token); 0.95 or more meets a "
                              f"'95 % of {metrics[0]}' bar."))
    columns = [c for c in (*rates, *metrics, "latency_s") if any(c in cv.measures for cv in curves.values())]
    with_items = any(c.per_item for c in curves.values())
    out.append(Table(f"Values per {knob_header(curves)}", *value_table(curves, columns),
                     note=VALUES_NOTE if with_items else "No per-item values in these results files: no intervals."))
    if group_of:
        grouped = group_table(curves, metrics[0], group_of)
        if len(grouped[0]) > 2:  # some sample has a group
            out.append(Table(f"{metrics[0]} per group", *grouped))
    figures = []
    for rate in rates:
        for metric in metrics:
            if any(rate in c.measures and metric in c.measures for c in curves.values()):
                png = plots.plot_figure(curves, rate, metric, dataset=identity.label, style=style,
                                        log_rate=log_rate)
                caption = plots.default_title(rate, metric, identity.label)
                if plots.has_bands(curves, metric):
                    caption += "; shaded: 95 % bootstrap interval over items"
                figures.append(Figure(figure_name(metric, rate), png, caption))
    if figures:
        out += [Heading("Plots"), *figures]
    out.append(provenance_section(curves, identity))
    return out


def write_report(curves: Mapping[str, Curve], out_dir: str | Path, title: str, anchor: str,
                 metrics: Sequence[str], rates: Sequence[str] = ("tokens",), description: str = "",
                 group_of: Callable[[str], str | None] | None = None, allow_mismatch: bool = False,
                 log_rate: bool | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and one ``<metric>_vs_<rate>.png`` per (rate, metric);
    returns their paths keyed "markdown", "html" and "<metric>_vs_<rate>"."""
    sections = build_report(curves, title=title, anchor=anchor, metrics=metrics, rates=rates,
                            description=description, group_of=group_of, allow_mismatch=allow_mismatch,
                            log_rate=log_rate)
    out_dir = Path(out_dir)
    paths = render.write_markdown(sections, out_dir / "report.md")
    paths["html"] = render.write_html(sections, out_dir / "report.html", title)
    return paths


def codec_sections(curves: Mapping[str, Curve], anchor: str, metrics: Sequence[str] = ("psnr-rgb", "ms-ssim-rgb"),
                   rate: str = "bpp", title: str | None = None, allow_mismatch: bool = False,
                   log_rate: bool | None = None, rows: Sequence[BDRow] | None = None) -> tuple[Table, bytes]:
    """The BD table (with the anchor as a column, as ``bd.md``/``bd.csv`` stand alone) and the RD plot."""
    identity = check_comparable(curves, allow_mismatch=allow_mismatch)
    header, cells = bd_table(rows if rows is not None else bd_rows(curves, anchor, metrics, rate), show_anchor=True)
    table = Table(f"BD against {anchor}, {rate} as the rate", header, cells, bd_note(rate))
    label = str(identity) if identity.known else None
    png = plots.plot_panels(curves, rate, metrics, title=title or label, log_rate=log_rate)
    return table, png


def write_codec_report(curves: Mapping[str, Curve], out_dir: str | Path, anchor: str,
                       metrics: Sequence[str] = ("psnr-rgb", "ms-ssim-rgb"), rate: str = "bpp",
                       title: str | None = None, allow_mismatch: bool = False, log_rate: bool | None = None,
                       rows: Sequence[BDRow] | None = None) -> dict[str, Path]:
    """What ``tokencodec codecs`` writes: ``rd.png`` (one panel per metric), ``bd.md`` and ``bd.csv``
    (BD-rate, BD-quality, overlaps and status of every codec against ``anchor``). ``title`` defaults to the
    data set with its number of items; ``rows`` are BD rows already computed (``bd_rows``)."""
    if anchor not in curves:
        raise KeyError(f"anchor {anchor!r} is not among the curves: {', '.join(curves)}")
    table, png = codec_sections(curves, anchor, metrics, rate, title, allow_mismatch, log_rate, rows)
    out_dir = Path(out_dir)
    return {"plot": write_bytes_atomic(out_dir / "rd.png", png),
            "markdown": write_text_atomic(out_dir / "bd.md", render.to_markdown([table])),
            "csv": write_text_atomic(out_dir / "bd.csv", to_csv(table.header, table.rows))}


__all__ = ["build_report", "codec_sections", "figure_name", "provenance_section", "write_codec_report",
           "write_report"]
