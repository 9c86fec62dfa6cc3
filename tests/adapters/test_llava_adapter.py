"""LlavaTokenCompression on a tiny random LlavaForConditionalGeneration built from configs (offline, seeded).

Tolerances: "exact" comparisons use torch.equal. Batched-vs-alone comparisons allow 1e-5: padding
changes the shapes of the matmuls and softmaxes, hence their float32 summation order (observed
differences are ~1e-7).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from tokencodec.adapters.hf_compat import cache_of  # noqa: E402
from tokencodec.adapters.hooks import PatchError  # noqa: E402
from tokencodec.adapters.llava import LlavaTokenCompression, pyramiddrop_keeps, sparsevlm_keeps  # noqa: E402
from tokencodec.registry import UnknownNameError  # noqa: E402
from tokencodec.tokens.batch import TokenBatch  # noqa: E402
from tokencodec.tokens.compress.base import Budget, BudgetError, TokenMethod, get_method  # noqa: E402
from tokencodec.tokens.compress.fastv import FastV, keep_top_k  # noqa: E402
from tokencodec.tokens.compress.pyramiddrop import PyramidDrop  # noqa: E402
from tokencodec.tokens.compress.sparsevlm import SparseVLM, recycle_counts  # noqa: E402

IMG = 99          # image_token_id, inside the vocabulary
N = 16            # (32 / 8)² patches
LAYERS = 5        # LLM layers
PRE = ["random", "pool-avg", "pool-resize", "divprune", "visionzip", "prumerge", "prumerge+"]
LLM = ["fastv", "sparsevlm", "pyramiddrop", "dart"]
# the tiny LLM has 5 layers: move every in-LLM method's layers inside it
LAYER_OPTS = {"fastv": dict(layers=2), "dart": dict(layers=2), "pyramiddrop": dict(layers=(1, 2, 3)),
              "sparsevlm": dict(layers=(1, 2, 3))}
P0 = [1, 5, 6] + [IMG] * N + [7, 8, 9, 10]
P1 = [1, 5] + [IMG] * N + [7, 8]


def make(attn: str = "eager", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=32, patch_size=8)
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                  max_position_embeddings=256, pad_token_id=0)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_id=IMG, image_seq_length=N)
    model = transformers.LlavaForConditionalGeneration(cfg)
    model.set_attn_implementation(attn)
    return model.eval()




@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request):
    return make(request.param)


@pytest.fixture(scope="module")
def eager():
    return make("eager")


def pixels(b: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def padded(side: str = "left"):
    """Two prompts of different lengths, padded; position ids as ``generate`` makes them."""
    width = max(len(P0), len(P1))
    ids, mask = [], []
    for p in (P0, P1):
        pad = [0] * (width - len(p))
        ids.append(pad + p if side == "left" else p + pad)
        mask.append([0] * len(pad) + [1] * len(p) if side == "left" else [1] * len(p) + [0] * len(pad))
    ids, mask = torch.tensor(ids), torch.tensor(mask)
    return ids, mask, (mask.cumsum(1) - 1).clamp_min(0)


def method_for(name: str) -> TokenMethod | str:
    # PruMerge always merges neighbours into kept tokens; without neighbours and the extra token it is exact
    return get_method(name, neighbours=0, extra_token=False) if name.startswith("prumerge") else name


def hook_state(model: nn.Module) -> dict:
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), "forward" in vars(m))
            for name, m in model.named_modules()}


def logits(model, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(**kw).logits


# -- no compression: exactly the unpatched model --------------------------------------------------

# at the full budget the official layouts are not the identity (VisionZip sends the CLS; PruMerge keeps
# attention order), so these run with the older layout: no CLS, span sorted by patch, original positions
OLD_LAYOUT = {"visionzip": dict(positions="original"), "prumerge": dict(positions="original"),
              "prumerge+": dict(positions="original")}


@pytest.mark.parametrize("name", PRE + LLM)
def test_full_budget_equals_unpatched(model, name):
    ids, mask, pos = padded("left")
    kw = dict(input_ids=ids, pixel_values=pixels(), attention_mask=mask, position_ids=pos)
    ref = logits(model, **kw)
    method = get_method("visionzip", count_cls=False) if name == "visionzip" else method_for(name)
    opts = {**LAYER_OPTS.get(name, {}), **OLD_LAYOUT.get(name, {})}
    with LlavaTokenCompression(model, method, Budget(ratio=1.0), **opts) as tc:
        out = logits(model, **kw)
    assert torch.equal(out, ref)
    assert tc.tokens_per_layer == [N] * LAYERS


def test_exit_restores_model(model):
    ids, mask, pos = padded("right")
    kw = dict(input_ids=ids, pixel_values=pixels(), attention_mask=mask)
    before, ref = hook_state(model), logits(model, **kw)
    for name in ("visionzip", "pyramiddrop"):
        with LlavaTokenCompression(model, name, Budget(ratio=0.5), **LAYER_OPTS.get(name, {})) as tc:
            assert hook_state(model) != before
            with pytest.raises(PatchError):
                tc.__enter__()
            assert not torch.equal(logits(model, **kw)[:, -1], ref[:, -1])
        assert hook_state(model) == before
        assert torch.equal(logits(model, **kw), ref)


# -- batches with padding --------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ["pool-avg", "divprune", "visionzip", "prumerge", *LLM])
def test_batch_matches_single(model, name, side):
    ids, mask, pos = padded(side)
    px = pixels()
    budget = Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=4)
    with LlavaTokenCompression(model, name, budget, **LAYER_OPTS.get(name, {})) as tc:
        out = logits(model, input_ids=ids, pixel_values=px, attention_mask=mask, position_ids=pos)
        index = tc.sequence_index
        assert out.shape[1] == index.shape[1] == ids.shape[1] - N + tc.tokens_per_layer[-1]
        for b, prompt in enumerate((P0, P1)):
            last = int(mask[b].nonzero().max())
            slot = int((index[b] == last).nonzero())
            alone = logits(model, input_ids=torch.tensor([prompt]), pixel_values=px[b:b + 1])[0, -1]
            torch.testing.assert_close(out[b, slot], alone, atol=1e-5, rtol=0)


# -- generate() with the KV cache ------------------------------------------------------------------

def test_generate_fastv_full_budget_same_tokens(model):
    ids, mask, _ = padded("left")
    kw = dict(input_ids=ids, pixel_values=pixels(), attention_mask=mask, max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        ref = model.generate(**kw)
        with LlavaTokenCompression(model, "fastv", Budget(ratio=1.0), layers=2):
            out = model.generate(**kw)
    assert torch.equal(out, ref)


class FixedFastV(FastV):
    """FastV whose choice does not depend on the prompt's last token: the even patches."""

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)     # the adapter still computed the signal
        return keep_top_k(batch, -(batch.positions % 2).float(), budget.tokens(batch.num_tokens))


