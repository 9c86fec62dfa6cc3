"""Every user-facing fault: one line on stderr naming the input and what is allowed, exit code 2, before any
expensive work (issue 19). One test per case."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tokencodec.cli import app

runner = CliRunner()
STUDIES = Path(__file__).resolve().parents[1] / "studies"


def one_line_error(result, *needles: str) -> str:
    """The result failed with exit 2 and exactly one line on stderr, which starts with "error:" and names each
    needle; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def read_only(tmp_path):
    """A folder nobody here may write into: /sys as root (where permissions do not bind), else chmod 555."""
    if os.geteuid() == 0:
        if not Path("/sys").is_dir():
            pytest.skip("root without /sys: no read-only folder to test with")
        yield Path("/sys/tokencodec-test-out")
        return
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder / "out"
    folder.chmod(0o755)


@pytest.fixture(scope="module")
def images(tmp_path_factory, photo):
    folder = tmp_path_factory.mktemp("faults")
    Image.fromarray(photo).save(folder / "a.png")
    Image.fromarray(np.ascontiguousarray(photo[::-1])).save(folder / "b.png")
    return folder


def _no_sweep(monkeypatch):
    """Make any sweep fail the test: faults must be caught before the work starts."""
    import tokencodec.bench.engine as engine

    def boom(*a, **k):
        raise AssertionError("the sweep started before the fault was reported")

    monkeypatch.setattr(engine, "run_sweep", boom)


def test_codecs_into_a_read_only_folder(read_only, images, monkeypatch):
    _no_sweep(monkeypatch)
    r = runner.invoke(app, ["codecs", "-d", str(images), "-c", "jpeg", "-q", "50", "-o", str(read_only)])
    one_line_error(r, f"--out {read_only}: cannot write there", "give a folder that can be written")


def test_codecs_under_a_file(tmp_path, images, monkeypatch):
    _no_sweep(monkeypatch)
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["codecs", "-d", str(images), "-c", "jpeg", "-q", "50", "-o", str(tmp_path / "file" / "o")])
    one_line_error(r, "is under the file", "file")


def test_codecs_on_an_impossible_path(tmp_path, images, monkeypatch):
    _no_sweep(monkeypatch)
    r = runner.invoke(app, ["codecs", "-d", str(images), "-c", "jpeg", "-q", "50", "-o", str(tmp_path / ("x" * 300))])
    one_line_error(r, "cannot write there", "…")       # the long name is shortened in the message


def test_study_into_a_read_only_folder_before_any_data(read_only, monkeypatch):
    import tokencodec.bench.study as study_module

    def boom(*a, **k):
        raise AssertionError("the study started before the fault was reported")

    monkeypatch.setattr(study_module, "run_study", boom)
    r = runner.invoke(app, ["study", str(STUDIES / "efficientnet-lite0.yaml"), "-o", str(read_only)])
    one_line_error(r, "cannot write there")


def test_encode_checks_its_output_before_the_model_runs(tmp_path, images, monkeypatch):
    import tokencodec.split as split

    def boom(*a, **k):
        raise AssertionError("the model ran before the output was checked")

    monkeypatch.setattr(split, "encode_image", boom)
    (tmp_path / "file").write_text("x")
    r = runner.invoke(app, ["encode", str(images / "a.png"), "-o", str(tmp_path / "file" / "a.tcb")])
    one_line_error(r, f"--out {tmp_path / 'file' / 'a.tcb'}: is under the file {tmp_path / 'file'}")
    r = runner.invoke(app, ["encode", str(images), "-o", str(tmp_path / "a.tcb")])
    one_line_error(r, f"{images}: is a folder; the image is a file")


