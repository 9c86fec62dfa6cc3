"""benchmarks/gpu_prefill.py on CPU: the --quick run CI runs, its JSON, bad input, the CUDA-graph wrapper's plumbing.

The GPU columns cannot be checked here; what can is: every row is measured and costed through the one cost
path, the ratios are finite, the CUDA-only columns say so, bad input stops before a model is built, and
``LLMGraph`` (the ``--graphs`` wrapper) gives the eager logits when its capture is replaced by a CPU stand-in
with the same semantics (static inputs copied in, the captured output rewritten by each replay).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_prefill.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_prefill", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module          # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


RATIOS = ("speedup", "speedup_flops", "speedup_roofline", "measured_over_flops", "measured_over_roofline")


def test_quick_run_measures_and_costs_every_row(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    env.pop("TOKENCODEC_CHECK_VALUES", None)
    done = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_prefill.json").read_text())
    rows = result["rows"]
    # 2 tiny models × batch 1, 2 × (none + visionzip + fastv at K = 8)
    assert [(r["model"], r["batch"], r["method"]) for r in rows] == [
        (m, b, x) for m in ("tiny-llava", "tiny-qwen2-vl") for b in (1, 2) for x in ("none", "visionzip", "fastv")]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["mode"] == "eager" and len(r["wall_ms_all"]) == 3 and r["wall_ms"] > 0
        assert r["aten_ops"] > 100 and r["host_syncs_all"] >= r["host_syncs_tokencodec"] >= 0
        for name in ("kernel_ms", "gpu_ops", "host_syncs_torch", "peak_bytes"):
            assert r[name] is None                                  # CUDA only
        for name in (*RATIOS, "pred_ms", "flops", "kv_bytes"):
            assert math.isfinite(r[name]) and r[name] > 0, (name, r)
        if r["method"] == "none":
            assert r["speedup"] == r["speedup_flops"] == r["speedup_roofline"] == 1
            assert r["tokens_in"] == r["tokens"] == 16 and r["keep"] is None
        elif r["method"] == "visionzip":
            assert r["tokens_in"] == r["tokens"] == 8 and r["speedup_flops"] > 1
            assert r["extra_aten_ops"] > 0                          # what the method launches enters the roofline
        else:                                                       # FastV prunes at LLM layer 2 of 4
            assert (r["tokens_in"], r["tokens"], r["tokens_avg_layers"]) == (16, 8, 12)
    assert set(result["not_measured"]) == {"kernel_ms", "gpu_ops", "host_syncs_torch", "peak_bytes"}
    prov = result["provenance"]
    assert {"torch", "transformers"} <= set(prov["packages"]) and prov["hardware"]["device"] == "cpu"
    assert prov["seed"] == 0 and prov["config"]["roofline_profile"] == "cpu" and prov["config"]["quick"]
    assert set(prov["cost"]) == {"tiny-llava", "tiny-qwen2-vl"}
    table = done.stdout.splitlines()
    assert len(table) == 2 + len(rows) and "n/a (cpu)" in table[2] and "meas÷roof" in table[0]


def test_the_flops_come_from_the_one_cost_path(bench, tmp_path):
    import tokencodec.tokens.batch
    from tokencodec.metrics.cost import MLLMShape, kv_cache_bytes, prefill_flops

    checks = tokencodec.tokens.batch.CHECK_VALUES
    assert bench.main(["--quick", "--models", "llava", "--methods", "visionzip", "--batch", "1", "--repeats", "1",
                       "--out", str(tmp_path)]) == 0
    assert tokencodec.tokens.batch.CHECK_VALUES == checks        # measured with checks off, then restored
    rows = {r["method"]: r for r in json.loads((tmp_path / "gpu_prefill.json").read_text())["rows"]}
    shape = MLLMShape.from_config(bench.llava_config(quick=True))
    for method, visual in (("none", 16), ("visionzip", 8)):
        assert rows[method]["flops"] == prefill_flops(shape, visual, bench.TEXT_TOKENS).total
        assert rows[method]["kv_bytes"] == kv_cache_bytes(shape.text, visual, bench.TEXT_TOKENS)


@pytest.mark.parametrize(("argv", "says"), [
    (["--methods", "nosuch"], "--methods nosuch: unknown image method"),
    (["--methods", "coded"], "not benchmarked"),
    (["--methods", "tome", "--models", "qwen2-vl"], "no chosen model's family supports it"),
    (["--keep", "17"], "--keep 17: tiny-llava has 16 image tokens"),
    (["--model", "/nonexistent/folder"], "no config.json"),
    (["--batch", "0"], "--batch 0"),
    (["--profile", "h300"], "--profile 'h300'"),
    (["--keep", "x"], "invalid int value"),
])
def test_bad_input_stops_before_any_model_is_built(bench, monkeypatch, capsys, argv, says):
    monkeypatch.setattr(bench, "build", lambda *a: pytest.fail("a model was built"))
    try:
        code = bench.main(["--quick", *argv])
    except SystemExit as stop:           # argparse's own errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("argv", [["--quick", "--graphs"], ["--quick", "--device", "cuda"], []])
def test_cuda_options_without_cuda_exit_2(bench, monkeypatch, capsys, argv):
    monkeypatch.setattr(bench, "build", lambda *a: pytest.fail("a model was built"))
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and ("CUDA" in err or "cuda" in err), err


def test_help_names_the_options(bench, capsys):
    with pytest.raises(SystemExit) as stop:
        bench.main(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    for option in ("--graphs", "--quick", "--model", "--methods", "--keep", "--batch", "--profile", "--out"):
        assert option in out


@pytest.mark.parametrize("family", ["llava", "qwen2-vl"])
def test_a_checkpoint_folder_runs_through_hfmllm(bench, tmp_path, family):
    from tokencodec.models.tiny import save_tiny

    folder = save_tiny(family, tmp_path / "ckpt")
    assert bench.main(["--quick", "--model", str(folder), "--methods", "random", "--batch", "1", "--repeats", "1",
                       "--out", str(tmp_path / "out")]) == 0
    rows = json.loads((tmp_path / "out" / "gpu_prefill.json").read_text())["rows"]
    assert [(r["method"], r["status"]) for r in rows] == [("none", "ok"), ("random", "ok")]
    config = bench.specs_from_args(bench.parse_args(["--quick", "--model", str(folder)]))[0]
    assert rows[0]["tokens_in"] == config.n_visual == 16     # the image tokens, known before the model is built
    assert rows[1]["tokens_in"] == 8


def cpu_capture(run):
    """A CPU stand-in for a CUDA graph: capture runs once; replay reruns on the (static) inputs and writes the
    result into the captured output, as a graph's kernels rewrite its memory."""
    output = run()

    def replay():
        output.last_hidden_state.copy_(run().last_hidden_state)
    return replay, output


