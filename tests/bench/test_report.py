import csv
import io
import re
import shutil
import subprocess
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pytest

from tokencodec.bench.report import (
    Figure,
    Heading,
    Paragraph,
    Table,
    build_report,
    plots,
    render,
    write_codec_report,
    write_report,
)
from tokencodec.bench.report.tables import bd_rows, default_linear_rate, default_monotonic
from tokencodec.rd import Curve, DataMismatchError, DataMismatchWarning

ITEMS = ["s0", "s1", "s2", "s3"]
DATA = {"data": {"spec": {"dataset": "tiny"}, "items": ITEMS, "fingerprint": "0123abcd"}}
KEEP = [1.0, 0.5, 0.25, 0.125]


def _token_curve(name: str, loss: float, data: dict = DATA) -> Curve:
    """A token method: agreement falls and KL grows as fewer of 16 tokens are kept (per item, then mean)."""
    per_item = {}
    for i, sid in enumerate(ITEMS):
        agreement = [1.0 - loss * (1 - k) * (1 + 0.1 * i) for k in KEEP]
        kl = [loss * (1 - k) * (1 + 0.2 * i) for k in KEEP]
        per_item[sid] = {"agreement": agreement, "kl": kl}
    columns = {"keep_ratio": KEEP, "tokens": [16 * k for k in KEEP], "latency_s": [0.01] * 4,
               "agreement": [float(np.mean([per_item[s]["agreement"][j] for s in ITEMS])) for j in range(4)],
               "kl": [float(np.mean([per_item[s]["kl"][j] for s in ITEMS])) for j in range(4)]}
    return Curve.from_columns(name, columns, knob="keep_ratio", per_item=per_item,
                              provenance={"tokencodec": "0.1.0", "git_commit": "abc", "seed": 0, "config": data,
                                          "packages": {"numpy": np.__version__}})


def _token_curves() -> dict[str, Curve]:
    return {"random": _token_curve("random", 0.6), "divprune": _token_curve("divprune", 0.3),
            "pool-avg": _token_curve("pool-avg", 0.45)}


def _parity(sample_id: str) -> str:
    return "even" if int(sample_id[1:]) % 2 == 0 else "odd"


def _codec_curve(name: str, scale: float, data: dict = DATA) -> Curve:
    bpp = np.array([0.25, 0.5, 1.0, 2.0])
    return Curve.from_columns(name, {"quality": [10, 30, 60, 90], "bpp": bpp * scale,
                                     "psnr-rgb": 30 + 4 * np.log2(bpp), "ms-ssim-rgb": 0.9 + 0.02 * np.log2(bpp)},
                              knob="quality", provenance={"config": data})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return write_report(_token_curves(), out, "Tiny study", "random", ["agreement", "kl"], description="test",
                        group_of=_parity)


def test_report_files(report):
    assert set(report) == {"markdown", "html", "agreement_vs_tokens", "kl_vs_tokens"}
    md = report["markdown"].read_text()
    assert md.startswith("# Tiny study\n") and "Data: **tiny (4 items)**" in md
    assert "## BD metrics against the anchor, tokens as the rate" in md and "| divprune | agreement |" in md
    assert "## agreement per group" in md and "| method | keep ratio | even | odd |" in md
    assert "## agreement as a share of the uncompressed model's" in md
    assert "| random | 1.000 |" in md  # the anchor at keep 1 is the uncompressed model
    assert "![agreement vs tokens — tiny; shaded: 95 % bootstrap interval over items](agreement_vs_tokens.png)" in md
    assert "## Provenance" in md and "fingerprint 0123abcd" in md
    page = report["html"].read_text()
    assert page.count("data:image/png;base64,") == 2 and "<table>" in page
    assert report["agreement_vs_tokens"].read_bytes()[:4] == b"\x89PNG"
    assert report["agreement_vs_tokens"].parent == report["markdown"].parent


def test_html_is_self_contained(report):
    page = report["html"].read_text()
    assert "src=\"http" not in page and "href=" not in page and "<script" not in page and "<link" not in page
    assert "url(" not in page and "@import" not in page
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))


def test_bd_tables_have_overlap_and_status_columns_in_markdown_and_csv(report, tmp_path):
    md = report["markdown"].read_text()
    header = ("| method | metric | interpolation | BD-rate (%) | BD-quality | overlap (quality) | overlap (rate) "
              "| status |")
    assert header in md
    assert "| divprune | agreement | pchip, linear rate, monotonic |" in md
    curves = {"jpeg": _codec_curve("jpeg", 1.0), "webp": _codec_curve("webp", 0.8)}
    paths = write_codec_report(curves, tmp_path, "jpeg")
    assert {p.name for p in paths.values()} == {"rd.png", "bd.md", "bd.csv"}
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "bd.csv").read_text())))
    assert [r["test"] for r in rows] == ["webp", "webp"] and {"overlap (quality)", "overlap (rate)", "status"} <= set(
        rows[0])
    assert rows[0]["interpolation"] == "pchip" and rows[0]["status"] == "ok"
    assert float(rows[0]["BD-rate (%)"]) == pytest.approx(-20.0, abs=0.01)
    codec_md = (tmp_path / "bd.md").read_text()
    assert "| webp | jpeg | psnr-rgb | pchip | -20.00 |" in codec_md and "| status |" in codec_md