class FixedPyramidDrop(PyramidDrop):
    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)
        return keep_top_k(batch, -(batch.positions % 2).float(), budget.tokens(batch.num_tokens))


class FixedSparseVLM(SparseVLM):
    """SparseVLM scored by a fixed rule (the even patches first), so re-pruning a longer prompt picks the same."""

    def scores(self, batch: TokenBatch) -> torch.Tensor:
        super().scores(batch)         # the adapter still computed the signal
        return -(batch.positions % 2).float() - batch.positions.float() / 100


def greedy_without_cache(model, ids, mask, px, steps: int) -> torch.Tensor:
    """Re-run the whole (re-pruned) prompt each step: the reference for cached decoding."""
    for _ in range(steps):
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values=px, attention_mask=mask, position_ids=pos, use_cache=False)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


@pytest.mark.parametrize("case", ["visionzip", "fixed-fastv", "fixed-pyramiddrop-renumber", "prumerge-adaptive",
                                  "prumerge+", "divprune", "fixed-sparsevlm", "flowcut", "cdpruner-llm-input"])
def test_generate_after_pruning_uses_pruned_cache(model, case):
    ids, mask, _ = padded("left")
    px = pixels(seed=6 if case == "prumerge-adaptive" else 3)    # seed 6: the two images keep 2 and 3 tokens
    method, opts, budget = {
        "visionzip": ("visionzip", {}, Budget(keep=6)),
        "fixed-fastv": (FixedFastV(), dict(layers=2), Budget(keep=6)),
        "fixed-pyramiddrop-renumber": (FixedPyramidDrop(), dict(layers=(1, 3)), Budget(ratio=0.5)),
        "prumerge-adaptive": (get_method("prumerge", adaptive=True), {}, Budget(ratio=1.0)),
        "prumerge+": ("prumerge+", {}, Budget(keep=7)),
        "divprune": ("divprune", {}, Budget(keep=5)),
        # renumbered, the recycled block right after the kept tokens (not sorted by representative)
        "fixed-sparsevlm": (FixedSparseVLM(), dict(layers=(1, 3)), Budget(keep=6)),
        "flowcut": ("flowcut", {}, Budget(keep=6)),                  # pruned inside the tower, renumbered
        "cdpruner-llm-input": ("cdpruner", dict(embedding_space="llm-input", question_ids=torch.tensor([[7, 8, 9]])),
                               Budget(keep=6)),
    }[case]
    with LlavaTokenCompression(model, method, budget, **opts) as tc:
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values=px, attention_mask=mask, use_cache=True)
        if case == "prumerge-adaptive":       # padded slots inside the span, masked out
            assert tc.kept.mask is not None and tc.kept.counts().tolist() == [2, 3]
        lengths = [layer.keys.shape[-2] for layer in cache_of(out).layers]
        s_in = ids.shape[1] if tc.method.stage == "llm" else tc.sequence_index.shape[1]
        expected = [s_in - (tc.tokens_per_layer[0] - k) for k in tc.tokens_per_layer]
        assert lengths == expected
        assert lengths[-1] < ids.shape[1]
        with torch.no_grad():
            cached = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=5,
                                    do_sample=False)
        reference = greedy_without_cache(model, ids, mask, px, 5)
    # generate pads a sample after its EOS (the tiny Llama's eos_token_id 2); the reference runs on
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    new = reference[:, ids.shape[1]:]
    done = (torch.isin(new, torch.tensor(eos)).cumsum(1) - torch.isin(new, torch.tensor(eos)).int()) > 0
    reference[:, ids.shape[1]:] = new.masked_fill(done, pad if pad is not None else 0)
    assert torch.equal(cached, reference)


