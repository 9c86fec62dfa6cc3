"""The ``tokencodec`` command."""

from __future__ import annotations

import os
import re
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokencodec import __version__

app = typer.Typer(help="tokencodec: one rate-distortion toolkit for pixel codecs and visual tokens.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console()


def _fail(message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from tokencodec.bench.codec_sweep import SweepError
    from tokencodec.codecs import CodecError
    from tokencodec.data import DatasetError, ImageReadError
    from tokencodec.rd.results import ResultsFileError
    from tokencodec.registry import UnknownNameError

    return (SweepError, CodecError, DatasetError, ImageReadError, ResultsFileError, UnknownNameError,
            KeyError, ValueError)


def parse_qualities(text: str | None) -> list[int] | None:
    """"5,10,20" or a range "5:95:5" (inclusive)."""
    if not text:
        return None
    try:
        if ":" in text:
            start, stop, *step = (int(x) for x in text.split(":"))
            return list(range(start, stop + 1, step[0] if step else 1))
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise _fail(f"--qualities {text!r}: use a list such as 5,50,95 or a range such as 5:95:5") from None


@app.command()
def codecs(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="embedded, kodak, or a folder of images")]
    = "embedded",
    codec: Annotated[list[str] | None, typer.Option("--codec", "-c", help="codec to run (repeat); default all")]
    = None,
    qualities: Annotated[str | None, typer.Option("--qualities", "-q",
                         help="qualities for every codec: 5,50,95 or 5:95:5; default each codec's own")] = None,
    anchor: Annotated[str, typer.Option(help="anchor codec of the BD-rate table")] = "jpeg",
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("results/codecs"),
    workers: Annotated[int, typer.Option("--workers", "-j", help="parallel processes")] = os.cpu_count() or 1,
    limit: Annotated[int | None, typer.Option(help="use only the first N images")] = None,
    list_codecs: Annotated[bool, typer.Option("--list", help="list the codecs and their quality ranges")] = False,
) -> None:
    """Benchmark pixel codecs: RD curves (results JSON per codec), an RD plot and a BD-rate table."""
    from tokencodec.bench.codec_sweep import plan_sweep, run_codec_sweep
    from tokencodec.bench.plot import plot_rd
    from tokencodec.bench.report import bd_table, to_csv, to_markdown
    from tokencodec.codecs import CODECS, get_codec
    from tokencodec.data import load_dataset
    from tokencodec.io import write_text_atomic

    if list_codecs:
        table = Table("codec", "quality range", "meaning", "default qualities", "libraries")
        for name in CODECS:
            c = get_codec(name)
            table.add_row(name, f"{c.quality_range[0]}–{c.quality_range[1]}", c.quality_meaning,
                          ",".join(map(str, c.default_qualities)),
                          ", ".join(f"{k} {v}" for k, v in c.versions().items()))
        console.print(table)
        return
    names = codec or CODECS.names()
    start = time.perf_counter()
    try:
        plans = plan_sweep(names, parse_qualities(qualities))
        if anchor not in names:
            raise _fail(f"anchor {anchor!r} is not among the codecs run: {', '.join(names)}")
        items = load_dataset(dataset, limit)
        console.print(f"{len(items)} images from [bold]{dataset}[/], codecs: {', '.join(names)}")
        with Progress(TextColumn("coding"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            task = progress.add_task("coding", total=None)
            curves = run_codec_sweep(items, plans, out, workers=workers,
                                     config={"dataset": dataset, "limit": limit},
                                     on_progress=lambda d, t: progress.update(task, completed=d, total=t))
        rows = bd_table(curves, anchor)
    except _user_errors() as err:
        raise _fail(str(err)) from None
    plot_rd(list(curves.values()), out / "rd.png", title=f"{dataset} ({len(items)} images)")
    write_text_atomic(out / "bd.md", to_markdown(rows))
    write_text_atomic(out / "bd.csv", to_csv(rows))
    _print_bd(rows, f"BD against {anchor} (PCHIP)")
    console.print(f"results: {out}/<codec>.json, plot: {out / 'rd.png'}, BD table: {out / 'bd.md'}, "
                  f"{out / 'bd.csv'}  ({time.perf_counter() - start:.1f} s)")


def _print_bd(rows, title: str) -> None:
    table = Table("test", "metric", "BD-rate", "BD-quality", "overlap", "status", title=title)
    for row in rows:
        table.add_row(row.test, row.metric, str(row.bd_rate), str(row.bd_quality),
                      f"{row.bd_rate.overlap:.0%}", row.bd_rate.status)
    console.print(table)


@app.command()
def bd(
    anchor: Annotated[Path, typer.Argument(help="results file of the anchor (CompressAI layout accepted)")],
    test: Annotated[Path, typer.Argument(help="results file of the method under test")],
    metric: Annotated[str, typer.Option(help="quality measure, e.g. psnr-rgb, ms-ssim-rgb, accuracy")]
    = "psnr-rgb",
    rate: Annotated[str, typer.Option(help="rate measure, e.g. bpp, tokens, flops")] = "bpp",
    method: Annotated[str, typer.Option(help="interpolation: pchip or akima")] = "pchip",
    linear_rate: Annotated[bool, typer.Option(help="linear rate axis (token counts)")] = False,
    monotonic: Annotated[bool, typer.Option(help="fit monotonic curves first (noisy data)")] = False,
) -> None:
    """BD-rate and BD-quality of TEST against ANCHOR from any two results files."""
    from tokencodec.rd import BDOverlapWarning, bd_quality, bd_rate, load_curve

    try:
        a, b = load_curve(anchor), load_curve(test)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BDOverlapWarning)
            kw = dict(method=method, linear_rate=linear_rate, monotonic=monotonic)
            r = bd_rate(a, b, rate, metric, **kw)
            q = bd_quality(a, b, rate, metric, **kw)
    except _user_errors() as err:
        raise _fail(str(err)) from None
    console.print(f"{b.name} vs {a.name} on {metric} over {rate} ({method}"
                  f"{', linear rate' if linear_rate else ''}{', monotonic' if monotonic else ''}):")
    console.print(f"  BD-rate    {r}" + (f"  ({r.absolute:+.4g} {rate})" if r.absolute is not None else ""))
    console.print(f"  BD-quality {q}")
    console.print(f"  overlap    {r.overlap:.0%} of the {metric} range, {q.overlap:.0%} of the {rate} range"
                  + ("  [yellow](below 75 %)[/]" if min(r.overlap, q.overlap) < 0.75 else ""))


@app.command()
def plot(
    files: Annotated[list[Path], typer.Argument(help="results files")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write")] = Path("rd.png"),
    rate: Annotated[str, typer.Option(help="rate measure on x")] = "bpp",
    metric: Annotated[list[str] | None, typer.Option(help="quality measure (repeat for panels)")] = None,
) -> None:
    """RD plot of any results files."""
    from tokencodec.bench.plot import plot_rd
    from tokencodec.rd import load_curve

    try:
        curves = [load_curve(f) for f in files]
        path = plot_rd(curves, out, rate=rate, metrics=metric or ("psnr-rgb", "ms-ssim-rgb"))
    except _user_errors() as err:
        raise _fail(str(err)) from None
    console.print(f"wrote {path}")


@app.command()
def methods(
    matrix: Annotated[bool, typer.Option("--matrix", help="print the method × adapter support matrix (Markdown)")]
    = False,
) -> None:
    """List the token-compression methods: where each acts, what guides it, its knob and needs."""
    from tokencodec.models.support import matrix_markdown
    from tokencodec.tokens.compress import METHODS

    if matrix:
        print(matrix_markdown(), end="")
        return
    table = Table("method", "acts", "guided by", "knob", "needs", "without CLS", "paper")
    for name in METHODS:
        m = METHODS.get(name)
        no_cls = (m.cls_fallback or "error: needs a CLS token") if m.needs_cls else "works as is"
        arxiv = re.search(r"arXiv:? ?(\d{4}\.\d{4,5})", m.paper)
        table.add_row(name, m.stage, m.guidance, m.knob, ", ".join(m.needs) or "features only", no_cls,
                      f"arXiv {arxiv.group(1)}" if arxiv else m.paper[:40])
    console.print(table)


@app.command()
def tokens(
    study: Annotated[Path, typer.Argument(help="a study YAML file (see studies/)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="output folder; default results/tokens/NAME")]
    = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", help="override the study's data set")] = None,
    limit: Annotated[int | None, typer.Option(help="use only the first N images or samples")] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="keep encoder outputs on disk for later runs")] = None,
) -> None:
    """Run a token study: methods × keep ratios on an observer → results files, plots, BD tables, HTML report."""
    from tokencodec.bench.observers import OBSERVERS
    from tokencodec.bench.study import StudyError, load_study
    from tokencodec.bench.token_report import write_report
    from tokencodec.bench.token_sweep import EncodingCache, run_token_sweep
    from tokencodec.tokens.compress import BudgetError

    start = time.perf_counter()
    try:
        spec = load_study(study)
        options = {k: v for k, v in spec.observer.items() if k != "name"}
        observer = OBSERVERS.get(spec.observer["name"])(**options)
        data = dict(spec.data, **({"dataset": dataset} if dataset else {}), **({"limit": limit} if limit else {}))
        samples = observer.samples(**data)
        out = out or Path("results/tokens") / spec.name
        console.print(f"{len(samples)} samples on [bold]{observer.name}[/], methods: "
                      f"{', '.join(m.label for m in spec.methods)}, keep ratios {spec.keep_ratios}")
        with Progress(TextColumn("samples"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            task = progress.add_task("samples", total=len(samples))
            curves = run_token_sweep(observer, samples, spec.methods, spec.keep_ratios, out, seed=spec.seed,
                                     cache=EncodingCache(observer, cache_dir),
                                     config={"study": spec.to_json(), "data": data},
                                     on_progress=lambda d, t: progress.update(task, completed=d))
        paths = write_report(curves, out, f"Token study: {spec.name}", spec.anchor,
                             spec.metrics or list(observer.measures), description=spec.description,
                             rates=[r for r in ("tokens", "flops") if r in observer.rates],
                             group_of=observer.group)
    except (StudyError, BudgetError, *_user_errors()) as err:
        raise _fail(str(err)) from None
    console.print(f"results: {out}/<method>.json; report: {paths['html']} and {paths['markdown']} "
                  f"({time.perf_counter() - start:.1f} s)")


@app.command()
def version() -> None:
    """Versions of tokencodec and of the libraries behind its numbers."""
    from tokencodec.codecs import CODECS, get_codec
    from tokencodec.provenance import package_versions

    console.print(f"tokencodec {__version__}")
    for name, v in package_versions().items():
        console.print(f"  {name} {v}")
    for name in CODECS:
        for lib, v in get_codec(name).versions().items():
            console.print(f"  {lib} {v} ({name})")


def main() -> None:  # python -m tokencodec
    app()