@pytest.mark.parametrize("command", [["decode"], ["classify"], ["answer", "what colour is the circle?"]])
def test_a_folder_given_as_a_bitstream(tmp_path, command):
    r = runner.invoke(app, [command[0], str(tmp_path), *command[1:]])
    one_line_error(r, f"{tmp_path}: is a folder; the token bitstream is a file")


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A PNG whose header claims width × height pixels, with (almost) no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_a_decompression_bomb_is_skipped_and_named_and_the_sweep_goes_on(tmp_path, images):
    import json

    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((images / name).read_bytes())
    (folder / "bomb.png").write_bytes(bomb_png())
    out = tmp_path / "out"
    r = runner.invoke(app, ["codecs", "-d", str(folder), "-c", "jpeg", "-c", "webp", "-q", "30,70", "-o", str(out),
                            "-j", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "1 skipped: bomb.png (too-large)" in r.stderr               # counted in the summary
    data = json.loads((out / "jpeg.json").read_text())["provenance"]["config"]["data"]
    assert data["items"] == ["a.png", "b.png"]                          # the other images were measured
    assert data["skipped"]["bomb.png"].startswith("too-large: ") and "3,600,000,000 pixels" in data["skipped"][
        "bomb.png"]
    r = runner.invoke(app, ["codecs", "-d", str(folder), "-c", "jpeg", "-q", "30", "-o", str(tmp_path / "o2"),
                            "--on-error", "stop"])
    one_line_error(r, "bomb.png: its header claims 3,600,000,000 pixels; allowed: at most")
    r = runner.invoke(app, ["codecs", "-d", str(folder), "-c", "jpeg", "--on-error", "ignore"])
    one_line_error(r, "--on-error 'ignore': allowed skip, stop")


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty hub cache, and a test failure if anything tries the network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def _cpu_pope(tmp_path) -> Path:
    text = (STUDIES / "hf-llava-pope.yaml").read_text().replace("device: cuda, ", "")
    path = tmp_path / "pope.yaml"
    path.write_text(text)
    return path


def test_an_offline_hub_model_is_one_line_without_retries(tmp_path, empty_hub, monkeypatch):
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("the network was tried"))
    r = runner.invoke(app, ["study", str(_cpu_pope(tmp_path)), "-o", str(tmp_path / "out")])
    one_line_error(r, "model 'llava-hf/llava-1.5-7b-hf': not in the hub cache", str(empty_hub),
                   "HF_HUB_OFFLINE is set", "hf download llava-hf/llava-1.5-7b-hf")


def test_an_unreachable_hub_is_one_line(tmp_path, empty_hub, monkeypatch):
    import socket

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)
    tries = []

    def unreachable(address, timeout=None):
        tries.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    r = runner.invoke(app, ["study", str(_cpu_pope(tmp_path)), "-o", str(tmp_path / "out")])
    one_line_error(r, "huggingface.co cannot be reached (Network is unreachable)")
    assert len(tries) == 1                               # one connection attempt, no retries


def test_a_cached_hub_model_passes_the_check(tmp_path, empty_hub, monkeypatch):
    from huggingface_hub import constants

    from tokencodec.models.hf import check_available

    snapshot = empty_hub / "models--llava-hf--llava-1.5-7b-hf" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (empty_hub / "models--llava-hf--llava-1.5-7b-hf" / "refs").mkdir()
    (empty_hub / "models--llava-hf--llava-1.5-7b-hf" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_available("llava-hf/llava-1.5-7b-hf")            # no error: the cache has it


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_refused_before_data(tmp_path):
    r = runner.invoke(app, ["study", str(STUDIES / "hf-llava-pope.yaml"), "-o", str(tmp_path / "out")])
    one_line_error(r, "hf-llava-pope.yaml: observer 'hf-mllm': device 'cuda', but this machine has no CUDA device",
                   "allowed here: cpu")
    assert not (tmp_path / "out").exists()


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, images):
    import subprocess
    import sys

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from tokencodec.bench.lock import folder_lock\n"
        f"with folder_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    try:
        assert holder.stdout.readline().strip() == "held"
        r = runner.invoke(app, ["codecs", "-d", str(images), "-c", "jpeg", "-q", "50", "-o", str(out)])
        one_line_error(r, f"is being written by PID {holder.pid}", "--wait")
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("args, needles", [
    (["answer", "x.tcb"], ["answer: Missing argument 'question'", "answer --help"]),
    (["tokens", "--method", "fastv"], ["tokens: No such option: --method", "tokens --help"]),
])
def test_a_usage_error_is_one_line_from_the_installed_command(args, needles):
    """click's own usage errors (missing argument, unknown option) as the command runs them: `main`, not the
    app CliRunner calls, turns them into one line."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "tokencodec", *args], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 2 and run.stdout == "", (run.returncode, run.stdout, run.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
