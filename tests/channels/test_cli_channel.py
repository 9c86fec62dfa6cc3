"""``tokencodec channel FILE -o RECEIVED`` then ``tokencodec answer RECEIVED``: the receiver answers from the
tokens that arrived; bad input gets one line and exit code 2."""

import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("constriction")

from tokencodec.cli import app  # noqa: E402
from tokencodec.data.vqa import VQADataset  # noqa: E402

runner = CliRunner()


def said(output: str) -> str:
    """The answer: the last word printed (model loading may print a progress bar first)."""
    return output.strip().split("]")[-1].split()[-1]


@pytest.fixture(scope="module")
def sent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("channel")
    sample = list(VQADataset("test", 1, 0))[0]
    Image.fromarray(sample.image).save(tmp / "scene.png")
    r = runner.invoke(app, ["encode", str(tmp / "scene.png"), "-o", str(tmp / "scene.tcb"), "--keep", "64",
                            "--step", "2"])
    assert r.exit_code == 0, r.output
    return tmp, sample


def test_channel_then_answer_from_the_received_packets(sent):
    tmp, sample = sent
    r = runner.invoke(app, ["answer", str(tmp / "scene.tcb"), sample.question])
    whole = said(r.output)
    r = runner.invoke(app, ["channel", str(tmp / "scene.tcb"), "--loss", "0.3", "--mtu", "128", "--seed", "0",
                            "-o", str(tmp / "rx.tkp"), "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["datagrams_sent"] > 5 and 0 < report["datagrams_lost"] < report["datagrams_sent"]
    r = runner.invoke(app, ["decode", str(tmp / "rx.tkp"), "--json"])
    info = json.loads(r.output.strip().splitlines()[-1])
    assert 0 < info["tokens_received"] < 64 and info["packets_received"] == report["datagrams_sent"] - report[
        "datagrams_lost"]
    r = runner.invoke(app, ["answer", str(tmp / "rx.tkp"), sample.question])
    assert r.exit_code == 0 and r.output.strip()
    # no loss: the received file answers as the file itself
    runner.invoke(app, ["channel", str(tmp / "scene.tcb"), "--loss", "0", "-o", str(tmp / "all.tkp")])
    assert said(runner.invoke(app, ["answer", str(tmp / "all.tkp"), sample.question]).output) == whole
    # a received capture can go over another channel; FEC and bursts are options
    r = runner.invoke(app, ["channel", str(tmp / "rx.tkp"), "--loss", "0.2", "--burst", "3",
                            "-o", str(tmp / "rx2.tkp")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["channel", str(tmp / "scene.tcb"), "--loss", "0.3", "--mtu", "128", "--fec", "0.5",
                            "--uep", "-o", str(tmp / "fec.tkp"), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["repair"] > 0


def test_nothing_arrived_gives_the_no_image_answer(sent):
    tmp, sample = sent
    r = runner.invoke(app, ["channel", str(tmp / "scene.tcb"), "--loss", "0.999", "--mtu", "128", "--seed", "1",
                            "-o", str(tmp / "none.tkp"), "--json"])
    assert json.loads(r.output)["datagrams_lost"] == json.loads(r.output)["datagrams_sent"]
    from tokencodec.channels.pixels import no_image
    from tokencodec.models.diagnostic import DiagnosticMLLM

    mllm = DiagnosticMLLM.from_pretrained()
    with torch.inference_mode():
        grey = mllm.answers[int(mllm.answer_logits([no_image((64, 64, 3))], [sample.question])[0].argmax())]
    r = runner.invoke(app, ["answer", str(tmp / "none.tkp"), sample.question])
    assert r.exit_code == 0 and said(r.output) == grey


def test_bad_channel_input_is_one_line_and_exit_code_2(sent, tmp_path):
    tmp, _ = sent
    for args in (["--loss", "1.5"], ["--burst", "0.5"], ["--mtu", "10"], ["--uep"], ["--ber", "0.9"]):
        r = runner.invoke(app, ["channel", str(tmp / "scene.tcb"), "-o", str(tmp_path / "x.tkp"), *args])
        assert r.exit_code == 2 and r.output.startswith("error:") and len(r.output.strip().splitlines()) <= 2, args
    (tmp_path / "junk.tcb").write_bytes(b"nothing")
    r = runner.invoke(app, ["channel", str(tmp_path / "junk.tcb"), "-o", str(tmp_path / "x.tkp")])
    assert r.exit_code == 2 and "junk.tcb" in r.output
    (tmp_path / "junk.tkp").write_bytes(b"TKPC\x01\x05\x00\x00\x00")
    assert runner.invoke(app, ["answer", str(tmp_path / "junk.tkp"), "what colour is the cross?"]).exit_code == 2