def test_bd_defaults_come_from_the_measures():
    assert not default_linear_rate("bpp") and not default_linear_rate("bytes")
    assert default_linear_rate("tokens") and default_linear_rate("flops") and default_linear_rate("kv_bytes")
    assert default_monotonic("accuracy") and default_monotonic("kl") and default_monotonic("object_recall")
    assert not default_monotonic("psnr-rgb") and not default_monotonic("ms-ssim-rgb")
    row = bd_rows(_token_curves(), "random", ["agreement"], "tokens")[0]
    assert row.linear_rate and row.monotonic and row.bd_rate.linear_rate
    codecs = {"jpeg": _codec_curve("jpeg", 1.0), "webp": _codec_curve("webp", 0.5)}
    row = bd_rows(codecs, "jpeg", ["psnr-rgb"], "bpp")[0]
    assert not row.linear_rate and not row.monotonic and row.bd_rate.value == pytest.approx(-50.0, abs=0.01)
    forced = bd_rows(codecs, "jpeg", ["psnr-rgb"], "bpp", linear_rate=True, monotonic=True)[0]
    assert forced.fit == "pchip, linear rate, monotonic"


def test_status_says_no_overlap_and_errors():
    far = _codec_curve("far", 100.0)  # rates 25-200 bpp: disjoint from the anchor's
    rows = bd_rows({"jpeg": _codec_curve("jpeg", 1.0), "far": far}, "jpeg", ["psnr-rgb"], "bpp")
    assert rows[0].status == "no-overlap" and rows[0].bd_quality.value is None
    flat = Curve.from_columns("flat", {"tokens": [4, 8, 16], "agreement": [0.5, 0.5, 0.5]})
    rows = bd_rows({"random": _token_curve("random", 0.5), "flat": flat}, "random", ["agreement", "nope"], "tokens")
    assert rows[0].status.startswith("error: ") and "flat" in rows[0].status
    assert rows[1].status.startswith("error: ") and "no measure 'nope'" in rows[1].status


def test_palette_gives_every_curve_its_own_colour_and_marker():
    for n in (11, 25, 110, 250):
        pairs = plots.palette(n)
        assert len(set(pairs)) == n, n
    eleven = plots.palette(11)  # 11 token methods: no two share a colour+marker (random and dart were both blue)
    assert eleven[0] != eleven[10] and eleven[0][1] != eleven[10][1]
    curves = {f"m{i}": Curve.from_columns(f"m{i}", {"tokens": [4, 8], "accuracy": [0.1 * i, 0.2 + 0.1 * i]})
              for i in range(25)}
    fig, ax = plt.subplots()
    assert plots.draw(ax, curves, "tokens", "accuracy") == 25
    drawn = {(line.get_color(), line.get_marker()) for line in ax.get_lines()}
    plt.close(fig)
    assert len(drawn) == 25


def test_one_figure_holds_every_curve_that_shares_the_rate():
    jpeg = Curve.from_columns("jpeg", {"bpp": [0.5, 1.0], "tokens": [16, 16], "accuracy": [0.6, 0.8]})
    divprune = Curve.from_columns("divprune", {"tokens": [4, 8], "accuracy": [0.5, 0.7]})
    curves = {"jpeg": jpeg, "divprune": divprune}
    fig, ax = plt.subplots()
    assert plots.draw(ax, curves, "tokens", "accuracy") == 2
    assert ax.get_xlabel() == "visual tokens" and ax.get_ylabel() == "accuracy"   # units once: not "tokens (token)"
    assert ax.get_xscale() == "linear"                                                # counts: a linear axis
    plt.close(fig)
    fig, ax = plt.subplots()
    assert plots.draw(ax, curves, "bpp", "accuracy") == 1 and ax.get_xlabel() == "rate (bit/pixel)"
    assert ax.get_xscale() == "log"                                                   # bit rates: a log axis
    plt.close(fig)
    assert plots.default_title("tokens", "accuracy") == "accuracy vs tokens"
    assert plots.default_title("tokens", "accuracy", "kodak") == "accuracy vs tokens — kodak"
    assert plots.plot_figure(curves, "tokens", "accuracy")[:4] == b"\x89PNG"


