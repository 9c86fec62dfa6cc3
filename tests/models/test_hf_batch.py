"""Batch > 1 on real-model checkpoints: a left-padded batch answers and counts each sample as it does alone.

Tiny random-weight LLaVA and Qwen2-VL checkpoints (tokencodec.models.tiny), prompts of different lengths (and,
on Qwen2-VL, images of different sizes), so the padding matters: without left padding the answers differ."""

import numpy as np
import pytest

pytest.importorskip("transformers")

from tokencodec.models.hf import HFMLLM  # noqa: E402
from tokencodec.models.tiny import save_tiny  # noqa: E402
from tokencodec.tokens.compress import Budget, get_method  # noqa: E402

QUESTIONS = ("is there a cat?", "what colour is the circle in the image , answer using a single word or phrase ?",
             "how many squares?")
COUNTED = ("tokens_in", "tokens", "tokens_avg_layers", "flops", "kv_bytes")
NEW = 6


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    return {f: HFMLLM.load(str(save_tiny(f, root / f))) for f in ("llava", "qwen2-vl", "llava-onevision")}


def images(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in sizes]


def assert_batch_equals_alone(mllm, items, method, budget, **options):
    alone = [mllm.generate(ims, q, method, budget, max_new_tokens=NEW, **options) for ims, q in items]
    batch = mllm.generate_batch(items, method, budget, max_new_tokens=NEW, **options)
    assert len(batch) == len(items)
    for i, (a, g) in enumerate(zip(alone, batch, strict=True)):
        assert g.text == a.text, (i, g.text, a.text)
        assert g.tokens_per_layer == a.tokens_per_layer, i
        assert {k: g.rates[k] for k in COUNTED} == {k: a.rates[k] for k in COUNTED}, i
        assert g.rates["latency_s"] * g.rates["batch_size"] == pytest.approx(g.rates["batch_latency_s"])
        assert a.rates["batch_size"] == 1 and a.rates["latency_s"] == a.rates["batch_latency_s"] > 0
    return alone, batch


# (family, method, budget, adapter options, image sizes): a pre-LLM and an in-LLM method on each family
CASES = {
    "llava-visionzip": ("llava", "visionzip", Budget(keep=4), {}, (32, 32, 32)),
    "llava-fastv": ("llava", "fastv", Budget(keep=4), {"layers": 2}, (32, 32, 32)),
    # one budget ratio, three image sizes: each row keeps its own count (4, 8, 2), rows re-padded on the left
    "qwen-divprune": ("qwen2-vl", "divprune", Budget(ratio=0.5), {}, (84, 112, 56)),
    "qwen-fastv": ("qwen2-vl", "fastv", Budget(keep=4), {"layers": 2}, (84, 84, 84)),
    "llava-none": ("llava", None, None, {}, (32, 32, 32)),
    # LLaVA-OneVision: one image size per batch under a method (its AnyRes layout); 2 views of 64 + 8·(8 + 1)
    "ov-divprune": ("llava-onevision", "divprune", Budget(keep=16), {}, (32, 32, 32)),
    "ov-fastv": ("llava-onevision", "fastv", Budget(keep=16), {"layers": 2}, (32, 32, 32)),
    "ov-none": ("llava-onevision", None, None, {}, (32, 48, 40)),
    "qwen-none": ("qwen2-vl", None, None, {}, (84, 112, 56)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_batch_answers_and_counts_each_sample_as_it_does_alone(models, case):
    family, method, budget, options, sizes = CASES[case]
    mllm = models[family]
    items = [([im], q) for im, q in zip(images(sizes), QUESTIONS, strict=True)]
    mask = mllm.inputs_batch(items)["attention_mask"]
    assert bool((mask == 0).any()) and bool((mask[:, -1] == 1).all())     # padded, on the left
    alone, batch = assert_batch_equals_alone(mllm, items, method, budget, **options)
    assert len({g.rates["flops"] for g in batch}) == len(items)              # every sample has its own cost
    if case == "qwen-divprune":
        assert [g.rates["tokens"] for g in batch] == [4.0, 8.0, 2.0]
    if family == "llava" and method is not None:
        assert {g.rates["tokens"] for g in batch} == {4.0}
    if case == "ov-divprune":                       # 16 of the two views' tokens, and the grid's 8 newlines
        assert {g.rates["tokens"] for g in batch} == {24.0}
    assert {g.rates["batch_size"] for g in batch} == {3.0}


def test_llava_rows_that_keep_different_counts_are_counted_per_row(models):
    # PruMerge+ adaptive: the IQR rule keeps a count per image, so the adapter pads the batch (kept.mask)
    mllm = models["llava"]
    rng = np.random.default_rng(1)
    ims = [np.zeros((32, 32, 3), np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
           (rng.random((32, 32, 3)) > 0.9).astype(np.uint8) * 255]
    items = [([im], q) for im, q in zip(ims, QUESTIONS, strict=True)]
    _, batch = assert_batch_equals_alone(mllm, items, get_method("prumerge+", adaptive=True), Budget(keep=12))
    counts = [g.rates["tokens"] for g in batch]
    assert len(set(counts)) > 1, counts                                      # the rows really differ


def test_qwen_in_llm_batches_run_in_sub_batches_of_one_image_size(models):
    mllm = models["qwen2-vl"]
    items = [([im], q) for im, q in zip(images((84, 112, 84)), QUESTIONS, strict=True)]
    _, batch = assert_batch_equals_alone(mllm, items, "fastv", Budget(keep=4), layers=2)
    assert [g.rates["batch_size"] for g in batch] == [2.0, 1.0, 2.0]
    assert batch[0].rates["batch_latency_s"] == batch[2].rates["batch_latency_s"]


def test_one_prompt_is_what_the_processor_gives_unpadded(models):
    mllm = models["llava"]
    im = images((32,))[0]
    own = mllm.processor(images=[im], text=mllm.prompt(QUESTIONS[1]), return_tensors="pt")
    one = mllm.inputs([im], QUESTIONS[1])
    assert one.keys() == own.keys() and all(bool((one[k] == own[k]).all()) for k in one)
    with pytest.raises(ValueError, match="no prompts"):
        mllm.generate_batch([])


def test_qwen_inputs_are_what_the_model_takes(models):
    # Qwen2-VL's own processor returns mm_token_type_ids (1 on image tokens); without them model(**inputs)
    # cannot build its M-RoPE positions in transformers 5.24
    import torch

    mllm = models["qwen2-vl"]
    one = mllm.inputs(images((56,)), QUESTIONS[0])
    assert torch.equal(one["mm_token_type_ids"], (one["input_ids"] == mllm.image_token_id).long())
    with torch.inference_mode():
        logits = mllm.model(**one).logits
    assert logits.shape[:2] == one["input_ids"].shape and torch.isfinite(logits).all()
