"""Qwen2VLTokenCompression on tiny random Qwen2-VL / Qwen2.5-VL models built from configs (offline, seeded)."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from tokencodec.adapters.hf_compat import CACHE_NAMES, cache_of  # noqa: E402
from tokencodec.adapters.qwen2_vl import (  # noqa: E402
    Qwen2VLTokenCompression,
    left_aligned_gather,
    method_signals,
    prune_mask,
)
from tokencodec.tokens.batch import TokenBatch  # noqa: E402
from tokencodec.tokens.compress.base import METHODS, Budget, TokenMethod, get_method  # noqa: E402
from tokencodec.tokens.compress.pool import target_grid  # noqa: E402

IMG, VID, VS, VE, PAD = 190, 191, 188, 189, 0
PATCH, TPATCH = 4, 2
EXACT = ("random", "pool-avg", "divprune", "visionzip")
# batched vs alone: same math on different padded shapes (SDPA/matmul blocking), so not bit-equal
ATOL = 1e-5


def vision(kind: str) -> dict:
    common = dict(depth=2, num_heads=4, patch_size=PATCH, spatial_merge_size=2, temporal_patch_size=TPATCH,
                  in_channels=3)
    if kind == "qwen2":
        return dict(common, embed_dim=32, mlp_ratio=2, hidden_size=64)
    # window_size 16 px = 2×2 merged tokens per window; block 1 (the last) attends over the whole image
    return dict(common, hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=16,
                fullatt_block_indexes=[1])


def make(kind: str = "qwen2", seed: int = 0, layers: int = 2) -> nn.Module:
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=200, max_position_embeddings=512, bos_token_id=1,
                eos_token_id=2, pad_token_id=PAD, rope_scaling=dict(type="mrope", mrope_section=[2, 3, 3]))
    ids = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=VS, vision_end_token_id=VE)
    torch.manual_seed(seed)
    if kind == "qwen2":
        cfg = transformers.Qwen2VLConfig(vision_config=vision(kind), text_config=text, **ids)
        model = transformers.Qwen2VLForConditionalGeneration(cfg)
    else:
        cfg = transformers.Qwen2_5_VLConfig(vision_config=vision(kind), text_config=text, **ids)
        model = transformers.Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = None  # always 4 new tokens
    return model.eval()


def sample(h: int, w: int, pre: int, post: int, seed: int):
    """(input_ids, pixel_values, image_grid_thw) of one image with an h×w patch grid."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(h * w, 3 * TPATCH * PATCH * PATCH, generator=g)
    n = h * w // 4
    ids = torch.cat([torch.randint(3, 180, (pre,), generator=g), torch.tensor([VS]), torch.full((n,), IMG),
                     torch.tensor([VE]), torch.randint(3, 180, (post,), generator=g)])
    return ids, pixels, torch.tensor([[1, h, w]])


def batch(*samples) -> dict:
    """Left-padded model inputs."""
    width = max(len(s[0]) for s in samples)
    ids = torch.full((len(samples), width), PAD)
    mask = torch.zeros(len(samples), width, dtype=torch.long)
    for b, (x, _, _) in enumerate(samples):
        ids[b, width - len(x):] = x
        mask[b, width - len(x):] = 1
    return dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=(ids == IMG).int(),
                pixel_values=torch.cat([s[1] for s in samples]), image_grid_thw=torch.cat([s[2] for s in samples]))


A = sample(4, 6, 3, 4, seed=1)   # 6 merged tokens on a 2×3 grid
B = sample(4, 4, 5, 2, seed=2)   # 4 merged tokens on a 2×2 grid
C = sample(6, 4, 2, 3, seed=3)   # 6 merged tokens on a 3×2 grid




@pytest.fixture(scope="module")
def model():
    return make()


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def generate(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=4, do_sample=False)


def hook_state(model: nn.Module) -> dict:
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), "_tokencodec_patch" in vars(m),
                   "forward" in vars(m), "get_image_features" in vars(m)) for name, m in model.named_modules()}