def test_reports_refuse_curves_measured_on_different_data(tmp_path):
    other = {"data": {"spec": {"dataset": "other"}, "items": ["t0", "t1"], "fingerprint": "ffff"}}
    curves = {**_token_curves(), "odd": _token_curve("odd", 0.2, other)}
    kw = dict(title="t", anchor="random", metrics=["agreement"], rates=["tokens"])
    with pytest.raises(DataMismatchError, match=r"random: tiny \(4 items\) vs odd: other \(2 items\)"):
        build_report(curves, **kw)
    with pytest.raises(DataMismatchError):
        write_report(curves, tmp_path, "t", "random", ["agreement"])
    codecs = {"jpeg": _codec_curve("jpeg", 1.0), "webp": _codec_curve("webp", 0.8, other)}
    with pytest.raises(DataMismatchError):
        write_codec_report(codecs, tmp_path, "jpeg")
    with pytest.warns(DataMismatchWarning, match="odd: other"):
        sections = build_report(curves, allow_mismatch=True, **kw)
    assert isinstance(sections[0], Heading) and any(isinstance(s, Figure) for s in sections)


def test_render_sections():
    sections = [Heading("T", 1), Paragraph("a **b** <c>"), Table("tab", ["x", "y"], [["1", "a|b"]], note="n"),
                Figure("f.png", b"\x89PNG fake", "cap")]
    md = render.to_markdown(sections)
    assert "# T\n" in md and "## tab\n\nn\n\n| x | y |" in md and "a\\|b" in md and "![cap](f.png)" in md
    page = render.to_html(sections)
    assert "<title>T</title>" in page and "<strong>b</strong> &lt;c&gt;" in page and "<figcaption>cap" in page
    with pytest.raises(ValueError, match="a row has 1 cells for 2 columns"):
        Table("bad", ["x", "y"], [["1"]])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_report_renders_in_headless_chromium(report, tmp_path):
    browser = _chromium()
    assert browser, ("the HTML report test needs Chromium on PATH: run the README set-up "
                     "(bash scripts/system-deps.sh, which installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    url = report["html"].resolve().as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    # BD on tokens, share of the uncompressed, values, per group: four tables; two plots
    assert "<h1>Tiny study</h1>" in dom and dom.count("<table>") == 4 and dom.count("<img") == 2
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2000", url],
                   capture_output=True, timeout=120)
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page with plots, not a blank one


def test_report_without_data_records_warns_but_is_written(tmp_path):
    curves = {n: Curve.from_columns(n, {"keep_ratio": KEEP, "tokens": [16 * k for k in KEEP],
                                        "accuracy": [0.9, 0.8 - d, 0.6 - d, 0.4 - d]}, knob="keep_ratio")
              for n, d in (("random", 0.0), ("divprune", 0.05))}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths = write_report(curves, tmp_path, "no provenance", "random", ["accuracy"])
    assert any(issubclass(w.category, DataMismatchWarning) for w in caught)
    assert "Data: **unknown**" in paths["markdown"].read_text()


def test_figures_for_papers_styles_units_formatters_titles_and_bands():
    from tokencodec.rd.comparable import data_identity

    twenty = plots.palette(20)
    assert len(set(twenty)) == 20
    for i in range(20):                    # any two of 20 curves differ in at least two of colour, marker, line
        for j in range(i):
            assert sum(a != b for a, b in zip(twenty[i], twenty[j], strict=True)) >= 2, (i, j)
    flops = {f"m{i}": Curve.from_columns(f"m{i}", {"flops": [4.1e7 + i * 1e6, 1.05e8], "accuracy": [0.3, 0.9]})
             for i in range(3)}
    fig, ax = plt.subplots()
    plots.draw(ax, flops, "flops", "accuracy")
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert ax.get_xlabel() == "FLOPs" and ax.xaxis.get_offset_text().get_text() == ""   # no "×1e8" or "1e8"
    assert any(label.endswith(" M") for label in labels), labels                          # engineering prefixes
    plt.close(fig)
    listed = Curve.from_columns("x", {"bpp": [0.5, 1], "psnr-rgb": [30, 34]},
                                provenance={"config": {"data": {"spec": {"dataset": ["embedded", "kodak"]},
                                                                "items": ["a"]}}})
    assert data_identity(listed).label == "embedded + kodak"                               # not "['embedded', …]"
    fig, ax = plt.subplots()
    plots.draw(ax, {"x": listed}, "bpp", "psnr-rgb", log_rate=False)
    assert ax.get_xscale() == "linear" and ax.get_ylabel() == "PSNR-RGB (dB)"
    plt.close(fig)
    banded = _token_curves()                     # per-item values: a shaded 95 % band per curve
    fig, ax = plt.subplots()
    plots.draw(ax, banded, "tokens", "agreement")
    assert len(ax.collections) == len(banded)
    plt.close(fig)
    fig, ax = plt.subplots()
    plots.draw(ax, {"x": listed}, "bpp", "psnr-rgb")
    assert not ax.collections                    # no per-item values: no band is invented
    plt.close(fig)
