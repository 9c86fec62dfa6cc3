"""The ``tokencodec`` command."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from tokencodec import __version__
from tokencodec.cli_output import error, install_warning_format, note, quiet_libraries, warning
from tokencodec.cli_output import out as console
from tokencodec.cli_output import progress as _progress

# rich_markup_mode=None: click's plain help (TEXT, INTEGER; flags without a type), which reads like any CLI
app = typer.Typer(help="tokencodec: one rate-distortion toolkit for pixel codecs and visual tokens.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
EXIT_USER, EXIT_FAILED, EXIT_NO_OVERLAP = 2, 1, 3
ON_ERROR_HELP = "an image that cannot be read: skip it (named in the results and the summary) or stop"
QUIET_HELP = "no progress bar (it goes to stderr; results go to stdout)"
WAIT_HELP = "when another process writes the output folder, wait for it instead of stopping"


@app.callback()
def _setup() -> None:
    """Before every command: warnings on one line, third-party progress bars and info logs off."""
    install_warning_format()
    quiet_libraries()


def _fail(message: str) -> typer.Exit:
    error(message)
    return typer.Exit(code=2)


def _on_error(value: str) -> str:
    from tokencodec.data import ON_ERROR

    if value not in ON_ERROR:
        raise _fail(f"--on-error {value!r}: allowed {', '.join(ON_ERROR)}")
    return value


def _skipped_text(skipped: dict[str, str]) -> str:
    if not skipped:
        return ""
    shown = ", ".join(f"{name} ({why.split(':')[0]})" for name, why in list(skipped.items())[:5])
    return f"; {len(skipped)} skipped: {shown}" + (" …" if len(skipped) > 5 else "")


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (one line, exit code 2); anything else is a bug and keeps its traceback."""
    from tokencodec.bench.lock import FolderLockedError
    from tokencodec.bench.study import StudyError
    from tokencodec.codecs import CodecError
    from tokencodec.data import DatasetError, ImageReadError
    from tokencodec.io import InputPathError, OutputPathError
    from tokencodec.observers import ObserverOptionError
    from tokencodec.pipeline import PipelineError
    from tokencodec.rd.results import ResultsFileError
    from tokencodec.registry import UnknownNameError
    from tokencodec.tokens.compress import BudgetError

    errors: list[type[BaseException]] = [StudyError, CodecError, DatasetError, ImageReadError, ResultsFileError,
                                         UnknownNameError, PipelineError, BudgetError, ObserverOptionError,
                                         OutputPathError, InputPathError, FolderLockedError]
    try:
        from tokencodec.tokens.compress.base import MethodOptionError
        errors.append(MethodOptionError)
    except ImportError:
        pass
    try:
        from tokencodec.rd.comparable import DataMismatchError
        errors.append(DataMismatchError)
    except ImportError:
        pass
    return tuple(errors)


def parse_qualities(text: str | None) -> list[int] | None:
    """"5,10,20" or an inclusive range "5:95:5"; reversed, empty or malformed ranges are refused."""
    if not text:
        return None
    usage = "use a list such as 5,50,95 or an increasing range start:stop[:step] such as 5:95:5"
    try:
        if ":" in text:
            start, stop, *step = (int(x) for x in text.split(":"))
            if len(step) > 1 or (step and step[0] < 1) or stop < start:
                raise ValueError
            return list(range(start, stop + 1, step[0] if step else 1))
        values = [int(x) for x in text.split(",") if x.strip()]
        if not values:
            raise ValueError
        return values
    except ValueError:
        raise _fail(f"--qualities {text!r}: {usage}") from None


def _print_table(header: list[str], rows: list[list[str]], title: str = "") -> None:
    """A rich table on a terminal; complete tab-separated lines when piped (nothing cut at 80 columns)."""
    if console.is_terminal:
        table = Table(*header, title=title or None)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    if title:
        print(f"# {title}")
    for line in [header, *rows]:
        print("\t".join(line))