def rope_index(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    return model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                      image_grid_thw=inputs["image_grid_thw"],
                                      attention_mask=inputs["attention_mask"])


class LLMInputs:
    """Test-only recorder of what reaches the language model (registered after the patch's own hook)."""

    def __init__(self, model):
        self.calls: list[dict] = []
        self.handle = model.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append({k: kwargs.get(k) for k in ("position_ids", "attention_mask", "inputs_embeds")})

    def remove(self):
        self.handle.remove()


# -- exactness at full budget, and restoration ------------------------------------------------------

@pytest.mark.parametrize("method", EXACT)
def test_full_budget_is_exact_for_forward_and_generate(model, method):
    inputs = batch(A, B)
    ref, ref_tokens = logits(model, inputs), generate(model, inputs)
    with Qwen2VLTokenCompression(model, method, Budget(ratio=1.0)) as patch:
        assert torch.equal(logits(model, inputs), ref)
        assert patch.last_visual_tokens.tolist() == [6, 4]
        assert torch.equal(generate(model, inputs), ref_tokens)


def test_exit_restores_hooks_methods_and_outputs(model):
    inputs = batch(A, B)
    before, ref = hook_state(model), logits(model, inputs)
    with Qwen2VLTokenCompression(model, "visionzip", 0.5):
        assert hook_state(model) != before
        assert not torch.equal(logits(model, inputs)[:, -1], ref[:, -1])
    assert hook_state(model) == before
    assert "get_image_features" not in vars(model.model)
    assert torch.equal(logits(model, inputs), ref)
    with pytest.raises(RuntimeError), Qwen2VLTokenCompression(model, "random", 0.5):
        raise RuntimeError("boom")
    assert hook_state(model) == before and torch.equal(logits(model, inputs), ref)


# -- counts and positions ---------------------------------------------------------------------------

@pytest.mark.parametrize("method", [*EXACT, "prumerge"])
@pytest.mark.parametrize("budget", [Budget(ratio=0.5), Budget(keep=2)])
def test_kept_counts_and_original_3d_positions(model, method, budget):
    inputs = batch(A, B)
    full_pos, _ = rope_index(model, inputs)
    with Qwen2VLTokenCompression(model, method, budget) as patch:
        out = logits(model, inputs)
    want = [budget.tokens(6), budget.tokens(4)]
    if method == "pool-avg":  # the nearest aspect-preserving grid: 2×3 → 1×2, 2×2 → 1×1
        want = [math.prod(target_grid(2, 3, want[0])), math.prod(target_grid(2, 2, want[1]))]
    assert [kb.num_tokens for kb in patch.last_kept] == want
    assert patch.last_visual_tokens.tolist() == want
    gather = patch.last_gather
    assert out.shape[1] == gather.shape[1]
    real = gather >= 0
    for b in range(2):
        # every LLM slot carries the unpruned 3-D position of the input slot it came from
        src = gather[b, real[b]]
        assert torch.equal(patch.last_position_ids[:, b, real[b]], full_pos[:, b, src])
        # the kept image slots are exactly the representatives of the kept tokens, in raster order
        image_slots = (inputs["input_ids"][b] == IMG).nonzero().squeeze(1)
        kept_slots = src[inputs["input_ids"][b, src] == IMG]
        assert torch.equal(kept_slots, image_slots[patch.last_kept[b].positions[0].sort().values])
    # rows that kept fewer tokens are left-padded with masked slots
    assert (patch.last_position_ids[:, ~real] == 0).all()


def test_small_budget_changes_logits_and_generation_still_runs(model):
    inputs = batch(A, B)
    ref = logits(model, inputs)
    with Qwen2VLTokenCompression(model, "divprune", Budget(keep=1)):
        out = logits(model, inputs)
        tokens = generate(model, inputs)
    assert out.shape[1] == ref.shape[1] - 3  # A drops 5 tokens, B 3: B's row is padded by 2
    assert not torch.allclose(out[:, -1], ref[:, -1], atol=1e-3)
    assert tokens.shape == (2, inputs["input_ids"].shape[1] + 4)


