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


@pytest.mark.parametrize("command", [[], ["codecs"], ["bd"], ["plot"], ["methods"], ["version"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_codecs_writes_results_plot_and_bd_tables(sweep):
    out, output = sweep
    assert {p.name for p in out.iterdir()} >= {"jpeg.json", "webp.json", "rd.png", "bd.md", "bd.csv", "points"}
    assert (out / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bd.md").read_text()
    assert "| webp | jpeg | psnr-rgb | pchip |" in md and "BD-against jpeg" not in md
    assert (out / "bd.csv").read_text().splitlines()[0].startswith("test,anchor,metric")
    assert "BD against jpeg" in output


def test_bd_command_on_two_results_files(sweep):
    out, _ = sweep
    result = runner.invoke(app, ["bd", str(out / "jpeg.json"), str(out / "webp.json")])
    assert result.exit_code == 0, result.output
    assert "BD-rate" in result.output and "BD-quality" in result.output and "overlap" in result.output


def test_bd_command_reads_compressai_files(sweep, tmp_path):
    out, _ = sweep
    jpeg = json.loads((out / "jpeg.json").read_text())
    plain = {"name": "halved", "description": "", "results": {
        "bpp": [b / 2 for b in jpeg["results"]["bpp"]], "psnr-rgb": jpeg["results"]["psnr-rgb"]}}
    (tmp_path / "c.json").write_text(json.dumps(plain))
    result = runner.invoke(app, ["bd", str(out / "jpeg.json"), str(tmp_path / "c.json")])
    assert result.exit_code == 0 and "-50.00%" in result.output


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
    result = runner.invoke(app, ["codecs", "-d", str(bad), "-c", "jpeg", "-o", str(out)])
    assert result.exit_code == 2 and "broken.png" in result.output
    assert (out / "jpeg.json").read_bytes() == before


def test_parse_qualities():
    assert parse_qualities("5:95:45") == [5, 50, 95]
    assert parse_qualities("10,20") == [10, 20]
    assert parse_qualities(None) is None


def test_list_codecs():
    result = runner.invoke(app, ["codecs", "--list"])
    assert result.exit_code == 0 and "jpeg2000" in result.output


def test_methods_lists_every_method_with_its_properties():
    from tokencodec.tokens.compress import METHODS

    result = runner.invoke(app, ["methods"], env={"COLUMNS": "250"})
    assert result.exit_code == 0
    for name in METHODS:
        assert f" {name} " in result.output
    assert "arXiv 2412.04467" in result.output  # VisionZip


def test_methods_matrix_is_markdown_with_a_row_per_method():
    from tokencodec.tokens.compress import METHODS

    lines = runner.invoke(app, ["methods", "--matrix"]).output.splitlines()
    assert lines[0].startswith("| method | stage | CLIP tower")
    assert len(lines) == 2 + len(METHODS)