@app.command()
def codecs(
    dataset: Annotated[str, typer.Option("--dataset", "-d", metavar="NAME|DIR",
            help="embedded, kodak, or a folder of images")]
    = "embedded",
    codec: Annotated[list[str] | None, typer.Option("--codec", "-c", metavar="CODEC",
            help="codec to run (repeat; a plug-in: its entry point or module:Class); default all")]
    = None,
    qualities: Annotated[str | None, typer.Option("--qualities", "-q", metavar="LIST|RANGE",
                         help="qualities for every codec: 5,50,95 or 5:95:5; default each codec's own")] = None,
    anchor: Annotated[str, typer.Option(metavar="CODEC", help="anchor codec of the BD-rate table")] = "jpeg",
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="output folder")] = Path("results/codecs"),
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, metavar="N",
            help="parallel processes")] = os.cpu_count() or 1,
    limit: Annotated[int | None, typer.Option(min=1, metavar="N", help="use only the first N images")] = None,
    list_codecs: Annotated[bool, typer.Option("--list", help="list the codecs (image and video) and their "
                                              "quality ranges")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (the list, or the run's summary and BD rows)")]
    = False,
    on_error: Annotated[str, typer.Option(metavar="skip|stop", help=ON_ERROR_HELP)] = "skip",
    quiet: Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)] = False,
    wait: Annotated[bool, typer.Option("--wait", help=WAIT_HELP)] = False,
) -> None:
    """Benchmark pixel codecs on human metrics: RD curves (results JSON per codec), an RD plot, BD-rate tables."""
    from tokencodec.bench.engine import SweepError, run_sweep
    from tokencodec.bench.executors import make_executor
    from tokencodec.bench.lock import folder_lock
    from tokencodec.codecs import CODECS, plain_codecs
    from tokencodec.data import read_errors
    from tokencodec.io import check_writable_folder
    from tokencodec.observers import ObserverSpec, observer_for
    from tokencodec.pipeline import PipelineSpec

    if list_codecs:
        _list_codecs(as_json)
        return
    names = codec or plain_codecs()          # machine-guided variants only when asked for by name
    start = time.perf_counter()
    try:
        _on_error(on_error)
        chosen = parse_qualities(qualities)
        specs = [PipelineSpec(codec=n, qualities=tuple(chosen or CODECS.get(n).default_qualities)) for n in names
                 if n in CODECS or _unknown_codec(n)]
        for spec in specs:
            spec.check()  # every codec and quality before any image is read
        if anchor not in names:
            raise _fail(f"anchor {anchor!r} is not among the codecs run: {', '.join(names)}")
        check_writable_folder(out)
        observer = ObserverSpec("human")
        data = {"dataset": dataset, **({"limit": limit} if limit else {})}
        with folder_lock(out, wait=wait):
            with read_errors(on_error) as skipped:
                samples = observer_for(observer).samples(**data)
            note(f"{len(samples)} images from {dataset}{_skipped_text(skipped)}; codecs: {', '.join(names)}")
            executor = make_executor("process" if workers > 1 and len(samples) > 1 else "serial", workers)
            with _progress("images", quiet) as update:
                curves = run_sweep(observer, samples, specs, out, executor=executor, data=data,
                                   config={"dataset": dataset, "limit": limit}, on_progress=update, skipped=skipped)
            from tokencodec.bench.report import bd_rows, write_codec_report
            from tokencodec.bench.report.tables import bd_table

            rows = bd_rows(curves, anchor, ("psnr-rgb", "ms-ssim-rgb"), "bpp")
            paths = write_codec_report(curves, out, anchor, rows=rows)
    except SweepError as err:
        error(f"failed: {err}")
        raise typer.Exit(code=EXIT_FAILED) from None
    except _user_errors() as err:
        raise _fail(str(err)) from None
    if as_json:
        print(json.dumps({"images": len(samples), "skipped": skipped, "anchor": anchor,
                          "results": {n: str(out / f"{n}.json") for n in curves},
                          "report": {k: str(v) for k, v in paths.items()}, "bd": [r.to_json() for r in rows],
                          "seconds": round(time.perf_counter() - start, 3)}, indent=2))
        return
    header, cells = bd_table(rows, show_anchor=True)
    _print_table(header, cells, title=f"BD against {anchor}")
    note(f"results: {out}/<codec>.json; report: {', '.join(str(p) for p in paths.values())} "
         f"({time.perf_counter() - start:.1f} s)")


