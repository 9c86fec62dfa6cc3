"""In-LLM methods (FastV, SparseVLM, PyramidDrop, DART) on tiny random Qwen2-VL / Qwen2.5-VL models (offline)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

import tokencodec  # noqa: E402
from tokencodec.adapters.hf_compat import cache_of  # noqa: E402
from tokencodec.adapters.qwen2_vl import Qwen2VLTokenCompression  # noqa: E402
from tokencodec.adapters.qwen2_vl_llm import Qwen2VLLLMCompression  # noqa: E402
from tokencodec.adapters.support import support_matrix  # noqa: E402
from tokencodec.tokens.batch import TokenBatch  # noqa: E402
from tokencodec.tokens.compress.base import Budget  # noqa: E402
from tokencodec.tokens.compress.fastv import FastV, keep_top_k  # noqa: E402

from .test_qwen2_vl_adapter import IMG, batch, generate, hook_state, logits, make, sample  # noqa: E402

LAYERS = 5
LLM = ["fastv", "sparsevlm", "pyramiddrop", "dart"]
OPTS = {"fastv": dict(layers=2), "dart": dict(layers=2), "pyramiddrop": dict(layers=(1, 2, 3)),
        "sparsevlm": dict(layers=(1, 2, 3))}
# one image size in the batch (the in-LLM adapter's rule); 12 merged tokens on a 3×4 grid
C = sample(6, 8, 3, 4, seed=1)
D = sample(6, 8, 5, 2, seed=2)


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request):
    m = make(layers=LAYERS)
    m.set_attn_implementation(request.param)
    return m


@pytest.fixture(scope="module")
def eager():
    m = make(layers=LAYERS)
    m.set_attn_implementation("eager")
    return m


class FixedFastV(FastV):
    """FastV with a prompt-independent choice (the even patches), so a re-run on a longer prompt picks the same."""

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)
        return keep_top_k(batch, -(batch.positions % 2).float(), budget.tokens(batch.num_tokens))


@pytest.mark.parametrize("name", LLM)
def test_full_budget_equals_unpatched_forward_and_generate(model, name):
    inputs = batch(C, D)
    ref, ref_tokens = logits(model, inputs), generate(model, inputs)
    with tokencodec.compress(model, name, Budget(ratio=1.0), **OPTS[name]) as patch:
        assert isinstance(patch, Qwen2VLLLMCompression)
        assert torch.equal(logits(model, inputs), ref)
        assert patch.tokens_per_layer == [12] * LAYERS
        assert torch.equal(generate(model, inputs), ref_tokens)


@pytest.mark.parametrize("name", LLM)
def test_pruned_counts_cache_lengths_and_restore(model, name):
    inputs = batch(C, D)
    before, ref = hook_state(model), logits(model, inputs)
    budget = Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=4)
    with Qwen2VLLLMCompression(model, name, budget, **OPTS[name]) as patch:
        with torch.no_grad():
            out = model(**inputs, use_cache=True)
        first = patch.stage_plan[0].layer
        assert patch.tokens_per_layer[:first] == [12] * first and patch.tokens_per_layer[-1] < 12
        lengths = [layer.keys.shape[-2] for layer in cache_of(out).layers]
        s = inputs["input_ids"].shape[1]
        assert lengths == [s - (12 - k) for k in patch.tokens_per_layer]
        assert out.logits.shape[1] == patch.sequence_index.shape[1] == lengths[-1]
        assert not torch.allclose(out.logits[:, -1], ref[:, -1], atol=1e-4)
        generate(model, inputs)                       # decodes over the pruned cache
    assert hook_state(model) == before and torch.equal(logits(model, inputs), ref)


def test_fastv_signal_equals_eager_attention_with_mrope(eager):
    """The adapter's recomputed q·k (M-RoPE cos/sin from the layer kwargs) against the model's own attention maps."""
    inputs = batch(C, D)
    with torch.no_grad():
        attn = eager(**inputs, output_attentions=True).attentions[1]          # layer K−1 for K=2
    starts = (inputs["input_ids"] == IMG).int().argmax(1)
    with Qwen2VLLLMCompression(eager, "fastv", Budget(keep=4), layers=2) as patch:
        logits(eager, inputs)
    got = patch.stages[0].signals["text_attention"]
    for b in range(2):
        want = attn[b, :, -1, starts[b]:starts[b] + 12].mean(0)
        torch.testing.assert_close(got[b], want, atol=1e-6, rtol=1e-5)


def test_cached_generate_equals_rerunning_the_pruned_prompt(eager):
    """generate() over the pruned cache (rope_deltas positions, sliced masks) = re-pruning the whole prompt per step."""
    inputs = batch(C, D)
    with Qwen2VLLLMCompression(eager, FixedFastV(), Budget(keep=5), layers=2):
        cached = generate(eager, inputs)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        for _ in range(4):
            step = dict(inputs, input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == IMG).int())
            with torch.no_grad():
                nxt = eager(**step, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert torch.equal(cached, ids)


def test_batch_rows_equal_running_each_sample_alone(model):
    inputs = batch(C, D)
    with Qwen2VLLLMCompression(model, "dart", Budget(keep=4), layers=2) as patch:
        out = logits(model, inputs)
        index = patch.sequence_index
        for b, s in enumerate((C, D)):
            alone = logits(model, batch(s))[0, -1]
            slot = int((index[b] == inputs["input_ids"].shape[1] - 1).nonzero())
            torch.testing.assert_close(out[b, slot], alone, atol=1e-5, rtol=0)


def test_qwen2_5_vl_in_llm_full_budget_exact_and_pruned():
    model = make("qwen2_5", layers=LAYERS)
    inputs = batch(C, D)
    ref = logits(model, inputs)
    with tokencodec.compress(model, "fastv", Budget(ratio=1.0), layers=2):
        assert torch.equal(logits(model, inputs), ref)
    with tokencodec.compress(model, "sparsevlm", Budget(keep=4), layers=(1, 2)) as patch:
        out = logits(model, inputs)
    assert patch.tokens_per_layer[0] == 12 and patch.tokens_per_layer[-1] < 12
    assert out.shape[1] < ref.shape[1]


def test_refusals_name_what_is_supported(model):
    with pytest.raises(ValueError, match="positions='original'"):
        Qwen2VLLLMCompression(model, "fastv", Budget(keep=4), positions="renumber")
    with pytest.raises(ValueError, match="runs 'llm' methods"):
        Qwen2VLLLMCompression(model, "divprune", Budget(keep=4))
    with pytest.raises(ValueError, match="Qwen2VLLLMCompression"):
        Qwen2VLTokenCompression(model, "fastv", Budget(keep=4))
    mixed = batch(C, sample(4, 4, 3, 2, seed=3))
    with pytest.raises(ValueError, match="same number of image tokens"), Qwen2VLLLMCompression(
            model, "fastv", Budget(keep=2), layers=2):
        logits(model, mixed)
    assert all(support_matrix()[m]["Qwen2-VL / Qwen2.5-VL"] == "yes" for m in LLM)