# -- counts, schedules, positions ------------------------------------------------------------------

@pytest.mark.parametrize("name", PRE)
def test_pre_llm_kept_count(name):
    model = make("sdpa")
    ids, mask, pos = padded("left")
    with LlavaTokenCompression(model, name, Budget(keep=4)) as tc:
        out = logits(model, input_ids=ids, pixel_values=pixels(), attention_mask=mask, position_ids=pos)
    assert tc.kept.num_tokens + tc.cls_sent == 4 and out.shape[1] == ids.shape[1] - N + 4
    assert tc.cls_sent == (name == "visionzip")       # the official VisionZip sends the CLS, counted in K
    assert tc.tokens_per_layer == [4] * LAYERS and tc.stage_keep == (4,)


def test_tokens_per_layer_schedules(eager):
    ids, mask, pos = padded("left")
    kw = dict(input_ids=ids, pixel_values=pixels(), attention_mask=mask, position_ids=pos)
    cases = [("fastv", Budget(keep=5), dict(layers=2), [N, N, 5, 5, 5]),
             ("dart", Budget(keep=6), dict(layers=3), [N, N, N, 6, 6]),
             ("pyramiddrop", Budget(ratio=0.5), dict(layers=(1, 2, 3)), [N, 8, 4, 2, 2]),
             # official: the recycled clusters come on top of the kept count (9+1, 3+1, 1+1)
             ("sparsevlm", Budget(keep=4), dict(layers=(0, 1, 2)), [N, 10, 4, 2, 2]),
             (get_method("sparsevlm", count_recycled=True), Budget(keep=4), dict(layers=(0, 1, 2)), [N, 9, 3, 1, 1])]
    for name, budget, opts, expected in cases:
        with LlavaTokenCompression(eager, name, budget, **opts) as tc:
            logits(eager, **kw)
        assert tc.tokens_per_layer == expected, name
        recycled = tc.method.name == "sparsevlm" and not tc.method.count_recycled     # clusters on top
        extra = [recycle_counts(r.tokens_in - k)[1] if recycled else 0
                 for r, k in zip(tc.stages, tc.stage_keep, strict=True)]
        assert [r.kept.num_tokens for r in tc.stages] == [k + e for k, e in zip(tc.stage_keep, extra, strict=True)]
        assert tc.kept.num_tokens == expected[-1]


