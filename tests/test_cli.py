import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tokencodec.cli import app, parse_qualities

runner = CliRunner()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photo):
    path = tmp_path_factory.mktemp("images")
    Image.fromarray(photo).save(path / "a.png")
    Image.fromarray(np.ascontiguousarray(photo[:, ::-1])).save(path / "b.png")
    return path


@pytest.fixture(scope="module")
def sweep(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    result = runner.invoke(app, ["codecs", "-d", str(folder), "-c", "jpeg", "-c", "webp", "-q", "10,30,60,90",
                                 "-o", str(out), "-j", "1"])
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.parametrize("command", [[], ["codecs"], ["bd"], ["plot"], ["methods"], ["version"], ["study"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    assert "<bool>" not in result.output  # flags read as flags, like any CLI


def test_codecs_writes_results_plot_and_bd_tables(sweep):
    out, output = sweep
    assert {p.name for p in out.iterdir()} >= {"jpeg.json", "webp.json", "rd.png", "bd.md", "bd.csv", "points.jsonl"}
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bd.md").read_text()
    assert "| webp | jpeg | psnr-rgb | pchip |" in md and "BD-against jpeg" not in md
    assert (out / "bd.csv").read_text().splitlines()[0].startswith("test,anchor,metric")
    assert "BD against jpeg" in output


def test_bd_command_on_two_results_files(sweep):
    # the two sweeps overlap on 68 % of PSNR: the command, its exit code, bd_rate(...).status and print(...)
    # agree (low-overlap, no number), as reports do
    from tokencodec.rd import bd_rate, load_curve

    out, _ = sweep
    result = runner.invoke(app, ["bd", str(out / "jpeg.json"), str(out / "webp.json")])
    assert result.exit_code == 3, result.output
    assert "BD-rate" in result.output and "BD-quality" in result.output and "overlap" in result.output
    api = bd_rate(load_curve(out / "jpeg.json"), load_curve(out / "webp.json"))
    assert api.status == "low-overlap" and f"BD-rate    {api}" in result.output and "withheld" in str(api)
    assert "status     low-overlap" in result.output


def test_bd_command_reads_compressai_files(sweep, tmp_path):
    out, _ = sweep
    jpeg = json.loads((out / "jpeg.json").read_text())
    plain = {"name": "halved", "description": "", "results": {
        "bpp": [b / 2 for b in jpeg["results"]["bpp"]], "psnr-rgb": jpeg["results"]["psnr-rgb"]}}
    (tmp_path / "c.json").write_text(json.dumps(plain))
    result = runner.invoke(app, ["bd", str(out / "jpeg.json"), str(tmp_path / "c.json")])
    # BD-rate is exact on the shared PSNR range; the halved rates overlap too little for a BD-quality value
    assert result.exit_code == 3 and "-50.00%" in result.output and "BD-quality withheld" in result.output


def test_plot_command(sweep, tmp_path):
    out, _ = sweep
    result = runner.invoke(app, ["plot", str(out / "jpeg.json"), str(out / "webp.json"), "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0 and (tmp_path / "p.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["codecs", "-c", "vvc"], "unknown codec 'vvc'; known: avif"),
    (["codecs", "-c", "jpeg", "-q", "0,50"], "quality 0 is outside the allowed range [1, 100]"),
    (["codecs", "-c", "jpeg", "-q", "high"], "--qualities 'high'"),
    (["codecs", "-c", "webp", "--anchor", "jpeg"], "anchor 'jpeg' is not among the codecs run"),
    (["codecs", "-d", "imagenet", "-c", "jpeg"], "unknown data set 'imagenet'"),
    (["bd", "missing-a.json", "missing-b.json"], "missing-a.json: results file not found"),
])
def test_bad_input_exits_2_with_a_clear_message(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_a_corrupt_image_is_named_and_finished_results_stay(folder, sweep, tmp_path):
    out, _ = sweep
    bad = tmp_path / "imgs"
    bad.mkdir()
    (bad / "a.png").write_bytes((folder / "a.png").read_bytes())
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    before = (out / "jpeg.json").read_bytes()
    result = runner.invoke(app, ["codecs", "-d", str(bad), "-c", "jpeg", "-o", str(out), "--on-error", "stop"])
    assert result.exit_code == 2 and "broken.png" in result.output
    assert (out / "jpeg.json").read_bytes() == before


def test_parse_qualities():
    assert parse_qualities("5:95:45") == [5, 50, 95]
    assert parse_qualities("10,20") == [10, 20]
    assert parse_qualities(None) is None


def test_codecs_without_c_runs_the_six_plain_codecs(folder, tmp_path):
    # what the README's main job types: no -c, so every plain codec (the machine-guided ones only by name)
    r = runner.invoke(app, ["codecs", "-d", str(folder), "-q", "50", "-o", str(tmp_path), "-j", "1", "--limit", "1"])
    assert r.exit_code == 0, r.output
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(
        ["avif", "heic", "jpeg", "jpeg2000", "jpegxl", "webp"])


def test_list_codecs():
    result = runner.invoke(app, ["codecs", "--list"])
    assert result.exit_code == 0 and "jpeg2000" in result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0][:2] == ["codec", "kind"] and {r[0]: r[1] for r in rows[1:]}["h265"] == "video"   # video listed


def test_methods_lists_every_method_with_its_properties():
    from tokencodec.tokens.compress import METHODS

    result = runner.invoke(app, ["methods"])  # not a terminal: complete tab-separated lines, nothing cut
    assert result.exit_code == 0
    rows = [line.split("\t") for line in result.output.splitlines()]
    assert rows[0][:3] == ["method", "acts", "guided by"]
    assert {r[0] for r in rows[1:]} == set(METHODS)  # "pyramiddrop" in full, not "pyramid…"
    assert ["visionzip", "pre-llm"] == rows[1:][sorted(METHODS).index("visionzip")][:2]
    assert "arXiv 2412.04467" in result.output  # VisionZip
    listed = json.loads(runner.invoke(app, ["methods", "--json"]).output)
    assert {m["method"] for m in listed} == set(METHODS) and all("stage" in m for m in listed)


def test_methods_matrix_is_markdown_with_a_row_per_method():
    from tokencodec.tokens.compress import METHODS

    lines = runner.invoke(app, ["methods", "--matrix"]).output.splitlines()
    assert lines[0].startswith("| method | stage | CLIP tower")
    assert len(lines) == 2 + len(METHODS)


def _results(path, name, dataset, items, bpp_scale=1.0):
    from tokencodec.rd import Curve, save_curve

    bpp = np.array([0.25, 0.5, 1.0, 2.0]) * bpp_scale
    curve = Curve.from_columns(name, {"bpp": bpp, "psnr-rgb": 30 + 4 * np.log2(bpp / bpp_scale)}, provenance={
        "config": {"data": {"spec": {"dataset": dataset}, "items": items, "fingerprint": dataset[:4]}}})
    return save_curve(curve, path / f"{name}.json")


KODAK = [f"kodim{i:02d}" for i in range(1, 25)]


def test_bd_and_plot_refuse_curves_measured_on_different_data(tmp_path):
    a = _results(tmp_path, "jpeg", "kodak", KODAK)
    b = _results(tmp_path, "avif", "embedded", ["astronaut", "chelsea", "coffee", "rocket"], 0.8)
    for command in (["bd", str(a), str(b)], ["plot", str(a), str(b), "-o", str(tmp_path / "p.png")]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "jpeg.json: kodak (24 items) vs" in text and "avif.json: embedded (4 items)" in text
        assert "Traceback" not in result.output
    assert not (tmp_path / "p.png").exists()
    result = runner.invoke(app, ["bd", str(a), str(b), "--allow-mismatch"])
    assert result.exit_code == 0 and "warning:" in result.output and "-20.00%" in result.output
    assert "status     ok" in result.output
    result = runner.invoke(app, ["plot", str(a), str(b), "--allow-mismatch", "--title", "mixed",
                                 "-o", str(tmp_path / "p.png")])
    assert result.exit_code == 0 and "warning:" in result.output and (tmp_path / "p.png").exists()


def test_bd_exits_3_when_the_curves_do_not_overlap(tmp_path):
    a = _results(tmp_path, "jpeg", "kodak", KODAK)
    far = _results(tmp_path, "far", "kodak", KODAK, 100.0)  # the same PSNRs at 100× the rate
    result = runner.invoke(app, ["bd", str(a), str(far)])
    assert result.exit_code == 3, result.output
    assert "status     no-overlap" in result.output and "no overlap" in result.output
    assert "exit" in runner.invoke(app, ["bd", "--help"]).output  # the exit codes are documented


def test_plot_title_defaults_to_the_data_set(tmp_path, monkeypatch):
    from tokencodec.bench.report import plots

    seen = {}
    real = plots.plot_panels

    def spy(curves, rate, metrics, *, title=None, dataset=None, **kw):
        seen["title"] = title
        return real(curves, rate, metrics, title=title, dataset=dataset, **kw)

    monkeypatch.setattr(plots, "plot_panels", spy)
    a, b = _results(tmp_path, "jpeg", "kodak", KODAK), _results(tmp_path, "webp", "kodak", KODAK, 0.9)
    assert runner.invoke(app, ["plot", str(a), str(b), "-o", str(tmp_path / "p.png")]).exit_code == 0
    assert seen["title"] == "kodak (24 items)"
    assert runner.invoke(app, ["plot", str(a), "--title", "mine", "-o", str(tmp_path / "q.png")]).exit_code == 0
    assert seen["title"] == "mine"


def test_bd_prints_overlap_and_status(sweep):
    out, _ = sweep
    result = runner.invoke(app, ["bd", str(out / "jpeg.json"), str(out / "webp.json")])
    assert result.exit_code == 3 and "overlap" in result.output and "status" in result.output
    assert "warning" not in result.output  # one sweep: the same data