@pytest.mark.parametrize(("family", "method"), [("llava", "visionzip"), ("llava", None), ("llava", "random"),
                                                ("qwen2-vl", "divprune"), ("qwen2-vl", None)])
def test_llm_graph_gives_the_eager_logits(bench, family, method):
    import tokencodec
    from tokencodec.tokens.compress import Budget

    torch.set_num_threads(1)
    spec = bench.specs_from_args(bench.parse_args(["--quick", "--models", family]))[0]
    model, inputs_for = bench.build(spec, torch.device("cpu"), 0)
    first = inputs_for(2)
    second = {k: (v.flip(0) + 0.5 if v.is_floating_point() else v) for k, v in first.items()}   # other pixels
    lm = model.model.language_model

    def logits(inputs):
        with torch.no_grad():
            return model(**inputs, logits_to_keep=1).logits.clone()

    def patched():
        return tokencodec.compress(model, method, Budget(keep=8)) if method else torch.no_grad()

    with patched():
        eager = [logits(first), logits(second)]
    seen = []
    capture = lambda run: cpu_capture(lambda: seen.append(1) or run())    # noqa: E731 - counts the LLM runs
    with patched(), bench.LLMGraph(lm, capture=capture) as graph:
        graphed = [logits(first), logits(second), logits(first)]
        assert graph.captured == 1 and len(seen) == 4     # one shape: captured once, replayed three times
    assert "forward" not in vars(lm)                       # the class forward is back
    for got, want in zip(graphed, [*eager, eager[0]], strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert not torch.equal(eager[0], eager[1])             # the replays read each call's own inputs


@pytest.mark.parametrize(("name", "parameters"), [("llava", 7.06e9), ("qwen2-vl", 8.29e9)])
def test_the_real_size_configs_are_the_measured_shapes(bench, name, parameters):
    """The configs the GPU run builds: on the meta device (no memory), the parameter counts of the H200 run
    (gpu-measurements.md) and the shapes the roofline was checked against."""
    import transformers

    from tokencodec.metrics.cost import LLAVA_1_5_7B, MLLMShape
    from tokencodec.metrics.roofline import QWEN2_VL_7B

    spec = bench.specs_from_args(bench.parse_args(["--models", name]))[0]
    assert spec.n_visual == 576 and spec.folder is None
    cls = (transformers.LlavaForConditionalGeneration if name == "llava"
           else transformers.Qwen2VLForConditionalGeneration)
    with torch.device("meta"):
        model = cls._from_config(spec.config, dtype=torch.bfloat16, attn_implementation="sdpa")
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(parameters, rel=5e-3)
    shape = MLLMShape.from_config(model.config)
    want = LLAVA_1_5_7B if name == "llava" else QWEN2_VL_7B
    assert shape.text.num_layers == want.text.num_layers and shape.projector == want.projector
    assert (shape.text.hidden, shape.text.intermediate, shape.text.num_kv_heads) == (
        want.text.hidden, want.text.intermediate, want.text.num_kv_heads)
    assert (shape.vision.num_layers, shape.vision.hidden, shape.vision.patch_size) == (
        want.vision.num_layers, want.vision.hidden, want.vision.patch_size)