def test_budget_mappings():
    assert pyramiddrop_keeps(Budget(ratio=0.5), 576, 3) == (288, 144, 72)           # the official ratios
    assert pyramiddrop_keeps(Budget(ratio=0.125), 64, 3) == (8, 1, 1)               # never below one token
    for preset, keeps in SparseVLM.schedule.items():
        assert sparsevlm_keeps(Budget(keep=preset), 576, SparseVLM.schedule, 3) == keeps
    assert sparsevlm_keeps(Budget(ratio=1.0), 576, SparseVLM.schedule, 3) == (576, 576, 576)


def test_fastv_signal_equals_eager_attention(eager):
    ids, mask, pos = padded("left")
    kw = dict(input_ids=ids, pixel_values=pixels(), attention_mask=mask, position_ids=pos)
    with torch.no_grad():
        attn = eager(**kw, output_attentions=True).attentions[1]       # layer K−1 for K=2, [B, H, S, S]
    starts = (ids == IMG).int().argmax(1)
    for query in ("last", "all"):
        with LlavaTokenCompression(eager, "fastv", Budget(ratio=1.0), layers=2, query=query) as tc:
            logits(eager, **kw)
        got = tc.stages[0].signals["text_attention"]
        for b in range(2):
            cols = attn[b, :, :, starts[b]:starts[b] + N].mean(0)          # [S, N], head mean
            rows = mask[b].bool()
            want = cols[-1] if query == "last" else cols[rows].mean(0)
            torch.testing.assert_close(got[b], want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", ["fastv", "visionzip", "visionzip-original", "divprune", "prumerge",
                                  "pyramiddrop", "sparsevlm"])
def test_pruning_changes_output_and_positions(eager, case):
    ids, mask, pos = padded("left")
    kw = dict(input_ids=ids, pixel_values=pixels(), attention_mask=mask, position_ids=pos)
    ref = logits(eager, **kw)
    seen = {}
    name = case.split("-")[0]
    method = get_method("visionzip", count_cls=False) if case == "visionzip-original" else name
    opts = {**LAYER_OPTS.get(name, {}), **(dict(positions="original") if case.endswith("-original") else {})}
    layer = {"fastv": 2, "pyramiddrop": 1, "sparsevlm": 2}.get(name, 0)
    budget = Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=4)
    with LlavaTokenCompression(eager, method, budget, **opts) as tc:
        # registered after the adapter's hook, so it sees the pruned kwargs
        handle = eager.model.language_model.layers[layer].register_forward_pre_hook(
            lambda m, a, k: seen.update(pos=k["position_ids"]), with_kwargs=True)
        out = logits(eager, **kw)
        handle.remove()
    assert not torch.allclose(out[:, -1], ref[:, -1], atol=1e-3)
    starts = (ids == IMG).int().argmax(1)
    kept = tc.stages[0].kept if tc.stages else tc.kept
    k = kept.num_tokens + tc.cls_sent
    span = seen["pos"][torch.arange(2)[:, None], starts[:, None] + torch.arange(k)]
    image_start = pos.gather(1, starts[:, None])
    assert not torch.equal(kept.positions, torch.arange(kept.num_tokens).expand(2, -1))   # really pruned
    if name in ("fastv", "dart") or case.endswith("-original"):   # original positions, RoPE gaps kept
        assert tc.positions == "original" and not tc.cls_sent
        assert torch.equal(kept.positions, kept.positions.sort(1).values)
        assert torch.equal(span, image_start + kept.positions)
    else:                          # the official code renumbers: 0..L'−1 from the first real token
        assert tc.positions == "renumber" and torch.equal(span, image_start + torch.arange(k))
        for b, prompt in enumerate((P0, P1)):
            first = ids.shape[1] - len(prompt)                     # left padding
            assert torch.equal(seen["pos"][b, first:], torch.arange(seen["pos"].shape[1] - first))
    assert tc.cls_sent == (case == "visionzip")


