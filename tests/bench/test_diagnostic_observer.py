"""The diagnostic-MLLM observer runs pre-LLM and in-LLM methods through the LLaVA adapter."""

import pytest
import torch

from tokencodec.bench.observers import DiagnosticObserver, scaled_layers
from tokencodec.bench.token_report import write_report
from tokencodec.bench.token_sweep import MethodSpec, run_token_sweep
from tokencodec.tokens.compress import METHODS


@pytest.fixture(scope="module")
def observer(tmp_path_factory):
    from tokencodec.models.diagnostic import DiagnosticMLLM, build_diagnostic_model, build_tokenizer

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny-diagnostic")
    tokenizer = build_tokenizer()
    model = build_diagnostic_model(tokenizer, vision_hidden=32, vision_layers=2, vision_intermediate=64,
                                   text_hidden=32, text_layers=4, text_intermediate=64)
    DiagnosticMLLM(model, tokenizer).save_pretrained(folder)  # random weights: fidelity, not accuracy, is tested
    return DiagnosticObserver(weights=str(folder))


def test_scaled_layers():
    assert scaled_layers([2], 32) == [2]
    assert scaled_layers([2, 6, 15], 4) == [1, 2, 3]   # SparseVLM on a 4-layer LLM
    assert scaled_layers([8, 16, 24], 4) == [1, 2, 3]  # PyramidDrop
    with pytest.raises(ValueError, match="too shallow"):
        scaled_layers([2], 1)


def test_sweep_over_pre_llm_and_in_llm_methods(observer, tmp_path):
    samples = observer.samples("test", n=7)  # one sample of each question type
    assert len({s.payload.qtype for s in samples}) == 7
    # every method the observer takes, with its layers mapped onto the 4-layer LLM (as in the shipped study)
    specs = [MethodSpec(name) for name in METHODS if observer.supports(METHODS.get(name))]
    assert {"sparsevlm", "dart", "prumerge+", "pool-resize"} <= {s.name for s in specs}
    curves = run_token_sweep(observer, samples, specs, [1.0, 0.25], tmp_path)
    assert {observer.group(s.id) for s in samples} == {s.payload.qtype for s in samples}
    for name, curve in curves.items():
        full, small = curve.points
        assert full["object_recall"] == 1.0, name
        if not name.startswith("prumerge"):  # PruMerge merges neighbours into kept tokens even at keep 100 %
            assert full["agreement"] == 1.0, name  # all tokens: the same answers
        assert full["tokens"] == 64 and full["tokens_avg_layers"] == 64
        assert small["flops"] < full["flops"], name
    assert curves["random"].points[1]["tokens"] == 16
    fastv = curves["fastv"].points[1]
    assert fastv["tokens"] == 16 and 16 < fastv["tokens_avg_layers"] < 64  # layer 0 sees all 64
    assert curves["random"].measures["object_recall"].higher_is_better  # a known measure, for BD fits
    md = write_report(curves, tmp_path / "report", "t", "random", ["accuracy", "object_recall"],
                      rates=["tokens", "flops"], group_of=observer.group)["markdown"].read_text()
    assert "## BD metrics against the anchor, flops as the rate" in md and "| fastv | accuracy |" in md
    assert "## accuracy per group" in md  # question types are the columns
    assert "| method | keep ratio | colour | compare | count | exist | relation | shape | small_colour |" in md
    assert curves["random"].points[1]["object_recall"] < 1.0  # a quarter of the patches loses objects


def test_efficientnet_only_methods_are_refused_on_the_mllm(observer, tmp_path):
    with pytest.raises(ValueError, match="does not run on observer 'diagnostic-mllm'"):
        run_token_sweep(observer, observer.samples("test", n=1), [MethodSpec("tome")], [0.5], tmp_path)
