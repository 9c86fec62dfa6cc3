"""Re-render the figures of shipped study reports from their results files, without running anything again.

    python scripts/render_figures.py docs/studies              # every report.md below the folder
    python scripts/render_figures.py docs/studies/diagnostic-mllm --log-rate

For each ``report.md``, every figure it links as ``<metric>_vs_<rate>.png`` and ships is drawn again with the
current plotter (``bench.report.plots``: styles, units, axes, interval bands) from the results files
beside it, with the curves in the order of the study's pipelines (read from the files' provenance), so
each curve keeps the style it has in the report. The PNG files are replaced, and so are the same figures
inlined in ``report.html``; the reports' text and tables are left as they are.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import re
from pathlib import Path

from tokencodec.bench.report import plots
from tokencodec.bench.study import StudyError, parse_pipeline
from tokencodec.io import write_bytes_atomic, write_text_atomic
from tokencodec.rd import ResultsFileError, check_comparable, load_curve

# a caption may hold brackets (older reports wrote "['embedded', 'kodak']"): the link ends the line
FIGURE = re.compile(r"^!\[(?P<caption>.*)\]\((?P<name>(?P<metric>[^)/]+?)_vs_(?P<rate>[^)/]+)\.png)\)\s*$", re.M)


def study_order(folder: Path) -> list[str]:
    """The pipeline labels of the study that wrote ``folder``, in its order (empty when no file records it)."""
    for path in sorted(folder.glob("*.json")):
        try:
            study = json.loads(path.read_text())["provenance"]["config"]["study"]
        except (KeyError, TypeError, ValueError):
            continue
        try:
            entries = study.get("pipelines") or [  # the older layout: methods × keep ratios
                {"method": m["name"], "options": m.get("options") or {}, "keep_ratios": [1.0]}
                for m in study.get("methods", [])]
            return [parse_pipeline(p, str(path)).label for p in entries]
        except (StudyError, KeyError, TypeError):
            continue
    return []


def report_curves(folder: Path) -> dict:
    """The results files of the study in ``folder``, by label, in the study's pipeline order."""
    order = study_order(folder)
    found = {}
    for path in sorted(folder.glob("*.json")):
        try:
            curve = load_curve(path)
        except ResultsFileError:
            continue
        found[curve.name] = curve
    labels = [name for name in order if name in found] or sorted(found)
    return {name: found[name] for name in labels}


def render(folder: Path, log_rate: bool | None = None) -> list[Path]:
    """Re-render the figures ``folder/report.md`` links; returns the PNGs written."""
    md = (folder / "report.md").read_text()
    curves = report_curves(folder)
    if not curves:
        return []
    identity = check_comparable(curves, allow_mismatch=True)
    style = plots.styles(curves)
    written, pngs = [], {}
    for m in FIGURE.finditer(md):
        metric, rate = m["metric"], m["rate"]
        if not (folder / m["name"]).exists() or not any(metric in c.measures and rate in c.measures
                                                         for c in curves.values()):
            continue                       # only the figures the folder ships
        png = plots.plot_figure(curves, rate, metric, dataset=identity.label, style=style, log_rate=log_rate)
        written.append(write_bytes_atomic(folder / m["name"], png))
        pngs[m["caption"]] = png
    page = folder / "report.html"
    if page.exists() and pngs:
        def swap(match: re.Match) -> str:
            png = pngs.get(html.unescape(match["alt"]))
            if png is None:
                return match[0]
            return f'<img alt="{match["alt"]}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'

        text = re.sub(r'<img alt="(?P<alt>[^"]*)" src="data:image/png;base64,[^"]*">', swap, page.read_text())
        write_text_atomic(page, text)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", type=Path, nargs="+", help="study folders, or folders holding them")
    p.add_argument("--log-rate", dest="log_rate", action="store_true", default=None, help="log rate axes")
    p.add_argument("--linear-rate", dest="log_rate", action="store_false", help="linear rate axes")
    args = p.parse_args(argv)
    reports = sorted({r.parent for f in args.folders for r in ([f / "report.md"] if (f / "report.md").exists()
                                                                else f.rglob("report.md"))})
    for folder in reports:
        for path in render(folder, args.log_rate):
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