# -- generate() and decoding positions --------------------------------------------------------------

@pytest.mark.parametrize("method", ["random", "visionzip"])
def test_generate_decodes_with_unpruned_positions_and_rope_deltas(model, method):
    inputs = batch(A, B)
    ref = LLMInputs(model)
    try:
        ref_tokens = generate(model, inputs)
    finally:
        ref.remove()
    ref_deltas = model.model.rope_deltas.clone()
    with Qwen2VLTokenCompression(model, method, 0.5) as patch:
        rec = LLMInputs(model)  # registered after the patch's hook: sees what the LLM gets
        try:
            tokens = generate(model, inputs)
        finally:
            rec.remove()
    assert tokens.shape == ref_tokens.shape
    assert torch.equal(model.model.rope_deltas, ref_deltas)
    assert len(rec.calls) == len(ref.calls) == 4
    assert torch.equal(_mrope(rec.calls[0]["position_ids"]), patch.last_position_ids)
    for step, (got, want) in enumerate(zip(rec.calls[1:], ref.calls[1:], strict=True), 1):
        # new tokens sit where they sit without pruning; the mask matches the pruned cache plus the new token
        assert torch.equal(got["position_ids"], want["position_ids"])
        assert got["attention_mask"].shape[1] == patch.last_gather.shape[1] + step
        g = patch.last_gather
        prompt_mask = inputs["attention_mask"].gather(1, g.clamp(min=0)).masked_fill(g < 0, 0)
        assert torch.equal(got["attention_mask"][:, :g.shape[1]], prompt_mask)


def _mrope(pos: torch.Tensor) -> torch.Tensor:
    return pos[1:] if pos.shape[0] == 4 else pos


def test_manual_decode_without_mask_matches_generate(model):
    inputs = batch(C)
    del inputs["attention_mask"]
    with Qwen2VLTokenCompression(model, "divprune", 0.5), torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=2, do_sample=False)
        out = model(**inputs, use_cache=True)
        first = out.logits[:, -1].argmax(-1, keepdim=True)
        rec = LLMInputs(model)
        try:
            cache_arg = next(n for n in CACHE_NAMES if n in inspect.signature(model.forward).parameters)
            step = model(input_ids=first, use_cache=True, **{cache_arg: cache_of(out)})
        finally:
            rec.remove()
    n = inputs["input_ids"].shape[1]
    assert torch.equal(torch.cat([first, step.logits[:, -1:].argmax(-1)], 1), tokens[:, n:])
    expected = n + model.model.rope_deltas  # unpruned length + delta, not the pruned cache length
    assert (rec.calls[0]["position_ids"] == expected.view(1, -1, 1)).all()


# -- batches ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["random", "divprune", "visionzip", "pool-avg"])
def test_batch_rows_equal_running_each_sample_alone(model, method):
    both = batch(A, B)
    with Qwen2VLTokenCompression(model, method, 0.5) as patch:
        out = logits(model, both)
        counts = patch.last_visual_tokens.tolist()
        alone = [logits(model, batch(s))[0, -1] for s in (A, B)]
    assert counts == ([2, 1] if method == "pool-avg" else [3, 2])  # different counts: B's row is re-padded
    for b in range(2):
        torch.testing.assert_close(out[b, -1], alone[b], atol=ATOL, rtol=0)


def test_unpadded_batch_with_different_kept_counts_gets_padded_and_generates_like_alone(model):
    d = sample(4, 4, 5, 4, seed=4)  # as long as A (15), but 4 merged tokens instead of 6: no padding mask
    both = batch(A, d)
    del both["attention_mask"]
    with Qwen2VLTokenCompression(model, "divprune", 0.5) as patch:
        out = logits(model, both)
        # A drops 3 of 6, d 2 of 4: A's row is one slot shorter and gets a (masked) pad slot
        assert patch.last_gather[:, 0].tolist() == [-1, 0]
        tokens = generate(model, both)
        alone = [(logits(model, batch(s))[0, -1], generate(model, batch(s))[0]) for s in (A, d)]
    for b in range(2):
        torch.testing.assert_close(out[b, -1], alone[b][0], atol=ATOL, rtol=0)
        assert torch.equal(tokens[b], alone[b][1])