def _list_codecs(as_json: bool) -> None:
    """Image and video codecs with their kind, quality ranges and library versions."""
    from tokencodec.codecs import CODECS, get_codec
    from tokencodec.codecs.video import VIDEO_CODECS, get_video_codec

    rows = []
    for kind, registry, build in (("image", CODECS, get_codec), ("video", VIDEO_CODECS, get_video_codec)):
        for name in registry:
            c = build(name)
            rows.append({"codec": name, "kind": kind, "quality_range": list(c.quality_range),
                         "meaning": c.quality_meaning, "default_qualities": list(c.default_qualities),
                         "libraries": c.versions()})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _print_table(["codec", "kind", "quality range", "meaning", "default qualities", "libraries"],
                 [[r["codec"], r["kind"], "{}-{}".format(*r["quality_range"]), r["meaning"],
                   ",".join(map(str, r["default_qualities"])),
                   ", ".join(f"{k} {v}" for k, v in r["libraries"].items())] for r in rows])


def _unknown_codec(name: str) -> bool:
    from tokencodec.codecs import CODECS

    raise _fail(f"unknown codec {name!r}; known: {', '.join(CODECS.names())}")


@app.command()
def bd(
    anchor: Annotated[Path, typer.Argument(help="results file of the anchor (CompressAI layout accepted)")],
    test: Annotated[Path, typer.Argument(help="results file of the method under test")],
    metric: Annotated[str, typer.Option(help="quality measure, e.g. psnr-rgb, ms-ssim-rgb, accuracy")]
    = "psnr-rgb",
    rate: Annotated[str, typer.Option(help="rate measure, e.g. bpp, tokens, flops")] = "bpp",
    method: Annotated[str, typer.Option(help="interpolation: pchip or akima")] = "pchip",
    linear_rate: Annotated[bool | None, typer.Option("--linear-rate/--log-rate",
            help="rate axis; default: log for bpp, bits, bytes; linear for counts (tokens, flops, ...)")]
    = None,
    monotonic: Annotated[bool | None, typer.Option("--monotonic/--no-monotonic",
            help="fit monotonic curves first; default: yes for machine metrics (accuracy, agreement, kl, ...), "
                 "no for psnr, ms-ssim")]
    = None,
    allow_mismatch: Annotated[bool, typer.Option("--allow-mismatch",
            help="compare curves measured on different data (a warning instead of an error)")] = False,
    resamples: Annotated[int, typer.Option(min=0, metavar="N",
            help="paired-bootstrap resamples over the items both files share, for the 95 % interval (0: none)")]
    = 200,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """BD-rate and BD-quality of TEST against ANCHOR from any two results files, with paired-bootstrap intervals
    when both files keep per-item values.

    Exit codes: 0 both BD values printed; 2 bad input, or the files were measured on different data (see
    --allow-mismatch); 3 a BD value is withheld: the curves overlap on less than 75 % of a range (low-overlap)
    or not at all (no-overlap). The same status rule as bd_rate(...).status and reports.
    """
    from tokencodec.bench.report.tables import bd_row
    from tokencodec.rd import DataMismatchWarning, check_comparable, load_curve

    try:
        a, b = load_curve(anchor), load_curve(test)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataMismatchWarning)
            check_comparable({str(anchor): a, str(test): b}, allow_mismatch=allow_mismatch)
        row = bd_row(a, b, metric, rate, linear_rate=linear_rate, monotonic=monotonic, method=method,
                     interval=resamples or False, seed=seed)
    except _user_errors() as err:
        raise _fail(str(err)) from None
    for w in caught:
        if issubclass(w.category, DataMismatchWarning):
            warning(w.message)
    if row.error:
        raise _fail(row.error)
    r, q = row.bd_rate, row.bd_quality
    if as_json:
        print(json.dumps({"anchor_file": str(anchor), "test_file": str(test), **row.to_json()}, indent=2))
    else:
        low = min(r.overlap, q.overlap) < 0.75
        console.print(f"{b.name} vs {a.name} on {metric} over {rate} ({row.fit}):", markup=False)
        console.print(f"  BD-rate    {r}" + (f"  ({r.absolute:+.4g} {rate})" if r.absolute is not None and r.shown
                                             else ""), markup=False)
        console.print(f"  BD-quality {q}", markup=False)
        console.print(f"  overlap    {r.overlap:.0%} of the {metric} range, {q.overlap:.0%} of the {rate} range"
                      + ("  (below 75 %: that value is withheld)" if low else ""), markup=False)
        console.print(f"  status     {row.status}" + (f"; {row.noise}" if row.noise else ""), markup=False)
    if row.status != "ok":
        raise typer.Exit(code=EXIT_NO_OVERLAP)


