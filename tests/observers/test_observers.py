"""The observers: the diagnostic MLLM runs pre-LLM and in-LLM methods through the LLaVA adapter and
judges decoded pixels; EfficientNet-Lite0 judges real photos; every observer takes every codec."""

import pytest
import torch

from tokencodec.bench.engine import run_sweep
from tokencodec.observers import OBSERVERS, ObserverSpec, observer_for
from tokencodec.observers.diagnostic import DiagnosticObserver
from tokencodec.pipeline import PipelineError, PipelineSpec
from tokencodec.tokens.compress import METHODS
from tokencodec.tokens.compress.base import get_method, scaled_layers


@pytest.fixture(scope="module")
def diagnostic(tmp_path_factory):
    from tokencodec.models.diagnostic import DiagnosticMLLM, build_diagnostic_model, build_tokenizer

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("tiny-diagnostic")
    tokenizer = build_tokenizer()
    model = build_diagnostic_model(tokenizer, vision_hidden=32, vision_layers=3, vision_intermediate=64,
                                   text_hidden=32, text_layers=4, text_intermediate=64)
    DiagnosticMLLM(model, tokenizer).save_pretrained(folder)  # random weights: fidelity, not accuracy, is tested
    return DiagnosticObserver(weights=str(folder))


def test_scaled_layers_and_each_methods_layers_for_a_shallow_llm():
    assert scaled_layers([2], 32) == (2,)
    assert scaled_layers([3, 7, 16], 4) == (1, 2, 3)   # SparseVLM's pruning layers on a 4-layer LLM
    assert scaled_layers([8, 16, 24], 4) == (1, 2, 3)  # PyramidDrop
    # the method declares how its option maps: SparseVLM's layers score, the layer after prunes
    assert get_method("sparsevlm").layers_for(4) == (0, 1, 2)
    assert get_method("pyramiddrop").layers_for(4) == (1, 2, 3)
    assert get_method("fastv").layers_for(32) == (2,) and get_method("fastv").layers_for(4) == (1,)
    with pytest.raises(ValueError, match="too shallow"):
        scaled_layers([2], 1)


def test_every_method_the_mllm_takes_runs_through_the_llava_adapter(diagnostic, tmp_path):
    samples = diagnostic.samples(split="test", n=7)  # one sample of each question type
    assert len({s.payload.qtype for s in samples}) == 7
    # coded is a pipeline wrapper that needs a profile fitted to the model (tests/test_split.py runs it)
    names = [n for n in METHODS if DiagnosticObserver.method_support(METHODS.get(n)) is None and n != "coded"]
    assert {"sparsevlm", "dart", "prumerge+", "pool-resize", "fastv", "tome", "flowcut", "vispruner"} <= set(names)
    assert "cdpruner" not in names                     # no CLIP text tower (observer option embedding_space: below)
    curves = run_sweep(diagnostic, samples, [PipelineSpec(method=n, keep_ratios=(1.0, 0.25)) for n in names], tmp_path)
    assert {diagnostic.group(s.id) for s in samples} == {s.payload.qtype for s in samples}
    for name, curve in curves.items():
        small, full = curve.points                    # ascending rate
        assert full["object_recall"] == 1.0, name
        if not name.startswith("prumerge") and name != "visionzip":  # they merge even at keep 100 % (their cards)
            assert full["agreement"] == 1.0, name  # all tokens: the same answers
        assert full["tokens"] == 64 and full["tokens_avg_layers"] == 64
        assert small["flops"] < full["flops"], name
    assert curves["random"].points[0]["tokens"] == 16
    fastv = curves["fastv"].points[0]
    assert fastv["tokens"] == 16 and 16 < fastv["tokens_avg_layers"] < 64  # layer 0 sees all 64
    assert curves["random"].points[0]["object_recall"] < 1.0  # a quarter of the patches loses objects
    fastv_full = curves["fastv"].points[1]                  # points go up in rate (CompressAI's order)
    assert fastv_full["tokens_in"] == 64 and fastv["tokens_in"] == 64 and fastv["kv_bytes"] < fastv_full["kv_bytes"]
    cost = curves["fastv"].provenance["config"]["cost"]                 # how the rates were counted
    assert cost["flops_parts"] == ["vision", "projector", "llm"] and cost["flops_convention"] == "macs2"