def test_visionzip_sends_projected_cls_first(eager):
    """Official LLaVA-1.5 VisionZip: [CLS (layer −2, projected), dominant (raster), contextual]."""
    ids, mask, pos = padded("left")
    px = pixels()
    seen = {}
    with torch.no_grad():
        hidden = eager.model.vision_tower(px, output_hidden_states=True).hidden_states[-2]
        cls = eager.model.multi_modal_projector(hidden[:, 0])
        with LlavaTokenCompression(eager, "visionzip", Budget(keep=8)) as tc:
            handle = eager.model.language_model.register_forward_pre_hook(
                lambda m, a, k: seen.update(embeds=k["inputs_embeds"]), with_kwargs=True)
            eager(input_ids=ids, pixel_values=px, attention_mask=mask, position_ids=pos)
            handle.remove()
    starts = (ids == IMG).int().argmax(1)
    first = seen["embeds"][torch.arange(2), starts]
    torch.testing.assert_close(first, cls, atol=1e-6, rtol=1e-5)
    assert tc.cls_sent and tc.kept.num_tokens == 7 and tc.tokens_per_layer == [8] * LAYERS
    dominant = tc.kept.positions[:, :6]                           # 8 = CLS + 6 dominant + 1 contextual
    assert torch.equal(dominant, dominant.sort(1).values)


def test_prumerge_reads_official_signals(eager):
    """PruMerge(+): one full-width head of the last CLIP layer and its full-width keys (official)."""
    for name in ("prumerge", "prumerge+"):
        with LlavaTokenCompression(eager, name, Budget(keep=6)) as tc:
            assert tc._capture.signals == ("cls_attention_single_head", "keys_full")
            assert tc._capture.signal_layer == 2 and tc._capture.layer == 1    # q/k of the last layer (of 3)
        old = get_method(name, attention="head-sum", keys="head-mean")
        with LlavaTokenCompression(eager, old, Budget(keep=6)) as tc:
            assert tc._capture.signals == ("cls_attention", "keys")


# -- errors ----------------------------------------------------------------------------------------

def test_errors(eager):
    with pytest.raises(UnknownNameError, match="known: .*fastv"):
        LlavaTokenCompression(eager, "no-such-method", Budget(keep=4))
    for name in ("fastv", "visionzip"):
        with pytest.raises(BudgetError, match=r"\[1, 16\]"):
            LlavaTokenCompression(eager, name, Budget(keep=17), **LAYER_OPTS.get(name, {}))
    with pytest.raises(ValueError, match="allowed range"):
        LlavaTokenCompression(eager, "fastv", Budget(keep=4), layers=LAYERS)
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        LlavaTokenCompression(eager.model.language_model, "fastv", Budget(keep=4))


class NeedsCls(TokenMethod):
    name = "needs-cls"
    stage = "pre-llm"
    needs = ("cls_attention",)
    needs_cls = True
    cls_fallback = ""

    def __call__(self, batch, budget):
        return batch


def test_cls_method_on_siglip_tower():
    vc = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=32, patch_size=8)
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_id=IMG, image_seq_length=N,
                                   vision_feature_select_strategy="full")
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    with pytest.raises(ValueError, match="needs a CLS token"):
        LlavaTokenCompression(model, NeedsCls(), Budget(keep=4))
    # a method with a fallback runs on the SigLIP tower
    ids = torch.tensor([P0])
    with LlavaTokenCompression(model, "visionzip", Budget(keep=4)) as tc:
        out = logits(model, input_ids=ids, pixel_values=pixels(1))
    assert out.shape[1] == len(P0) - N + 4 and tc.kept.num_tokens == 4


# -- chains: a step before the LLM, then one inside it ---------------------------------------------

CHAINS = {
    "random+fastv": [("random", Budget(ratio=1.0)), ("fastv", Budget(ratio=1.0))],
    "tome0+fastv": [("tome", Budget(r=0)), ("fastv", Budget(ratio=1.0))],
}


@pytest.mark.parametrize("chain", CHAINS)
def test_chain_at_full_budgets_equals_unpatched(model, chain):
    ids, mask, pos = padded("left")
    kw = dict(input_ids=ids, pixel_values=pixels(), attention_mask=mask, position_ids=pos)
    ref = logits(model, **kw)
    with LlavaTokenCompression(model, CHAINS[chain], layers=2) as tc:
        assert torch.equal(logits(model, **kw), ref)
    assert tc.tokens_per_layer == [N] * LAYERS and tc.stage.endswith("+llm")


@pytest.mark.parametrize("case", ["visionzip+fastv", "tome+fixed-fastv", "divprune+fixed-sparsevlm",
                                  "flowcut+fixed-fastv"])
