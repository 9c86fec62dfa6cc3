"""Output for pipes and scripts: every command run as a subprocess with stdout a pipe (and COLUMNS=40, which
would make rich wrap at 40 columns): no wrapped lines, no colour codes, valid JSON with --json, progress and
notes on stderr only, warnings on one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
ENV = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE", "TTY_COMPATIBLE")}
ENV.update(PYTHONPATH=str(SRC), COLUMNS="40", OMP_NUM_THREADS="1")


def tc(*args, ok=(0,)) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "tokencodec", *map(str, args)], capture_output=True, text=True,
                         env=ENV, timeout=600)
    assert run.returncode in ok, (args, run.returncode, run.stderr)
    for stream in (run.stdout, run.stderr):
        assert "\x1b[" not in stream, stream                      # no colour or cursor codes in a pipe
        assert "━" not in stream                                   # no progress bar frames in a pipe or log
    for line in run.stderr.splitlines():
        assert not line.startswith("  "), run.stderr               # no source lines under a warning
    return run


@pytest.fixture(scope="module")
def work(tmp_path_factory, photo):
    root = tmp_path_factory.mktemp("pipes")
    deep = root / ("a-folder-name-long-enough-to-pass-eighty-columns-" * 2).rstrip("-")
    images = deep / "images"
    images.mkdir(parents=True)
    Image.fromarray(photo).save(images / "a.png")
    Image.fromarray(np.ascontiguousarray(photo[:, ::-1])).save(images / "b.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    return deep


@pytest.fixture(scope="module")
def sweep(work):
    out = work / "codecs"
    run = tc("codecs", "-d", work / "images", "-c", "jpeg", "-c", "webp", "-q", "20,40,60,80", "-o", out, "-j", "1",
             "--json")
    summary = json.loads(run.stdout)
    return out, summary, run


def test_codecs_json_summary_and_one_line_warnings(sweep, work):
    out, summary, run = sweep
    assert summary["images"] == 2 and list(summary["skipped"]) == ["broken.png"]
    assert {r["test"] for r in summary["bd"]} == {"webp"} and summary["results"]["jpeg"] == str(out / "jpeg.json")
    warned = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "broken.png" in warned[0] and warned[0].endswith("(ImageSkippedWarning)")
    assert "1 skipped: broken.png (unreadable)" in run.stderr


def test_bd_text_and_json(sweep):
    out, _, _ = sweep
    run = tc("bd", out / "jpeg.json", out / "webp.json", ok=(0, 3))
    lines = run.stdout.splitlines()
    assert len(lines) == 5 and lines[1].startswith("  BD-rate") and lines[4].startswith("  status")
    data = json.loads(tc("bd", out / "jpeg.json", out / "webp.json", "--json", ok=(0, 3)).stdout)
    assert data["bd_rate"]["kind"] == "bd-rate" and data["status"] in ("ok", "low-overlap")
    assert data["bd_rate"]["value"] is None or data["status"] == "ok" or data["bd_rate"]["status"] == "ok"


def test_plot_writes_nothing_to_stdout(sweep, work):
    out, _, _ = sweep
    run = tc("plot", out / "jpeg.json", out / "webp.json", "-o", work / "rd.png", "--log-rate")
    assert run.stdout == "" and str(work / "rd.png") in run.stderr.replace("\n", "")


def test_methods_and_codecs_list(tmp_path):
    from tokencodec.tokens.compress import METHODS

    run = tc("methods")
    rows = [line.split("\t") for line in run.stdout.splitlines()]
    assert {len(r) for r in rows} == {7} and len(rows) == 1 + len(METHODS)     # long paper cells not wrapped
    assert max(len(line) for line in run.stdout.splitlines()) > 80
    listed = json.loads(tc("codecs", "--list", "--json").stdout)             # the table form: tests/test_cli.py
    kinds = {r["codec"]: r["kind"] for r in listed}
    assert kinds["h264"] == kinds["h265"] == kinds["av1"] == "video" and kinds["jpeg"] == "image"


def test_study_summary_json(work):
    study = work / "s.yaml"
    study.write_text(f"name: pipes\nobserver: human\ndata: {{dataset: {work / 'images'}}}\n"
                     "pipelines:\n  - {codec: jpeg, qualities: [30, 70]}\n  - {codec: webp, qualities: [30, 70]}\n")
    run = tc("study", study, "-o", work / "study", "--json")
    summary = json.loads(run.stdout)
    assert summary["samples"] == 2 and summary["skipped"] == {"broken.png": summary["skipped"]["broken.png"]}
    assert set(summary["results"]) == {"jpeg", "webp"}
    assert "Skipped (1 could not be read): broken.png (unreadable)." in Path(summary["report"]["markdown"]).read_text()
    assert "study pipes on human" in run.stderr                        # notes for the person go to stderr


def test_decode_lines_are_not_wrapped(work):
    pytest.importorskip("constriction")
    from tokencodec.data.vqa import VQADataset
    from tokencodec.split import encode_image

    tcb = work / "scene-with-a-long-name-so-that-its-line-is-wider-than-forty-columns.tcb"
    scene = VQADataset("test", 2, 0)[0]
    tcb.write_bytes(encode_image(scene.image, "diagnostic-mllm", "rdo", 16, "step-4").data)
    lines = tc("decode", tcb, "--tokens", work / "tokens.safetensors").stdout.splitlines()
    shown = dict(line.split(": ", 1) for line in lines)
    assert shown["tokens_file"] == str(work / "tokens.safetensors")  # a path of 150+ characters on one line
    assert Path(shown["profile_file"]).exists()
    info = json.loads(tc("decode", tcb, "--json").stdout)
    assert info["tokens"] == 16
    answered = tc("answer", tcb, scene.question)                      # loads the model with transformers
    assert len(answered.stdout.splitlines()) == 1 and answered.stderr == ""   # no "Loading weights" bar
