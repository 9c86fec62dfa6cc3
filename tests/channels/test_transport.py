"""The ``channel`` pipeline module: validated in study files, run after the coded token method and after a
pixel codec, judged by the diagnostic MLLM; equal bits for equal and unequal protection."""

import json

import numpy as np
import pytest

pytest.importorskip("constriction")
pytest.importorskip("raptorq")

from tokencodec.bench.study import StudyError, parse_study, run_study  # noqa: E402
from tokencodec.channels.transport import ChannelSpec, send  # noqa: E402


def study(pipelines, n=6):
    return parse_study({"name": "channel-test", "observer": "diagnostic-mllm",
                        "data": {"split": "test", "n": n, "seed": 0}, "pipelines": pipelines})


TOKENS = {"method": "coded", "options": {"inner": "rdo", "profile": "diagnostic-mllm/step-4"}, "keep_ratios": [1.0]}


def test_study_files_check_the_channel_before_any_work():
    ok = study([{**TOKENS, "channel": {"losses": [0, 0.2], "mtu": 128, "budget": 900, "uep": True}}])
    assert ok.pipelines[0].knob == "loss" and ok.pipelines[0].points()[1] == {"loss": 0.2, "keep_ratio": 1.0}
    bad = [
        ({**TOKENS, "channel": {"losses": [0.1], "lossy": 1}}, "unknown keys"),
        ({**TOKENS, "channel": {"losses": [1.0]}}, "loss rate of 1"),
        ({**TOKENS, "channel": {"losses": [0.1], "uep": True}}, "uep needs FEC"),
        ({**TOKENS, "channel": {"losses": [0.1], "fec": 0.5, "budget": 900}}, "not both"),
        ({**TOKENS, "channel": {"losses": [0.1], "priority": "loudest"}}, "priority"),
        ({**TOKENS, "channel": {"losses": [0.6], "burst": 1.2}}, "too much loss"),
        ({**TOKENS, "keep_ratios": [1.0, 0.5], "channel": {"losses": [0.1]}}, "ONE quality or keep ratio"),
        ({"method": "rdo", "keep_ratios": [0.5], "channel": {"losses": [0.1]}}, "method 'coded'"),
        ({"codec": "jpeg-rst", "qualities": [80], "channel": {"losses": [0.1], "mtu": 20}}, "mtu"),
    ]
    for entry, message in bad:
        with pytest.raises(StudyError, match=message):
            study([entry])


def test_unequal_protection_spends_the_same_bits_as_equal_protection():
    packets = [bytes([i]) * (60 + 7 * i) for i in range(6)]
    eep = send(packets, ChannelSpec(budget=1000), 0.0, "k")[1]
    uep = send(packets, ChannelSpec(budget=1000, uep=True), 0.0, "k")[1]
    assert eep["bytes"] == uep["bytes"] <= 1000 and eep["repair"] == uep["repair"] > 0


def test_a_channel_study_over_tokens_and_pixels(tmp_path):
    losses = [0, 0.5]
    s = study([
        {**TOKENS, "name": "tok", "channel": {"losses": losses, "mtu": 128}},
        {**TOKENS, "name": "tok-uep", "channel": {"losses": losses, "mtu": 128, "budget": 900, "uep": True}},
        {**TOKENS, "name": "tok-eep", "channel": {"losses": losses, "mtu": 128, "budget": 900}},
        {"name": "j2k", "codec": "jpeg2000-plt", "qualities": [35], "channel": {"losses": losses, "mtu": 128}},
        {"name": "plain", **TOKENS},
    ])
    result = run_study(s, tmp_path, write_report=False)
    curves = result["curves"]
    records = [json.loads(line) for line in (tmp_path / "points.jsonl").read_text().splitlines()]
    by = {(r["pipeline"], r["knob"].get("loss"), r["sample"]): r for r in records}
    for r in records:
        if r["pipeline"] == "plain":
            continue
        clean = r["knob"]["loss"] == 0
        assert (r["delivered"] == 1.0) if clean else 0 <= r["delivered"] <= 1
        assert r["bits"] == 8 * r["bytes"] and r["bytes"] >= r["packet_bytes"]
        if r["pipeline"] in ("tok-uep", "tok-eep"):
            # repair fills the budget; a stream already over it goes without FEC
            assert (r["bytes"] <= 900 and r["repair"] > 0) or (r["repair"] == 0 and r["bytes"] == r["packet_bytes"])
            assert r["bytes"] == by[("tok-eep" if r["pipeline"] == "tok-uep" else "tok-uep",
                                     r["knob"]["loss"], r["sample"])]["bytes"]          # equal bits, per image
    # no loss: every token arrives and the answers are those of the coded tokens without a channel
    plain = {r["sample"]: r for r in records if r["pipeline"] == "plain"}
    for r in records:
        if r["pipeline"] == "tok" and r["knob"]["loss"] == 0:
            assert r["accuracy"] == plain[r["sample"]]["accuracy"] and r["tokens"] == plain[r["sample"]]["tokens"]
            assert r["file_bytes"] == plain[r["sample"]]["bytes"] < r["packet_bytes"]
    # half the packets lost: fewer tokens reach the model
    lossy = [r for r in records if r["pipeline"] == "tok" and r["knob"]["loss"] == 0.5]
    assert np.mean([r["tokens"] for r in lossy]) < 64 and np.mean([r["delivered"] for r in lossy]) < 1
    curve = curves["tok"]
    assert curve.knob == "loss" and [p.knob for p in curve.points] == losses
    channel = curve.provenance["config"]["channel"]
    assert channel["mtu"] == 128 and channel["models"][1]["packets"]["name"] == "erasure"
    assert "no_image" in curve.provenance["config"]["channel"]
    assert "raptorq" in curves["tok-uep"].provenance["libraries"]


def test_the_same_seed_replays_the_same_losses(tmp_path):
    s = study([{**TOKENS, "name": "tok", "channel": {"losses": [0.3], "mtu": 128, "burst": 3}}], n=4)
    paths = run_study(s, tmp_path / "a")["paths"]          # a channel study's report: metric against loss
    assert paths["html"].name == "accuracy_vs_loss.png" and paths["html"].stat().st_size > 10_000
    assert "| tok |" in paths["markdown"].read_text()
    run_study(s, tmp_path / "b", write_report=False)
    keep = ("datagrams_lost", "delivered", "accuracy", "tokens")
    read = [[{k: r[k] for k in keep} for r in map(json.loads, (tmp_path / d / "points.jsonl").read_text().splitlines())]
            for d in "ab"]
    assert read[0] == read[1]