def test_a_latency_device_adds_the_roofline_prediction(diagnostic, tmp_path):
    from tokencodec.metrics.rates import CostModel

    diagnostic.runner.cost = CostModel(diagnostic.runner.cost.shape, device="h200")
    try:
        samples = diagnostic.samples(split="test", n=2)
        curve = run_sweep(diagnostic, samples, [PipelineSpec(method="random", keep_ratios=(1.0, 0.25))],
                          tmp_path)["random"]
    finally:
        diagnostic.runner.cost = CostModel(diagnostic.runner.cost.shape)
    small, full = curve.points                              # points go up in rate
    assert 0 < small["latency_pred_s"] <= full["latency_pred_s"]
    assert curve.provenance["config"]["cost"]["latency_device_profile"]["name"] == "h200"


def test_the_mllm_judges_decoded_pixels_of_every_codec(diagnostic, tmp_path):
    from tokencodec.codecs import CODECS, get_codec

    samples = diagnostic.samples(split="test", n=3)
    specs = [PipelineSpec(codec=c, qualities=(get_codec(c).quality_range[0], get_codec(c).quality_range[1]))
             for c in CODECS]
    curves = run_sweep(diagnostic, samples, specs, tmp_path)
    for name, curve in curves.items():
        worst, best = curve.points  # ascending rate: lowest quality first
        assert worst["bpp"] < best["bpp"], name
        assert best["tokens"] == 64 and best["object_recall"] == 1.0  # no token method: every patch is seen
    assert set(curves["jpeg"].measures) >= {"bpp", "bits", "bytes", "accuracy", "agreement", "flops"}


def test_cdpruner_runs_on_the_diagnostic_mllm_only_under_its_named_deviation(diagnostic, tmp_path):
    cdpruner = get_method("cdpruner")
    assert "no CLIP text tower" in DiagnosticObserver.method_support(cdpruner)
    assert DiagnosticObserver.method_support(cdpruner, {"embedding_space": "llm-input"}) is None
    with pytest.raises(ValueError, match="embedding_space"):
        DiagnosticObserver(embedding_space="clip")
    diagnostic.runner.embedding_space = "llm-input"
    try:
        samples = diagnostic.samples(split="test", n=2)
        curve = run_sweep(diagnostic, samples, [PipelineSpec(method="cdpruner", keep_ratios=(0.25, 1.0))],
                          tmp_path)["cdpruner"]
        assert diagnostic.runner.key().endswith("-text-llm-input")      # its own cache entries
    finally:
        diagnostic.runner.embedding_space = None
    small, full = curve.points
    assert small["tokens"] == 16 and full["tokens"] == 64 and full["agreement"] == 1.0


def test_methods_an_observer_cannot_run_are_refused(diagnostic, tmp_path):
    with pytest.raises(PipelineError, match="no CLIP text tower"):      # CDPruner's relevance space
        run_sweep(diagnostic, diagnostic.samples(split="test", n=1),
                  [PipelineSpec(method="cdpruner", keep_ratios=(0.5,))], tmp_path)
    human = observer_for(ObserverSpec("human"))
    with pytest.raises(PipelineError, match="no token methods"):
        run_sweep(human, human.samples(dataset="embedded", limit=1), [PipelineSpec(method="random",
                                                                                   keep_ratios=(0.5,))], tmp_path)


def test_efficientnet_observer_on_real_photos(tmp_path):
    obs = observer_for(ObserverSpec("efficientnet-lite0"))
    samples = obs.samples(dataset="embedded", limit=2, crops=1)
    assert [s.id for s in samples] == ["astronaut/full", "astronaut/tl", "chelsea/full", "chelsea/tl"]
    curves = run_sweep(obs, samples, [PipelineSpec(method="random", keep_ratios=(1.0, 0.125)),
                                      PipelineSpec(codec="jpeg", qualities=(95, 5))], tmp_path)
    full = curves["random"].points[1]                  # ascending rate: keep 0.125, then keep 1
    assert full["top1_agreement"] == 1.0 and full["kl"] == pytest.approx(0.0, abs=1e-5)
    assert curves["random"].points[0]["tokens"] == 6.0  # round(49 × 0.125)
    jpeg = curves["jpeg"]
    assert jpeg.points[0]["kl"] > jpeg.points[1]["kl"] > 0  # quality 5 moves the classifier more than 95


def test_registry_lists_the_observers():
    assert {"human", "efficientnet-lite0", "diagnostic-mllm"} <= set(OBSERVERS.names())


def test_efficientnet_view_samples_are_what_the_model_sees():
    photo = observer_for(ObserverSpec("efficientnet-lite0"))
    view = observer_for(ObserverSpec("efficientnet-lite0", {"view": True}))
    a, b = photo.samples(dataset="embedded", limit=1)[0], view.samples(dataset="embedded", limit=1)[0]
    assert b.image.shape == (224, 224, 3) and a.id == b.id and view.key() != photo.key()
    assert torch.equal(photo.prepare(a).reference, view.prepare(b).reference)   # same pixels reach the model