@app.command()
def plot(
    files: Annotated[list[Path], typer.Argument(help="results files")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write")] = Path("rd.png"),
    rate: Annotated[str, typer.Option(help="rate measure on x")] = "bpp",
    metric: Annotated[list[str] | None, typer.Option(help="quality measure (repeat for panels)")] = None,
    title: Annotated[str | None, typer.Option(help="figure title; default: the data set")] = None,
    log_rate: Annotated[bool | None, typer.Option("--log-rate/--linear-rate",
            help="rate axis; default: log for bit rates (bpp, bits, bytes), linear for counts (tokens, flops)")]
    = None,
    allow_mismatch: Annotated[bool, typer.Option("--allow-mismatch",
            help="plot curves measured on different data (a warning instead of an error)")] = False,
) -> None:
    """RD plot of any results files, with 95 % bootstrap bands where files keep per-item values (exit code 2: bad
    input, or files measured on different data)."""
    from tokencodec.bench.report.plots import plot_panels
    from tokencodec.io import check_writable_file, write_bytes_atomic
    from tokencodec.rd import DataMismatchWarning, check_comparable, load_curve

    try:
        check_writable_file(out)
        files_curves = {str(f): load_curve(f) for f in files}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DataMismatchWarning)
            identity = check_comparable(files_curves, allow_mismatch=allow_mismatch)
        curves = {}
        for name, curve in files_curves.items():
            curves[curve.name if curve.name not in curves else f"{curve.name} ({name})"] = curve
        png = plot_panels(curves, rate, metric or ("psnr-rgb", "ms-ssim-rgb"),
                          title=title or (str(identity) if identity.known else None), log_rate=log_rate)
        path = write_bytes_atomic(out, png)
    except (ValueError, *_user_errors()) as err:
        raise _fail(str(err)) from None
    for w in caught:
        if issubclass(w.category, DataMismatchWarning):
            warning(w.message)
    note(f"wrote {path}")