def test_two_images_in_one_prompt_are_pruned_separately(model):
    ids = torch.cat([A[0], B[0]])
    inputs = dict(input_ids=ids[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                  mm_token_type_ids=(ids == IMG).int()[None], pixel_values=torch.cat([A[1], B[1]]),
                  image_grid_thw=torch.cat([A[2], B[2]]))
    full_pos, _ = rope_index(model, inputs)
    with Qwen2VLTokenCompression(model, "random", 0.5) as patch:
        logits(model, inputs)
    assert [kb.num_tokens for kb in patch.last_kept] == [3, 2] and patch.last_visual_tokens.tolist() == [5]
    src = patch.last_gather[0]
    assert torch.equal(patch.last_position_ids[:, 0], full_pos[:, 0, src])


# -- signals and method checks ------------------------------------------------------------------------

class _Probe(TokenMethod):
    """Test-only: keeps everything and records the batch it was given."""

    stage = "pre-llm"
    needs = ("mean_attention", "keys", "keys_full")
    seen: list[TokenBatch] = []

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        _Probe.seen.append(batch)
        return batch


class _NeedsCls(TokenMethod):
    stage = "pre-llm"
    needs = ("cls_attention",)
    needs_cls = True
    cls_fallback = ""


def recorded_attention(model, inputs) -> list[torch.Tensor]:
    """Attention probabilities of the last vision block, via a test-only eager attention function."""
    from transformers import AttentionInterface
    from transformers.models.qwen2_vl.modeling_qwen2_vl import eager_attention_forward

    probs: list[torch.Tensor] = []

    def record(module, q, k, v, attention_mask, **kw):
        out, w = eager_attention_forward(module, q, k, v, attention_mask, **kw)
        probs.append(w)
        return out, w

    AttentionInterface.register("_tokencodec_record", record)
    visual = model.model.visual
    old = visual.config._attn_implementation
    visual.config._attn_implementation = "_tokencodec_record"
    try:
        with torch.no_grad():
            visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    finally:
        visual.config._attn_implementation = old
    return probs[-len(inputs["image_grid_thw"]):]  # the last block's chunks, one per image


def test_signals_mean_attention_and_keys_follow_the_2x2_groups(model):
    inputs = batch(A, B)
    _Probe.seen = []
    with Qwen2VLTokenCompression(model, _Probe(), 1.0):
        logits(model, inputs)
    a, b = _Probe.seen
    assert a.grid == (2, 3) and b.grid == (2, 2)
    assert a.signals["keys"].shape == (1, 6, 8) and a.signals["keys_full"].shape == (1, 6, 32)
    for tb, w in zip((a, b), recorded_attention(model, inputs), strict=True):
        received = w[0].float().mean((0, 1))  # [n patches]: mean over heads and query rows
        torch.testing.assert_close(tb.signals["mean_attention"][0], received.view(-1, 4).mean(1),
                                   atol=1e-6, rtol=1e-5)
    # keys: head mean of the last block's pre-RoPE keys, then the 2×2 group mean
    qkv = {}
    h = model.model.visual.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: qkv.setdefault("o", o))
    try:
        with torch.no_grad():
            model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    finally:
        h.remove()
    k = qkv["o"].view(-1, 3, 4, 8)[:, 1].mean(1)  # [P, d_head]
    torch.testing.assert_close(a.signals["keys"][0], k[:24].view(6, 4, 8).mean(1))


