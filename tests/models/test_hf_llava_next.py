"""LLaVA-NeXT through the real-model paths on a tiny save_pretrained checkpoint (tokencodec.models.tiny):
HFMLLM.load / inputs / generate, batches of images of different sizes, the cost of the AnyRes views, the
hf-mllm study observer and the lmms-eval plugin."""

import numpy as np
import pytest

pytest.importorskip("transformers")

from tokencodec.adapters.anyres import layout_for  # noqa: E402
from tokencodec.metrics.rates import CostModel  # noqa: E402
from tokencodec.models.hf import HFMLLM  # noqa: E402
from tokencodec.models.tiny import save_tiny  # noqa: E402
from tokencodec.tokens.compress import Budget  # noqa: E402

QUESTIONS = ("is there a cat?", "what colour is the circle in the image , answer using a single word or phrase ?",
             "how many squares?")
COUNTED = ("tokens_in", "tokens", "tokens_avg_layers", "flops", "kv_bytes")
SIZES = ((20, 50), (64, 64), (50, 20))          # 3, 5 and 3 views; 52, 88 and 56 image tokens


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny("llava-next", tmp_path_factory.mktemp("next") / "llava-next")


@pytest.fixture(scope="module")
def mllm(folder):
    return HFMLLM.load(str(folder))


def images(sizes=SIZES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def test_load_and_inputs_are_the_processors(mllm):
    assert mllm.family == "llava_next" and type(mllm.model).__name__ == "LlavaNextForConditionalGeneration"
    items = [([im], q) for im, q in zip(images(), QUESTIONS, strict=True)]
    kw = mllm.inputs_batch(items)
    assert set(kw) == {"input_ids", "attention_mask", "pixel_values", "image_sizes"}
    assert kw["image_sizes"].tolist() == [list(s) for s in SIZES]
    spans = [layout_for(mllm.model.config, s).length for s in SIZES]
    assert (kw["input_ids"] == mllm.image_token_id).sum(1).tolist() == spans == [52, 88, 56]
    assert bool((kw["attention_mask"][:, -1] == 1).all())                   # left-padded
    out = mllm.model(**kw)
    assert out.logits.shape[:2] == kw["input_ids"].shape


def test_the_vision_cost_counts_every_view(mllm):
    im = images()[1:2]                                     # 5 views, 88 tokens
    g = mllm.generate(im, QUESTIONS[0], max_new_tokens=2)
    kw = mllm.inputs(im, QUESTIONS[0])
    text = int(kw["attention_mask"].sum()) - 88
    cost = CostModel(mllm.cost_model.shape)
    assert g.rates["flops"] == cost.point([88] * 4, text, images=5)["flops"]
    assert g.rates["flops"] > cost.point([88] * 4, text, images=1)["flops"]
    pruned = mllm.generate(im, QUESTIONS[0], "visionzip", Budget(keep=4), max_new_tokens=2)
    assert pruned.record.extra["views"] == [5] and pruned.rates["tokens"] == 20.0      # 4 per view
    assert pruned.rates["flops"] == cost.point([20] * 4, text, images=5, projector_tokens=None)["flops"]


# (method, budget, adapter options): pre-LLM methods on images of three sizes (each row its own count), an
# in-LLM method (run in sub-batches of one image size), no method
CASES = {
    "visionzip": ("visionzip", Budget(keep=4), {}),
    "divprune": ("divprune", Budget(ratio=0.25), {}),
    "fastv": ("fastv", Budget(keep=8), {"layers": 2}),
    "none": (None, None, {}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_answers_and_counts_each_sample_as_it_does_alone(mllm, case):
    method, budget, options = CASES[case]
    sizes = ((20, 50), (64, 64), (20, 50)) if case == "fastv" else SIZES     # in-LLM: two of one size
    items = [([im], q) for im, q in zip(images(sizes), QUESTIONS, strict=True)]
    alone = [mllm.generate(ims, q, method, budget, max_new_tokens=6, **options) for ims, q in items]
    batch = mllm.generate_batch(items, method, budget, max_new_tokens=6, **options)
    for i, (a, g) in enumerate(zip(alone, batch, strict=True)):
        assert g.text == a.text, (i, g.text, a.text)
        assert g.tokens_per_layer == a.tokens_per_layer, i
        assert {k: g.rates[k] for k in COUNTED} == {k: a.rates[k] for k in COUNTED}, i
    tokens = [g.rates["tokens"] for g in batch]
    expected = {"visionzip": [12.0, 20.0, 12.0], "divprune": [13.0, 22.0, 14.0], "fastv": [8.0] * 3,
                "none": [52.0, 88.0, 56.0]}[case]
    assert tokens == expected
    grouped = [2.0, 1.0, 2.0] if case == "fastv" else [3.0] * 3          # fastv: sub-batches by image size
    assert [g.rates["batch_size"] for g in batch] == grouped


def test_the_study_observer_sweeps_a_method_on_llava_next(folder, tmp_path):
    pytest.importorskip("datasets")
    from tokencodec.bench.engine import run_sweep
    from tokencodec.integrations.lmms_task import write_task
    from tokencodec.observers import ObserverSpec
    from tokencodec.pipeline import PipelineSpec

    write_task(tmp_path / "task", n=3)
    spec = ObserverSpec("hf-mllm", {"model": str(folder), "max_new_tokens": 2})
    obs = spec.build()
    samples = obs.samples(dataset=str(tmp_path / "task" / "data"), limit=2)
    curves = run_sweep(obs, samples, [PipelineSpec(method="divprune", keep_ratios=(1.0, 0.25))], tmp_path / "out")
    quarter, full = curves["divprune"].points
    assert quarter.values["tokens"] < full.values["tokens"] and quarter.values["flops"] < full.values["flops"]
    assert full.values["agreement"] == 1.0


def test_the_lmms_eval_plugin_runs_llava_next(folder, tmp_path):
    pytest.importorskip("lmms_eval")
    import os
    import subprocess
    import sys

    from tokencodec.integrations.lmms_results import parse_model_args, read_costs, run_id
    from tokencodec.integrations.lmms_task import write_task

    write_task(tmp_path / "task", n=2)
    args = f"pretrained={folder},method=vispruner,keep=4"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "tokencodec", "--model_args",
           f"{args},costs={tmp_path / 'costs'}", "--tasks", "tokencodec_vqa", "--include_path",
           str(tmp_path / "task"), "--output_path", str(tmp_path / "out"), "--batch_size", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    (head, samples), = read_costs(tmp_path / "costs" / f"{run_id(parse_model_args(args))}.jsonl")
    assert len(samples) == 2 and all(s["tokens"] % 4 == 0 and s["tokens"] >= 8 for s in samples)   # 4 per view
