"""Split inference with token bitstreams: encode on the sender, decode / answer on the receiver (the CLI),
and the coded pipeline module (a study point's bits are the file's bytes)."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("constriction")

from tokencodec.cli import app  # noqa: E402
from tokencodec.data.vqa import VQADataset  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    s = VQADataset("test", 8, 0)[1]                   # a small-object colour question
    path = tmp_path_factory.mktemp("split") / "scene.png"
    Image.fromarray(s.image).save(path)
    return path, s


def test_encode_decode_answer_from_the_file_alone(scene, tmp_path):
    path, s = scene
    out = tmp_path / "scene.tcb"
    r = runner.invoke(app, ["encode", str(path), "-o", str(out), "--keep", "64", "--step", "0.5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["decode", str(out), "--json", "--tokens", str(tmp_path / "t.safetensors")])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output.strip().splitlines()[-1])
    assert info["tokens"] == 64 and info["grid"] == [8, 8] and info["dim"] == 64
    assert info["total_bits"] == 8 * out.stat().st_size == info["header_bits"] + info["position_bits"] + \
        info["payload_bits"]
    assert info["position_bits"] == 0                  # every token kept: no positions to send
    from safetensors.numpy import load_file

    saved = load_file(str(tmp_path / "t.safetensors"))
    assert saved["features"].shape == (64, 64) and saved["positions"].tolist() == list(range(64))
    r = runner.invoke(app, ["answer", str(out), s.question])
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith(s.answer)      # the fine step keeps what the model needs


def test_bad_files_get_one_line_and_exit_code_2(scene, tmp_path):
    path, _ = scene
    good = tmp_path / "good.tcb"
    assert runner.invoke(app, ["encode", str(path), "-o", str(good), "--keep", "8", "--step", "2"]).exit_code == 0
    data = good.read_bytes()
    cases = {"truncated.tcb": data[:-5], "corrupt.tcb": data[:40] + bytes([data[40] ^ 4]) + data[41:],
             "version.tcb": data[:4] + b"\x09" + data[5:], "junk.tcb": b"hello world, not tokens at all!!!!!!!"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        r = runner.invoke(app, ["decode", str(tmp_path / name)])
        assert r.exit_code == 2 and "Traceback" not in r.output, (name, r.output)
        assert name in r.output and len(r.output.strip().splitlines()) <= 2, r.output
    r = runner.invoke(app, ["encode", str(path), "-o", str(tmp_path / "x.tcb"), "--step", "3"])
    assert r.exit_code == 2 and "shipped profiles" in r.output
    r = runner.invoke(app, ["encode", str(path), "-o", str(tmp_path / "x.tcb"), "--method", "fastv"])
    assert r.exit_code == 2 and "pre-LLM" in r.output
    r = runner.invoke(app, ["answer", str(good), "what is the meaning of life?"])
    assert r.exit_code == 2 and "vocabulary" in r.output


def test_coded_pipeline_reports_the_bitstream_bits(tmp_path):
    from tokencodec.bench.engine import run_sweep
    from tokencodec.observers import ObserverSpec, observer_for
    from tokencodec.pipeline import PipelineSpec

    obs = observer_for(ObserverSpec("diagnostic-mllm"))
    samples = obs.samples(split="test", n=7)
    spec = PipelineSpec(method="coded", options={"inner": "rdo", "profile": "diagnostic-mllm/step-2"},
                        keep_ratios=(1.0, 0.25))
    quarter, full = run_sweep(obs, samples, [spec], tmp_path)[spec.label].points   # ascending rate
    for p in (full, quarter):
        assert p["bits"] == 8 * p["bytes"] and p["bpp"] == pytest.approx(p["bits"] / (64 * 64))
        assert p["payload_bpp"] < p["bpp"] and p["ideal_bits"] <= p["bits"]
    assert quarter["bits"] < full["bits"] and quarter["tokens"] == 16
    with pytest.raises(Exception, match="shipped profiles"):
        run_sweep(obs, samples[:1], [PipelineSpec(method="coded", options={"profile": "nope/step-1"},
                                                  keep_ratios=(0.5,))], tmp_path / "x")
    assert np.isfinite(full["accuracy"])


def test_efficientnet_sender_and_classify_receiver(tmp_path):
    from skimage import data

    from tokencodec.models.efficientnet_lite0 import EfficientNetLite0, imagenet_class_names, preprocess

    Image.fromarray(data.coffee()).save(tmp_path / "coffee.png")
    out = tmp_path / "coffee.tcb"
    r = runner.invoke(app, ["encode", str(tmp_path / "coffee.png"), "-o", str(out), "--observer", "efficientnet-lite0",
                            "--method", "random", "--keep", "49", "--profile", "step-0.5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["classify", str(out), "--top", "1"])
    assert r.exit_code == 0, r.output
    import torch

    with torch.inference_mode():
        want = imagenet_class_names()[int(EfficientNetLite0.from_pretrained()(preprocess(data.coffee(), 224)).argmax())]
    assert r.output.strip().endswith(want)                  # the fine step keeps the uncompressed top-1
    r = runner.invoke(app, ["answer", str(out), "what colour is the circle?"])
    assert r.exit_code == 2 and "answer reads files of diagnostic-mllm" in r.output
    r = runner.invoke(app, ["encode", str(tmp_path / "coffee.png"), "-o", str(out), "--observer", "efficientnet-lite0",
                            "--method", "visionzip", "--profile", "step-1"])
    assert r.exit_code == 2 and "attention" in r.output


def test_fashion_vit_sender_sends_the_cls_and_the_receiver_classifies(tmp_path):
    import torch

    from tokencodec.data.fashion_mnist import CLASSES, load_fashion_mnist
    from tokencodec.models.fashion_vit import FashionViT, preprocess

    images, _ = load_fashion_mnist("test")
    Image.fromarray(images[0]).save(tmp_path / "item.png")
    out = tmp_path / "item.tcb"
    r = runner.invoke(app, ["encode", str(tmp_path / "item.png"), "-o", str(out), "--observer", "fashion-vit",
                            "--method", "random", "--keep", "98", "--profile", "step-0.5"])
    assert r.exit_code == 0, r.output
    info = json.loads(runner.invoke(app, ["decode", str(out), "--json"]).output.strip().splitlines()[-1])
    assert info["tokens"] == 98 and info["grid"] == [14, 14] and info["dim"] == 64
    r = runner.invoke(app, ["classify", str(out), "--top", "1"])
    assert r.exit_code == 0, r.output
    with torch.inference_mode():
        want = CLASSES[int(FashionViT.from_pretrained()(preprocess(images[:1])).argmax())]
    assert r.output.strip().endswith(want)
    r = runner.invoke(app, ["encode", str(tmp_path / "item.png"), "-o", str(out), "--observer", "fashion-vit",
                            "--keep", "197"])
    assert r.exit_code == 2 and "between 1 and 196" in r.output


def test_coded_on_the_vit_codes_the_cls_and_the_later_layers_read_it(tmp_path):
    from tokencodec.bench.engine import run_sweep
    from tokencodec.observers import ObserverSpec, observer_for
    from tokencodec.pipeline import PipelineSpec

    obs = observer_for(ObserverSpec("fashion-vit"))
    samples = obs.samples(split="test", limit=12)
    specs = [PipelineSpec(method="coded", options={"inner": "random", "profile": f"fashion-vit/{p}"},
                          keep_ratios=(1.0,)) for p in ("step-0.5", "vq-256")]
    fine, coarse = (run_sweep(obs, samples, specs, tmp_path)[s.label].points[0] for s in specs)
    assert fine["top1_agreement"] >= 0.9                                    # the fine step keeps the decisions
    assert fine["kl"] < coarse["kl"]                                        # a coarser CLS and tokens cost fidelity
    assert coarse["bits"] < fine["bits"] and fine["bits"] == 8 * fine["bytes"]


def test_encode_runs_on_every_split_observer_with_its_own_defaults(tmp_path):
    # the observer's shipped profiles and supported methods decide the defaults, not one global choice
    from skimage import data

    from tokencodec.split import shipped_profiles, split_observers, splitter

    Image.fromarray(data.coffee()).save(tmp_path / "photo.png")
    from tokencodec.models.diagnostic import IMAGE_SIZE

    assert split_observers() == ["diagnostic-mllm", "efficientnet-lite0", "fashion-vit"]
    assert splitter("diagnostic-mllm").input_size == IMAGE_SIZE
    for observer in split_observers():
        defaults = splitter(observer).defaults
        assert defaults["profile"] in shipped_profiles(observer)
        out = tmp_path / f"{observer}.tcb"
        r = runner.invoke(app, ["encode", str(tmp_path / "photo.png"), "-o", str(out), "--observer", observer])
        assert r.exit_code == 0, (observer, r.output)
        info = json.loads(runner.invoke(app, ["decode", str(out), "--json"]).output.strip().splitlines()[-1])
        assert info["tokens"] == defaults["keep"], observer