def test_chain_counts_positions_and_cached_generate(model, case):
    ids, mask, _ = padded("left")
    px = pixels()
    first, second = {
        "visionzip+fastv": (("visionzip", Budget(keep=8)), ("fastv", Budget(keep=4))),
        "tome+fixed-fastv": (("tome", Budget(r=3)), (FixedFastV(), Budget(keep=4))),
        "divprune+fixed-sparsevlm": (("divprune", Budget(keep=10)), (FixedSparseVLM(), Budget(keep=4))),
        "flowcut+fixed-fastv": (("flowcut", Budget(keep=8)), (FixedFastV(), Budget(keep=4))),
    }[case]
    sent = {"visionzip+fastv": 8, "tome+fixed-fastv": N - 3 * 2, "divprune+fixed-sparsevlm": 10,
            "flowcut+fixed-fastv": 8}[case]
    layers = (1, 3) if "sparsevlm" in case else 2
    with LlavaTokenCompression(model, [first, second], layers=layers) as tc:
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values=px, attention_mask=mask, use_cache=True)
        first_stage = tc.stage_plan[0].layer
        assert tc.tokens_per_layer[:first_stage] == [sent] * first_stage
        assert tc.tokens_per_layer[-1] <= 4 + (2 if "sparsevlm" in case else 0)   # SparseVLM's recycled on top
        lengths = [layer.keys.shape[-2] for layer in cache_of(out).layers]
        s_in = ids.shape[1] - N + sent
        assert lengths == [s_in - (sent - k) for k in tc.tokens_per_layer]
        # the caller's slots: the kept image tokens stand at original image slots, text slots are the caller's
        assert out.logits.shape[1] == tc.sequence_index.shape[1]
        assert bool((tc.sequence_index[:, -1] == ids.shape[1] - 1).all())
        assert bool((tc.kept.positions >= 0).all()) and bool((tc.kept.positions < N).all())
        if not case.startswith("visionzip"):        # the cached decode against re-pruning the whole prompt
            with torch.no_grad():
                cached = model.generate(input_ids=ids, pixel_values=px, attention_mask=mask, max_new_tokens=4,
                                        do_sample=False)
            reference = greedy_without_cache(model, ids, mask, px, 4)
            eos = model.generation_config.eos_token_id
            new = reference[:, ids.shape[1]:]
            hit = torch.isin(new, torch.tensor(eos))
            reference[:, ids.shape[1]:] = new.masked_fill((hit.cumsum(1) - hit.int()) > 0,
                                                          model.generation_config.pad_token_id or 0)
            assert torch.equal(cached, reference)


def test_tome_alone_on_llava_sends_merged_tokens_with_sizes(eager):
    ids, mask, pos = padded("left")
    with LlavaTokenCompression(eager, "tome", Budget(r=2)) as tc:
        out = logits(eager, input_ids=ids, pixel_values=pixels(), attention_mask=mask, position_ids=pos)
    k = N - 2 * 2                                   # 2 per layer in layers 0..−2 of the 3-layer tower
    assert tc.tokens_per_layer == [k] * LAYERS and out.shape[1] == ids.shape[1] - N + k
    assert torch.equal(tc.kept.sizes.sum(1), torch.full((2,), float(N)))     # every patch counted once
    assert torch.equal(tc.kept.positions, tc.kept.positions.sort(1).values)  # patch order, original positions


def test_chain_refusals(eager):
    import tokencodec

    chain = tokencodec.compress(eager, [("tome", Budget(r=1)), ("fastv", 4)], layers=2)
    assert isinstance(chain, LlavaTokenCompression) and chain.stage == "vision-encoder+llm"
    with pytest.raises(ValueError, match="followed by one 'llm' method"):
        LlavaTokenCompression(eager, [("fastv", 4), ("visionzip", 4)])
    with pytest.raises(ValueError, match="own budget"):
        LlavaTokenCompression(eager, [("visionzip", 8), ("fastv", 4)], Budget(keep=4))
    with pytest.raises(BudgetError, match="r·layers"):
        LlavaTokenCompression(eager, "tome", Budget(r=9))