@app.command()
def methods(
    matrix: Annotated[bool, typer.Option("--matrix", help="print the method × adapter support matrix (Markdown)")]
    = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List the token-compression methods: where each acts, what guides it, its knob and needs."""
    from tokencodec.adapters.support import matrix_markdown, support_matrix
    from tokencodec.tokens.compress import METHODS

    if matrix:
        print(json.dumps(support_matrix(), indent=2) if as_json else matrix_markdown(), end="\n" if as_json else "")
        return
    rows = []
    for name in METHODS:
        m = METHODS.get(name)
        no_cls = (m.cls_fallback or "error: needs a CLS token") if m.needs_cls else "works as is"
        arxiv = re.search(r"arXiv:? ?(\d{4}\.\d{4,5})", m.paper)
        rows.append({"method": name, "stage": m.stage, "guidance": m.guidance, "knob": m.knob,
                     "needs": list(m.needs), "without_cls": no_cls, "paper": m.paper,
                     "arxiv": arxiv.group(1) if arxiv else None})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _print_table(["method", "acts", "guided by", "knob", "needs", "without CLS", "paper"],
                 [[r["method"], r["stage"], r["guidance"], r["knob"], ", ".join(r["needs"]) or "features only",
                   r["without_cls"], f"arXiv {r['arxiv']}" if r["arxiv"] else r["paper"]] for r in rows])


@app.command()
def study(
    study_file: Annotated[Path, typer.Argument(metavar="STUDY", help="a study YAML file (see studies/)")],
    out: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR",
            help="output folder; default results/studies/NAME")]
    = None,
    dataset: Annotated[str | None, typer.Option("--dataset", "-d", metavar="NAME|DIR",
            help="override the study's data set")] = None,
    limit: Annotated[int | None, typer.Option(min=1, metavar="N",
            help="use only the first N images or samples")] = None,
    executor: Annotated[str, typer.Option(metavar="NAME", help="serial, process or ray")] = "serial",
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, metavar="N", help="processes or Ray workers")] = 2,
    address: Annotated[str | None, typer.Option(metavar="HOST:PORT",
            help="Ray: join the cluster at this address (default: local)")]
    = None,
    cache_dir: Annotated[Path | None, typer.Option(metavar="DIR",
            help="keep per-sample encodings on disk for later runs")] = None,
    on_error: Annotated[str, typer.Option(metavar="skip|stop", help=ON_ERROR_HELP)] = "skip",
    quiet: Annotated[bool, typer.Option("--quiet", help=QUIET_HELP)] = False,
    wait: Annotated[bool, typer.Option("--wait", help=WAIT_HELP)] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the run's summary as JSON")] = False,
) -> None:
    """Run a study: pipelines (codecs, token methods, chains) × knobs judged by one observer → results, report.

    Methods, codecs and observers may be plug-ins: an entry point of tokencodec.methods, tokencodec.codecs or
    tokencodec.observers, or module:Class. Checked before any data or model loads: the file, the output folder,
    the observer's device and weights (HF_HUB_OFFLINE respected)."""
    from tokencodec.bench.engine import SweepError
    from tokencodec.bench.executors import make_executor
    from tokencodec.bench.study import check_machine, load_study, run_study
    from tokencodec.io import check_writable_folder

    try:
        _on_error(on_error)
        spec = load_study(study_file)
        check_machine(spec, str(study_file))
        folder = check_writable_folder(out or Path("results/studies") / spec.name)
        overrides = {**({"dataset": dataset} if dataset else {}), **({"limit": limit} if limit else {})}
        runner = make_executor(executor, workers, address)
        note(f"study {spec.name} on {spec.observer.name}: {', '.join(p.label for p in spec.pipelines)}")
        with _progress("samples", quiet) as update:
            result = run_study(spec, folder, executor=runner, cache_dir=cache_dir, data_overrides=overrides,
                               on_progress=update, on_error=on_error, wait_lock=wait)
    except SweepError as err:
        error(f"failed: {err}")
        raise typer.Exit(code=EXIT_FAILED) from None
    except (ImportError, *_user_errors()) as err:
        raise _fail(str(err)) from None
    paths = result["paths"]
    if as_json:
        from tokencodec.bench.engine import file_name

        print(json.dumps({"study": spec.name, "observer": spec.observer.name, "samples": result["samples"],
                          "skipped": result["skipped"], "out": str(result["out"]),
                          "results": {label: str(result["out"] / f"{file_name(label)}.json")
                                      for label in result["curves"]},
                          "report": {k: str(v) for k, v in paths.items()},
                          "seconds": round(result["seconds"], 3)}, indent=2))
        return
    note(f"{result['samples']} samples{_skipped_text(result['skipped'])}; results: {result['out']}/<pipeline>.json; "
         f"report: {paths.get('html')} and {paths.get('markdown')} ({result['seconds']:.1f} s)")


app.command("tokens", help="Alias of 'study' (kept for older scripts).")(study)


def _split_errors() -> tuple[type[BaseException], ...]:
    from tokencodec.entropy import QuantizerError, TokenBitstreamError
    from tokencodec.split import SplitError

    return (SplitError, TokenBitstreamError, QuantizerError, FileNotFoundError, *_user_errors())


@app.command()
def encode(
    image: Annotated[Path, typer.Argument(help="an image file (resized to the observer's input if needed)")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="FILE.tcb", help="token bitstream to write")],
    observer: Annotated[str, typer.Option(help="the model whose vision side runs here")] = "diagnostic-mllm",
    method: Annotated[str | None, typer.Option(help="pre-LLM method that keeps the tokens [default: the "
                                                    "observer's: rdo, divprune, random]")] = None,
    keep: Annotated[int | None, typer.Option(min=1, help="tokens kept [default: the observer's]")] = None,
    step: Annotated[float | None, typer.Option(help="quantiser step: the shipped profile step-<STEP>")] = None,
    profile: Annotated[str | None, typer.Option(help="a shipped profile by name instead (e.g. vq-1024) "
                                                     "[default: the observer's]")] = None,
) -> None:
    """Split inference, sender: run the vision side on IMAGE and write its tokens as a bitstream."""
    from tokencodec.io import check_input_file, check_writable_file
    from tokencodec.split import encode_image, input_size, load_image

    try:
        check_input_file(image, "image")
        check_writable_file(out)                          # before the model runs, not after
        enc = encode_image(load_image(image, input_size(observer)), observer, method, keep,
                           profile or (f"step-{step:g}" if step is not None else None))
    except (ImportError, *_split_errors()) as err:
        raise _fail(str(err)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(enc.data)
    tmp.replace(out)                                  # atomic: a file is whole or absent
    from tokencodec.entropy import read_header

    kept = read_header(enc.data)["tokens"]
    console.print(f"{out}: {kept} tokens, {len(enc.data)} bytes (header {enc.header_bits // 8}, positions "
                  f"{enc.position_bits // 8}, payload {enc.payload_bits // 8}; ideal payload "
                  f"{enc.ideal_payload_bits / 8:.1f})", highlight=False)


@app.command()
def decode(
    file: Annotated[Path, typer.Argument(metavar="FILE.tcb", help="a token bitstream")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    tokens: Annotated[Path | None, typer.Option(metavar="OUT.safetensors",
            help="write the decoded tokens and positions")] = None,
) -> None:
    """Print a token bitstream's header and bit budget; optionally write its tokens (safetensors)."""
    from tokencodec.io import check_input_file, check_writable_file
    from tokencodec.split import decode_file

    try:
        check_input_file(file, "token bitstream")
        if tokens is not None:
            check_writable_file(tokens, "--tokens")
        head, decoded, profile = decode_file(file)
    except (ImportError, *_split_errors()) as err:
        raise _fail(str(err)) from None
    info = {**head, "profile_file": str(profile), "dim": int(decoded.features.shape[1])}
    if tokens is not None:
        from safetensors.numpy import save_file

        save_file({"features": decoded.features, "positions": decoded.positions.astype(np.int64)}, str(tokens),
                  metadata={"grid": json.dumps(list(decoded.grid)), "frames": str(decoded.frames)})
        info["tokens_file"] = str(tokens)
    if as_json:
        print(json.dumps(info))
        return
    for key, value in info.items():
        console.print(f"{key}: {value}", markup=False)


@app.command()
def classify(
    file: Annotated[Path, typer.Argument(metavar="FILE.tcb",
                                         help="a token bitstream of EfficientNet-Lite0 or fashion-vit")],
    top: Annotated[int, typer.Option(min=1, max=1000, help="classes to print")] = 5,
) -> None:
    """Split inference, receiver: EfficientNet-Lite0 or the Fashion-MNIST ViT classifies from the bitstream alone."""
    from tokencodec.io import check_input_file
    from tokencodec.split import classify as classify_from

    try:
        check_input_file(file, "token bitstream")
        for name, p in classify_from(file, top):
            console.print(f"{p:.3f}  {name}", highlight=False)
    except (ImportError, *_split_errors()) as err:
        raise _fail(str(err)) from None


@app.command()
def answer(
    file: Annotated[Path, typer.Argument(metavar="FILE.tcb", help="a token bitstream of the diagnostic MLLM")],
    question: Annotated[str, typer.Argument(help='e.g. "what colour is the circle?"')],
) -> None:
    """Split inference, receiver: the diagnostic MLLM answers QUESTION from the bitstream alone."""
    from tokencodec.io import check_input_file
    from tokencodec.split import answer as answer_from

    try:
        check_input_file(file, "token bitstream")
        console.print(answer_from(file, question), markup=False)
    except (ImportError, *_split_errors()) as err:
        raise _fail(str(err)) from None


@app.command()
def channel(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="a token bitstream (.tcb) or a packet capture")],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="RECEIVED", help="capture of what arrives")],
    loss: Annotated[float, typer.Option(help="packet loss rate (the mean rate when --burst > 1)")] = 0.1,
    burst: Annotated[float, typer.Option(help="mean burst length in packets (1: i.i.d. losses)")] = 1.0,
    ber: Annotated[float, typer.Option(help="bit error rate (a packet failing its CRC is lost)")] = 0.0,
    mtu: Annotated[int, typer.Option(help="largest datagram in bytes")] = 1200,
    fec: Annotated[float, typer.Option(help="RaptorQ repair packets per source packet")] = 0.0,
    uep: Annotated[bool, typer.Option("--uep", help="unequal protection: most repair for the first packets")] = False,
    seed: Annotated[int, typer.Option(help="seed of the channel's realisation")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Send a token bitstream as packets over a lossy channel; RECEIVED is what a receiver reads
    (tokencodec answer / classify / decode RECEIVED)."""
    from tokencodec.channels import ChannelError
    from tokencodec.channels.files import transmit_file
    from tokencodec.channels.transport import ChannelSpec
    from tokencodec.io import check_input_file, check_writable_file

    try:
        check_input_file(file, "token bitstream")
        check_writable_file(out)
        spec = ChannelSpec.parse({"losses": [loss], "burst": burst, "ber": ber, "mtu": mtu, "fec": fec, "uep": uep,
                                  "seed": seed}, "channel")
        data, report = transmit_file(file, spec, loss)
    except (ImportError, ChannelError, ValueError, *_split_errors()) as err:
        raise _fail(str(err)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)                                  # atomic: a file is whole or absent
    if as_json:
        print(json.dumps({**report, "out": str(out)}))
        return
    console.print(f"{out}: {report['datagrams_sent'] - report['datagrams_lost']} of {report['datagrams_sent']} "
                  f"datagrams arrived ({report['bytes_sent']} bytes sent, {report['repair'] or 0} repair)",
                  highlight=False)


@app.command("lmms-curve")
def lmms_curve(
    results: Annotated[list[Path], typer.Argument(help="lmms-eval *_results.json files, or folders holding them")],
    costs: Annotated[Path, typer.Option(help="the plugin's cost folder (costs=)")] = Path("tokencodec-costs"),
    task: Annotated[str, typer.Option(help="lmms-eval task name, e.g. pope")] = "pope",
    metric: Annotated[str, typer.Option(help="the task's metric, e.g. pope_accuracy")] = "pope_accuracy",
    name: Annotated[str, typer.Option(help="curve name, e.g. the method")] = "lmms-eval",
    out: Annotated[Path, typer.Option("--out", "-o", help="curve JSON to write")] = Path("lmms-curve.json"),
) -> None:
    """Turn lmms-eval runs of the tokencodec model into one curve (then: tokencodec bd / plot)."""
    from tokencodec.integrations.lmms_results import LmmsResultsError, curve_from_runs
    from tokencodec.io import check_writable_file
    from tokencodec.rd.results import save_curve

    files = [f for p in results for f in (sorted(p.rglob("*_results.json")) if p.is_dir() else [p])]
    try:
        check_writable_file(out)
        curve = curve_from_runs(files, costs, task, metric, name)
    except (LmmsResultsError, OSError, ValueError) as err:
        raise _fail(str(err)) from None
    save_curve(curve, out)
    for point in curve.points:
        v = point.values
        console.print(f"knob {point.knob:g}: {metric} {v[metric]:.4g}, tokens {v['tokens']:.1f}, "
                      f"FLOPs {v['flops']:.3g}, latency {1000 * v['latency_s']:.1f} ms", highlight=False)
    console.print(f"{out}: {len(curve.points)} points", highlight=False)


@app.command()
def version() -> None:
    """Versions of tokencodec and of the libraries behind its numbers."""
    from tokencodec.codecs import get_codec, plain_codecs
    from tokencodec.provenance import package_versions

    console.print(f"tokencodec {__version__}", highlight=False)
    for name, v in package_versions().items():
        console.print(f"  {name} {v}", highlight=False)
    for name in plain_codecs():
        for lib, v in get_codec(name).versions().items():
            v = str(v)
            if v.lower().startswith(lib.lower()):  # some bindings prefix the library name ("libjxl 0.11.2")
                v = v[len(lib):].strip()
            console.print(f"  {lib} {v} ({name})", highlight=False)


def main() -> None:
    """The installed command and ``python -m tokencodec``: click's usage errors (a missing argument, an
    unknown option) become one line on stderr with exit code 2, as every other user fault."""
    try:  # typer 0.2x parses with its own copy of click, whose exceptions are not click's
        from typer._click import exceptions as click
    except ImportError:
        from click import exceptions as click

    try:
        code = app(standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # bare `tokencodec`: the help, as before
        exc.show()
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "tokencodec"
        error(f"{command}: {exc.format_message().rstrip('.')} (see '{command} --help')")
        sys.exit(EXIT_USER)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.Abort:
        error("aborted")
        sys.exit(EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else 0)
