"""The lmms-eval plugin end to end, offline: tiny LLaVA and Qwen2-VL checkpoints saved with save_pretrained,
a tiny local task, the real ``lmms-eval`` command line; then its results become a tokencodec curve."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("lmms_eval")

from tokencodec.integrations.lmms_results import curve_from_runs, parse_model_args, read_costs, run_config, run_id  # noqa: E402,I001
from tokencodec.integrations.lmms_task import write_task  # noqa: E402
from tokencodec.models.tiny import save_tiny  # noqa: E402

N = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    models = {f: save_tiny(f, root / f) for f in ("llava", "qwen2-vl", "llava-onevision")}
    write_task(root / "task", n=N)
    return root, models


def lmms_eval(root, model_args: str, batch_size: int = 1, out: str = "out", costs: str = "costs",
              ) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(root / "hf")}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tokencodec", "--model_args",
           f"{model_args},costs={root / costs}", "--tasks", "tokencodec_vqa", "--include_path", str(root / "task"),
           "--output_path", str(root / out), "--batch_size", str(batch_size), "--log_samples"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def costs_of(root, model_args: str, costs: str = "costs") -> list[dict]:
    (head, samples), = read_costs(root / costs / f"{run_id(parse_model_args(model_args))}.jsonl")
    assert head["config"]["pretrained"] == parse_model_args(model_args)["pretrained"]
    assert head["provenance"]["tokencodec"] and head["provenance"]["libraries"]["lmms-eval"]
    assert head["cost"]["flops_convention"] == "macs2" and head["cost"]["flops_parts"] == ["vision", "projector", "llm"]
    return samples


def test_lmms_eval_runs_methods_on_tiny_llava_and_qwen2_vl_and_results_become_a_curve(setup):
    root, models = setup
    runs = {"none": f"pretrained={models['llava']},method=none",
            "visionzip": f"pretrained={models['llava']},method=visionzip,keep=4",
            "qwen-divprune": f"pretrained={models['qwen2-vl']},method=divprune,keep=2"}
    for name, args in runs.items():
        done = lmms_eval(root, args)
        assert done.returncode == 0, (name, done.stdout[-3000:], done.stderr[-3000:])
        assert "exact_match" in done.stdout                          # lmms-eval printed its table
    full, pruned, qwen = (costs_of(root, a) for a in runs.values())
    assert len(full) == len(pruned) == len(qwen) == N               # one record per sample
    assert {s["tokens"] for s in full} == {16.0} and {s["tokens"] for s in pruned} == {4.0}   # the method ran
    assert {s["tokens"] for s in qwen} == {2.0} and {s["tokens_in"] for s in qwen} == {2.0}
    assert all(s["kv_bytes"] > 0 for s in qwen)
    assert full[0]["tokens_per_layer"] == [16] * 4 and pruned[0]["tokens_per_layer"] == [4] * 4
    assert all(p["flops"] < f["flops"] and p["latency_s"] > 0 for p, f in zip(pruned, full, strict=True))
    curve = curve_from_runs(sorted((root / "out").rglob("*_results.json")), root / "costs", "tokencodec_vqa",
                            "exact_match", "tiny")
    from tokencodec.models.hf import HFMLLM

    mllm = HFMLLM.load(str(models["llava"]))               # a prompt that already carries <image> (egothink)
    ids = mllm.inputs([np.zeros((32, 32, 3), np.uint8)], "USER: <image>\nis there a cat?")["input_ids"]
    assert int((ids == mllm.image_token_id).sum()) == 16
    assert sorted(p.values["tokens"] for p in curve.points) == [2.0, 4.0, 16.0]
    assert all(0 <= p.values["exact_match"] <= 1 for p in curve.points)
    assert curve.measures["exact_match"].higher_is_better


def test_lmms_eval_runs_a_method_on_tiny_llava_onevision(setup):
    root, models = setup
    args = f"pretrained={models['llava-onevision']},method=visionzip,keep=16"
    done = lmms_eval(root, args, out="out-ov")
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    samples = costs_of(root, args)
    assert len(samples) == N and all(s["flops"] > 0 and s["kv_bytes"] > 0 for s in samples)
    # 16 of the image's tokens plus its grid's newlines (kept); every sample's layout is its own image's
    assert all(s["tokens"] > 16 and s["tokens_per_layer"] == [s["tokens"]] * 4 for s in samples)


def test_a_batched_run_answers_and_costs_each_sample_as_batch_1_does(setup):
    root, models = setup
    args = f"pretrained={models['llava']},method=fastv,keep=4,opt_layer=2"
    answers, costs = {}, {}
    for b in (1, 3):                         # N = 4 samples: batches of 3 and 1
        done = lmms_eval(root, args, batch_size=b, out=f"out-b{b}", costs=f"costs-b{b}")
        assert done.returncode == 0, (b, done.stdout[-3000:], done.stderr[-3000:])
        logged, = (root / f"out-b{b}").rglob("*_samples_tokencodec_vqa.jsonl")
        answers[b] = {d["doc_id"]: d["filtered_resps"] for d in map(json.loads, logged.read_text().splitlines())}
        costs[b] = {s["doc_id"]: s for s in costs_of(root, args, f"costs-b{b}")}
    assert len(answers[3]) == len(costs[3]) == N and answers[3] == answers[1]       # each doc its own answer
    for doc, alone in costs[1].items():
        batched = costs[3][doc]
        assert {k: batched[k] for k in ("tokens", "tokens_in", "flops", "kv_bytes", "tokens_per_layer")} == \
            {k: alone[k] for k in ("tokens", "tokens_in", "flops", "kv_bytes", "tokens_per_layer")}
        assert batched["latency_s"] * batched["batch_size"] == pytest.approx(batched["batch_latency_s"])
    assert sorted(s["batch_size"] for s in costs[3].values()) == [1, 3, 3, 3]
    assert read_costs(root / "costs-b3" / f"{run_id(parse_model_args(args))}.jsonl")[0][0]["batch_size"] == 3


def test_run_ids_agree_between_the_command_line_and_the_plugin():
    a = parse_model_args("pretrained=/m,method=visionzip,keep=64,opt_layers=2,costs=/x")
    b = run_config("/m", "visionzip", 64, None, None, 0, "auto", None, {"layers": 2})
    assert a == b and run_id(a) == run_id(b)
    assert run_id(parse_model_args("pretrained=/m,method=visionzip,keep=0.50")) == \
        run_id(run_config("/m", "visionzip", 0.5))
    assert run_id(parse_model_args("pretrained=/m,method=visionzip,keep=32")) != run_id(a)


def test_the_plugin_refuses_bad_arguments(setup):
    from tokencodec.integrations.lmms_eval import TokencodecLMM

    _, models = setup
    with pytest.raises(ValueError, match="needs a budget"):
        TokencodecLMM(str(models["llava"]), method="visionzip")
    with pytest.raises(ValueError, match="unknown model_args"):
        TokencodecLMM(str(models["llava"]), method="visionzip", keep=4, kep=3)
    with pytest.raises(ValueError, match="one of keep, ratio, r"):
        TokencodecLMM(str(models["llava"]), method="visionzip", keep=4, ratio=0.5)
    with pytest.raises(ValueError, match="batch_size='auto:4': allowed a positive integer, or auto"):
        TokencodecLMM(str(models["llava"]), method="visionzip", keep=4, batch_size="auto:4")


def test_cost_sessions_are_kept_apart_and_joined_by_sample_count(tmp_path):
    from tokencodec.integrations.lmms_results import LmmsResultsError, matching_session

    path = tmp_path / "c.jsonl"
    rec = lambda k: json.dumps({"task": "t", "tokens": k})  # noqa: E731
    path.write_text("\n".join([json.dumps({"config": {}, "session": "a"}), rec(1), rec(1), rec(1),
                                json.dumps({"config": {}, "session": "b"}), rec(2), "{\"tok"]))
    sessions = read_costs(path)                                        # a torn last line is dropped
    assert [(h["session"], len(s)) for h, s in sessions] == [("a", 3), ("b", 1)]
    assert matching_session(path, "t", 3)[0]["session"] == "a"      # the rerun with --limit 1 is not it
    assert matching_session(path, "t", None)[0]["session"] == "b"
    with pytest.raises(LmmsResultsError, match=r"no session with 5 samples .* \[3, 1\]"):
        matching_session(path, "t", 5)


def test_booleans_and_placeholders():
    assert run_id(parse_model_args("pretrained=/m,method=x,keep=4,opt_merge=true")) == \
        run_id(run_config("/m", "x", 4, options={"merge": True}))