def test_tome_takes_a_keep_budget_through_its_own_schedule(eager):
    # ToMe's knob is r; a keep budget becomes r per merging layer (layers 0..−2: 2 of 3) by tome.keep_schedule
    ids, mask, pos = padded("left")
    with LlavaTokenCompression(eager, "tome", Budget(keep=6)) as tc:
        logits(eager, input_ids=ids, pixel_values=pixels(), attention_mask=mask, position_ids=pos)
    assert tc._tower.r[:2] == [5, 5] and tc.record().tokens_per_layer == [6] * LAYERS
    assert tc.record().vision_tokens_per_layer == [N + 1 - 5, N + 1 - 10, N + 1 - 10]   # CLS included


# -- video: T frames as T images, one contiguous span of T·N tokens --------------------------------

T = 2
PV = [1, 5] + [IMG] * (T * N) + [7, 8]


def video_inputs(static: bool = False):
    px = pixels(2 * T, seed=5)
    if static:
        px = px.reshape(2, T, 3, 32, 32)[:, :1].expand(2, T, 3, 32, 32).reshape(2 * T, 3, 32, 32)
    return dict(input_ids=torch.tensor([PV, PV]), pixel_values=px)


@pytest.mark.parametrize("name", ["temporal", "uniform-frames", "divprune", "fastv"])
def test_video_at_full_budget_equals_unpatched(model, name):
    kw = video_inputs()
    ref = logits(model, **kw)
    with LlavaTokenCompression(model, name, Budget(ratio=1.0), frames=T, **LAYER_OPTS.get(name, {})) as tc:
        out = logits(model, **kw)
    assert torch.equal(out, ref)
    assert tc.tokens_per_layer == [T * N] * LAYERS


def test_video_spatial_method_runs_on_each_frame_alone(eager):
    kw = video_inputs()
    with LlavaTokenCompression(eager, "divprune", Budget(keep=T * 4), frames=T) as tc:
        logits(eager, **kw)
    frames = kw["pixel_values"].reshape(2, T, 3, 32, 32)
    for f in range(T):       # the same frame as a one-image prompt
        with LlavaTokenCompression(eager, "divprune", Budget(keep=4)) as alone:
            logits(eager, input_ids=torch.tensor([P1, P1]), pixel_values=frames[:, f])
        assert torch.equal(tc.kept.positions[:, 4 * f:4 * (f + 1)], alone.kept.positions + f * N)
    assert tc.tokens_per_layer == [T * 4] * LAYERS


def test_video_temporal_sends_the_key_frame_of_a_static_clip(eager):
    kw = video_inputs(static=True)
    with LlavaTokenCompression(eager, get_method("temporal", threshold=1e-3), Budget(ratio=1.0), frames=T) as tc:
        out = logits(eager, **kw)
    assert tc.kept.positions[0].tolist() == list(range(N)) and tc.kept.positions[1].tolist() == list(range(N))
    assert tc.tokens_per_layer == [N] * LAYERS and out.shape[1] == len(PV) - (T - 1) * N
    # skipped tokens are not repeated: the answer position keeps its original position id (RoPE gap)
    assert tc.sequence_index[0, -1].item() == len(PV) - 1


def test_video_refusals(eager):
    with pytest.raises(ValueError, match="frames=0"):
        LlavaTokenCompression(eager, "divprune", 8, frames=0)
    with pytest.raises(NotImplementedError, match="video"):
        LlavaTokenCompression(eager, "tome", Budget(r=2), frames=T)
    with pytest.raises(ValueError, match=r"exactly one image \(2 frame\(s\)\): 32 contiguous"):
        with LlavaTokenCompression(eager, "divprune", 8, frames=T):
            logits(eager, input_ids=torch.tensor([P1, P1]), pixel_values=pixels())


def test_an_image_token_without_pixels_is_text(eager):
    # a decode step whose generated token happens to be the image token: no image arrives with it
    ids = torch.tensor([[1, 5, IMG, 7]])
    with LlavaTokenCompression(eager, "visionzip", Budget(keep=4)), torch.no_grad():
        out = eager(input_ids=ids)
    assert out.logits.shape[:2] == (1, 4)
    with LlavaTokenCompression(eager, "visionzip", Budget(keep=4)), torch.no_grad(), \
            pytest.raises(ValueError, match="exactly one image"):
        eager(input_ids=ids, pixel_values=pixels(1))           # with pixels, one image token is malformed