def test_method_checks_and_fallbacks():
    assert method_signals(get_method("visionzip")) == ("mean_attention", "keys")  # CLS fallback
    assert method_signals(get_method("divprune")) == ()
    support = Qwen2VLTokenCompression.supports    # the Qwen2-VL vision tower has no CLS
    assert support(METHODS.get("visionzip"), False) == "fallback" and support(METHODS.get("random"), False) == "yes"
    assert support(METHODS.get("fastv"), False) == "—"
    with pytest.raises(ValueError, match="needs a CLS token and declares no cls_fallback"):
        method_signals(_NeedsCls())
    with pytest.raises(ValueError, match="inside the LLM.*Qwen2VLLLMCompression"):   # the in-LLM adapter's
        method_signals(get_method("fastv"))
    with pytest.raises(NotImplementedError, match="2×2 PatchMerger"):
        method_signals(get_method("tome"))
    with pytest.raises(TypeError, match="unsupported model Linear"):
        Qwen2VLTokenCompression(nn.Linear(2, 2), "random", 0.5)


def test_unsupported_inputs_raise_clearly(model):
    inputs = batch(A)
    with Qwen2VLTokenCompression(model, "random", 0.5):
        with pytest.raises(NotImplementedError, match="video"):
            logits(model, dict(inputs, pixel_values_videos=inputs["pixel_values"],
                               video_grid_thw=inputs["image_grid_thw"]))
        with pytest.raises(NotImplementedError, match="labels"):
            logits(model, dict(inputs, labels=inputs["input_ids"]))
        assert logits(model, inputs).shape[1] == inputs["input_ids"].shape[1] - 3  # still usable


def test_sequence_helpers():
    keep = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 1]], dtype=torch.bool)
    gather = left_aligned_gather(keep)
    assert gather.tolist() == [[0, 2, 3], [-1, 2, 3]]
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert prune_mask(mask, gather, 4).tolist() == [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert prune_mask(None, gather[:1], 4) is None


# -- Qwen2.5-VL (windowed vision attention) -----------------------------------------------------------

def test_qwen2_5_vl_full_budget_exact_and_pruned_positions():
    model = make("qwen2_5")
    inputs = batch(A, C)
    ref, ref_tokens = logits(model, inputs), generate(model, inputs)
    for method in EXACT:
        with Qwen2VLTokenCompression(model, method, 1.0):
            assert torch.equal(logits(model, inputs), ref), method
    with Qwen2VLTokenCompression(model, "visionzip", 1.0):
        assert torch.equal(generate(model, inputs), ref_tokens)
    full_pos, _ = rope_index(model, inputs)
    with Qwen2VLTokenCompression(model, "visionzip", 0.5) as patch:
        out = logits(model, inputs)
        for b in range(2):
            assert torch.equal(patch.last_position_ids[:, b], full_pos[:, b, patch.last_gather[b]])
        tokens = generate(model, inputs)
    assert patch.last_visual_tokens.tolist() == [3, 3] and tokens.shape == ref_tokens.shape
    assert not torch.allclose(out[:, -1], ref[:, -1], atol=1e-3)


def test_qwen2_5_vl_signals_are_unwindowed_to_raster_order():
    model = make("qwen2_5")
    inputs = batch(A)  # 2×3 merged grid in 2×2-token windows: window order differs from raster order
    _Probe.seen = []
    with Qwen2VLTokenCompression(model, _Probe(), 1.0):
        logits(model, inputs)
    (tb,) = _Probe.seen
    # the merger outputs are in raster order, so keys un-windowed correctly sit next to their features:
    # recompute keys per merged token from the last block input in raster order
    from transformers.vision_utils import get_vision_window_index

    visual = model.model.visual
    grab = {}
    h = visual.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: grab.setdefault("o", o))
    try:
        with torch.no_grad():
            visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    finally:
        h.remove()
    window_index, _ = get_vision_window_index(inputs["image_grid_thw"], 2, visual.window_size, visual.patch_size)
    assert not torch.equal(window_index, torch.arange(len(window_index)))
    k = grab["o"].view(-1, 3, 4, 8)[:, 1].mean(1).view(-1, 4, 8).mean(1)  # window order
    raster = torch.empty_like(k)
    raster[window_index] = k
    torch.testing.assert_close(tb.signals["keys"][0], raster)
