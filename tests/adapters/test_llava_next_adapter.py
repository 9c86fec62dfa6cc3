"""LlavaNextTokenCompression on a tiny random LlavaNextForConditionalGeneration built from configs (offline, seeded).

Views are 32 px CLIP views of 4×4 = 16 patches; the AnyRes pinpoints are LLaVA-NeXT's scaled by 32/336, so an
image of 20×50 px has a base view and 1×2 crops (3 views, a packed span of 16 + 4·(8+1) = 52 tokens) and one of
64×64 px a base and 2×2 crops (5 views, 16 + 8·(8+1) = 88). Tolerances as in test_llava_adapter.py: "exact" is
torch.equal; batched-vs-alone allows 1e-5 (other matmul shapes, other float32 summation orders).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

import tokencodec  # noqa: E402
from tokencodec.adapters.anyres import layout_for  # noqa: E402
from tokencodec.adapters.hf_compat import cache_of  # noqa: E402
from tokencodec.adapters.llava_next import LlavaNextTokenCompression  # noqa: E402
from tokencodec.adapters.registry import adapter_class, family_named  # noqa: E402
from tokencodec.tokens.batch import TokenBatch  # noqa: E402
from tokencodec.tokens.compress import METHODS  # noqa: E402
from tokencodec.tokens.compress.base import Budget  # noqa: E402
from tokencodec.tokens.compress.fastv import FastV, keep_top_k  # noqa: E402
from tokencodec.tokens.compress.pyramiddrop import PyramidDrop, pyramiddrop_keeps  # noqa: E402

IMG, LAYERS, S2 = 99, 5, 16
PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]
WIDE, SQUARE = (20, 50), (64, 64)                 # 3 views (1×2 crops), 5 views (2×2 crops)
LAYER_OPTS = {"fastv": dict(layers=2), "dart": dict(layers=2), "pyramiddrop": dict(layers=(1, 2, 3)),
              "sparsevlm": dict(layers=(1, 2, 3)), "holitom-llm": dict(layers=2)}
LLM = ["fastv", "sparsevlm", "pyramiddrop", "dart", "holitom-llm"]


def make(attn: str = "eager", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=32, patch_size=8)
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=LAYERS,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=100,
                                  max_position_embeddings=512, pad_token_id=0)
    cfg = transformers.LlavaNextConfig(vision_config=vc, text_config=tc, image_token_id=IMG,
                                       image_grid_pinpoints=PINPOINTS)
    model = transformers.LlavaNextForConditionalGeneration(cfg)
    model.set_attn_implementation(attn)
    return model.eval()


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def model(request):
    return make(request.param)


@pytest.fixture(scope="module")
def eager():
    return make("eager")


def inputs(model, sizes=(WIDE, SQUARE), seed: int = 3, text_after: int | None = None) -> dict:
    """One image per prompt, prompts of different lengths, left-padded; position ids as ``generate`` makes them.
    ``text_after``: that many text tokens after every image (else 4 and 3)."""
    lengths = [layout_for(model.config, s).length for s in sizes]
    after = [text_after or 3 + (i + 1) % 2 for i in range(len(sizes))]
    rows = [[1, 5, 6, 4][: 3 + i % 2] + [IMG] * n + [7, 8, 9, 10][: after[i]] for i, n in enumerate(lengths)]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    views = max(layout_for(model.config, s).views for s in sizes)
    px = torch.randn(len(sizes), views, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    return dict(input_ids=ids, attention_mask=mask, pixel_values=px, image_sizes=torch.tensor(sizes),
                position_ids=(mask.cumsum(1) - 1).clamp_min(0))


def row(kw: dict, b: int) -> dict:
    """Sample b alone: its padding removed, its own pixel views."""
    keep = kw["attention_mask"][b].bool()
    ids = kw["input_ids"][b][keep][None]
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=kw["pixel_values"][b:b + 1],
                image_sizes=kw["image_sizes"][b:b + 1], position_ids=torch.arange(ids.shape[1])[None])


def logits(model, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(**kw).logits


def hook_state(model: nn.Module) -> dict:
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), "forward" in vars(m),
                   "get_image_features" in vars(m)) for name, m in model.named_modules()}


# -- the AnyRes layout: the model's own ------------------------------------------------------------------------

@pytest.mark.parametrize("size", [WIDE, (50, 20), SQUARE, (30, 33), (10, 90), (90, 11), (33, 70)])
def test_packed_layout_is_the_models_pack(eager, size):
    lay = layout_for(eager.config, size)
    feats = torch.randn(lay.views, S2, 64)
    packed, lengths = eager.model.pack_image_features([feats], torch.tensor([size]), "default",
                                                     eager.model.image_newline)
    flat = torch.cat([feats.flatten(0, 1), eager.model.image_newline[None]])
    assert torch.equal(packed[0], flat[torch.where(lay.packed >= 0, lay.packed, lay.views * S2)])
    assert lay.length == int(lengths[0])
    kept = lay.packed_slot >= 0                  # packed_slot inverts packed on the patches unpadding kept
    assert torch.equal(lay.packed[lay.packed_slot[kept]], torch.arange(lay.views * S2)[kept])


def test_spatial_slots_stitch_the_crops_row_by_row(eager):
    lay = layout_for(eager.config, WIDE)          # base, then crops 0 and 1 side by side: an 4×8 patch grid
    assert (lay.rows, lay.cols, lay.views, lay.length) == (1, 2, 3, 52)
    slot = lay.spatial_slot.view(3, S2)
    assert torch.equal(slot[0], torch.arange(S2))
    # crop 0 patch (y, x) → row y, column x; crop 1 → column 4 + x
    assert slot[1, [0, 3, 4, 15]].tolist() == [16 + 0, 16 + 3, 16 + 8, 16 + 27]
    assert slot[2, [0, 3, 4, 15]].tolist() == [16 + 4, 16 + 7, 16 + 12, 16 + 31]


# -- no compression: the unpatched model -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["random-joint", "divprune", *LLM])
def test_full_budget_equals_unpatched(model, name):
    kw = inputs(model, (WIDE, WIDE))             # one span length (in-LLM methods need it), prompts of two lengths
    ref = logits(model, **kw)
    method, opts = ("random", dict(crops="joint")) if name == "random-joint" else (name, LAYER_OPTS.get(name, {}))
    with LlavaNextTokenCompression(model, method, Budget(ratio=1.0), **opts) as tc:
        out = logits(model, **kw)
    assert torch.equal(out, ref)
    assert tc.tokens_per_layer == [52] * LAYERS


def test_per_crop_full_budget_is_the_official_spatial_baseline(eager):
    """Per crop at the full budget: base view, then the stitched crop grid, no unpadding, no newline (CDPruner's and
    VisPruner's "2 880 tokens" layout), positions renumbered: the unpatched LM on that sequence built by hand."""
    kw = inputs(eager, (WIDE, WIDE))
    with LlavaNextTokenCompression(eager, "random", Budget(ratio=1.0)) as tc:
        out = logits(eager, **kw)
    lay = layout_for(eager.config, WIDE)
    with torch.no_grad():
        hidden = eager.model.vision_tower(kw["pixel_values"].flatten(0, 1), output_hidden_states=True).hidden_states
        views = eager.model.multi_modal_projector(hidden[-2][:, 1:]).view(2, lay.views * S2, -1)
    spatial = torch.empty_like(lay.spatial_slot)
    spatial[lay.spatial_slot] = torch.arange(lay.views * S2)       # the view-patch at each spatial slot
    embeds = eager.get_input_embeddings()(kw["input_ids"])
    rows, ids = [], []
    for b in range(2):
        s, t = int((kw["input_ids"][b] == IMG).int().argmax()), kw["input_ids"][b]
        rows.append(torch.cat([embeds[b, :s], views[b, spatial], embeds[b, s + lay.length:]]))
        ids.append(torch.cat([t[:s], torch.full((lay.views * S2,), IMG), t[s + lay.length:]]))
    e, mask = torch.stack(rows), (torch.stack(ids) != 0).long()
    with torch.no_grad():
        ref = eager(inputs_embeds=e, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0)).logits
    assert tc.tokens_per_layer == [lay.views * S2] * LAYERS
    assert torch.allclose(out, ref, atol=1e-5, rtol=0)
    assert torch.equal(tc.kept.positions, torch.arange(lay.views * S2).expand(2, -1))


def test_exit_restores_model(eager):
    kw = inputs(eager)
    before, ref = hook_state(eager), logits(eager, **kw)
    with LlavaNextTokenCompression(eager, "visionzip", Budget(keep=4)):
        assert hook_state(eager) != before
        assert logits(eager, **kw).shape != ref.shape
    assert hook_state(eager) == before
    assert torch.equal(logits(eager, **kw), ref)


# -- layouts per method, known answers -----------------------------------------------------------------------------

def test_visionzip_layout_is_the_official_restore_image_features_sorted(eager):
    """Official LLaVA-NeXT VisionZip: base [CLS, dominant, contextual]; the crops' dominant tokens on the stitched
    grid in raster order; every crop's CLS; every crop's contextual tokens, crop after crop. A hand-made output of
    3 tokens per view (2 dominant + 1 contextual) on the 1×2-crop image."""
    tc = LlavaNextTokenCompression(eager, "visionzip", Budget(keep=4))
    lay = layout_for(eager.config, WIDE)
    pos = torch.tensor([[5, 1, 9], [2, 6, 13], [0, 3, 12]])             # per view, in the method's order
    out = TokenBatch(features=torch.randn(3, 3, 32), grid=(4, 4), positions=pos)
    tag = torch.arange(3)[:, None] * 10 + torch.arange(3)                # projected: view·10 + j; CLS: 100 + view
    projected = tag[..., None].float().expand(3, 3, 64)
    cls = (100 + torch.arange(3))[:, None].float().expand(3, 64)
    kept, sent, rep, span_mask = tc._spatial_span(out, projected, cls, torch.zeros(3, 32), (lay,), grid=2,
                                                  method_order=True)
    # crop 0 patches 2, 6 → stitched 2, 10; crop 1 patches 0, 3 → 4, 7; contextual 13 → 25 (crop 0), 12 → 28 (crop 1)
    assert kept.positions[0].tolist() == [0, 5, 1, 9] + [16 + 2, 16 + 4, 16 + 7, 16 + 10] + [16, 20] + [41, 44]
    assert sent[0, :, 0].tolist() == [100, 0, 1, 2, 10, 20, 21, 11, 101, 102, 12, 22]
    assert span_mask is None and kept.sizes[0].tolist() == [1.0] * 12
    slots = lay.packed_slot[[5, 1, 9, 18, 32, 35, 22, 29, 44]].clamp_min(0).tolist()    # a CLS stands at slot 0
    assert rep[0].tolist() == [0, *slots[:7], 0, 0, *slots[7:]]


def test_visionzip_per_crop_on_the_model(eager):
    kw = inputs(eager)
    with LlavaNextTokenCompression(eager, "visionzip", Budget(keep=6)) as tc:    # per view: CLS + 4 + 1
        logits(eager, **kw)
    rec = tc.record()
    assert rec.extra["views"] == [3, 5] and rec.extra["spans"] == [52, 88] and rec.extra["crops"] == "per-crop"
    assert rec.extra["visual_tokens"].tolist() == [18, 30] and rec.tokens_per_layer == [30] * LAYERS
    for b, views in enumerate((3, 5)):
        p = rec.kept.positions[b, :6 * views].tolist()
        crops = views - 1
        grid, cls, ctx = p[6:6 + 4 * crops], p[6 + 4 * crops:6 + 5 * crops], p[6 + 5 * crops:]
        assert p[0] == 0 and all(q < S2 for q in p[1:6]) and p[1:5] == sorted(p[1:5])    # base: CLS, dominant raster
        assert grid == sorted(grid) and min(grid) >= S2                    # the crops' dominant: stitched raster
        assert cls == layout_for(eager.config, (WIDE, SQUARE)[b]).spatial_slot.view(views, S2)[1:, 0].tolist()
        assert len(ctx) == crops
    assert rec.kept.mask[0].tolist() == [True] * 18 + [False] * 12


@pytest.mark.parametrize("name", ["vispruner", "random", "pool-avg", "token-norm"])
def test_selection_per_crop_is_base_then_stitched_raster(eager, name):
    kw = inputs(eager)
    with LlavaNextTokenCompression(eager, name, Budget(keep=4)) as tc:
        logits(eager, **kw)
    for b, views in enumerate((3, 5)):
        p = tc.kept.positions[b, :4 * views]
        assert torch.equal(p, p.sort().values) and int((p < S2).sum()) == 4


def test_divprune_is_joint_over_the_packed_span_newlines_included(eager):
    kw = inputs(eager)
    with LlavaNextTokenCompression(eager, "divprune", Budget(ratio=0.5)) as tc:
        logits(eager, **kw)
    rec = tc.record()
    assert rec.extra["crops"] == "joint" and rec.extra["visual_tokens"].tolist() == [26, 44]
    assert tc.kept.grid == (1, 88)
    for b, size in enumerate((WIDE, SQUARE)):
        p = tc.kept.positions[b][tc.kept.positions[b] >= 0]
        assert torch.equal(p, p.sort().values) and int(p.max()) < layout_for(eager.config, size).length
    # the pool holds the newline tokens: its features are the model's image_newline
    newline = torch.cat([(layout_for(eager.config, s).packed[tc.kept.positions[b].clamp_min(0)] < 0) &
                         (tc.kept.positions[b] >= 0) for b, s in enumerate((WIDE, SQUARE))])
    feats = tc.kept.features.flatten(0, 1)[newline]
    assert torch.allclose(feats, eager.model.image_newline.expand_as(feats))


def test_pyramiddrop_counts_per_layer_are_ratios_of_the_packed_span(eager):
    kw = inputs(eager, (SQUARE, SQUARE))
    with LlavaNextTokenCompression(eager, "pyramiddrop", Budget(ratio=0.5), layers=(1, 2, 3)) as tc:
        logits(eager, **kw)
    keeps = pyramiddrop_keeps(Budget(ratio=0.5), 88, 3)
    assert tc.tokens_per_layer == [88, *keeps, keeps[-1]]


# -- batches: rows of different image sizes --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["visionzip", "vispruner", "prumerge+", "divprune", "random-joint", "tome"])
def test_batch_rows_equal_each_sample_alone(model, name):
    kw = inputs(model)
    method, opts, budget = {"random-joint": ("random", dict(crops="joint"), Budget(ratio=0.5)),
                            "tome": ("tome", {}, Budget(r=2))}.get(name, (name, {}, Budget(keep=4)))
    if name == "divprune":
        budget = Budget(ratio=0.5)
    with LlavaNextTokenCompression(model, method, budget, **opts) as tc:
        out = logits(model, **kw)
        valid = tc._run.valid              # the LLM's real slots (caller padding, row padding, short spans)
        rows = tc._row_tokens
        alone = [logits(model, **row(kw, b)) for b in range(2)]
    for b in range(2):
        assert torch.allclose(out[b][valid[b]], alone[b][0], atol=1e-5, rtol=0)
    assert int(rows[0]) < int(rows[1]) == tc.tokens_per_layer[0]          # the rows kept their own counts


@pytest.mark.parametrize("name", ["fastv", "sparsevlm", "dart"])
def test_in_llm_batch_rows_equal_each_sample_alone(model, name):
    # DART's text pivots are the batch's widest text after the image (rows with less text get zero pivots, which
    # alone they do not have): the rows here differ in the text before the image only
    kw = inputs(model, (SQUARE, SQUARE), text_after=3 if name == "dart" else None)
    with LlavaNextTokenCompression(model, name, Budget(keep=20), **LAYER_OPTS[name]) as tc:
        out = logits(model, **kw)
        index = tc.sequence_index
        alone = [logits(model, **row(kw, b)) for b in range(2)]
    for b in range(2):
        real = kw["attention_mask"][b].bool()[index[b]]
        assert torch.allclose(out[b][real], alone[b][0], atol=1e-5, rtol=0)


# -- generate() with the pruned KV cache ------------------------------------------------------------------------

class FixedFastV(FastV):
    """FastV whose choice does not depend on the prompt's last token: the even slots."""

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)
        return keep_top_k(batch, -(batch.positions % 2).float(), budget.tokens(batch.num_tokens))


class FixedPyramidDrop(PyramidDrop):
    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)
        return keep_top_k(batch, -(batch.positions % 2).float(), budget.tokens(batch.num_tokens))


def greedy_without_cache(model, kw: dict, steps: int) -> torch.Tensor:
    """Re-run the whole (re-pruned) prompt each step: the reference for cached decoding."""
    ids, mask = kw["input_ids"], kw["attention_mask"]
    for _ in range(steps):
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            out = model(input_ids=ids, pixel_values=kw["pixel_values"], image_sizes=kw["image_sizes"],
                        attention_mask=mask, position_ids=pos, use_cache=False)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


@pytest.mark.parametrize("case", ["visionzip", "vispruner", "divprune", "random-joint-original", "fixed-fastv",
                                  "fixed-pyramiddrop-renumber", "chain"])
def test_cached_generate_equals_re_pruning(model, case):
    method, opts, budget, sizes = {
        "visionzip": ("visionzip", {}, Budget(keep=6), (WIDE, SQUARE)),
        "vispruner": ("vispruner", {}, Budget(keep=4), (WIDE, SQUARE)),
        "divprune": ("divprune", {}, Budget(ratio=0.4), (WIDE, SQUARE)),
        "random-joint-original": ("random", dict(crops="joint"), Budget(ratio=0.5), (WIDE, SQUARE)),
        "fixed-fastv": (FixedFastV(), dict(layers=2), Budget(keep=20), (SQUARE, SQUARE)),
        "fixed-pyramiddrop-renumber": (FixedPyramidDrop(), dict(layers=(1, 3)), Budget(ratio=0.5), (WIDE, WIDE)),
        "chain": ([("vispruner", Budget(keep=6)), (FixedFastV(), Budget(keep=10))], dict(layers=2), None,
                  (WIDE, WIDE)),
    }[case]
    kw = inputs(model, sizes)
    kw.pop("position_ids")
    with LlavaNextTokenCompression(model, method, budget, **opts) as tc:
        with torch.no_grad():
            out = model(**kw, use_cache=True)
        lengths = [layer.keys.shape[-2] for layer in cache_of(out).layers]
        s_in = tc._run.s_in                                # the width entering layer 0
        assert lengths == [s_in - (tc.tokens_per_layer[0] - k) for k in tc.tokens_per_layer]
        assert lengths[-1] < kw["input_ids"].shape[1]
        with torch.no_grad():
            cached = model.generate(**kw, max_new_tokens=5, do_sample=False)
        reference = greedy_without_cache(model, kw, 5)
    eos, pad = model.generation_config.eos_token_id, model.generation_config.pad_token_id
    n = kw["input_ids"].shape[1]
    new = reference[:, n:]
    done = (torch.isin(new, torch.tensor(eos)).cumsum(1) - torch.isin(new, torch.tensor(eos)).int()) > 0
    reference[:, n:] = new.masked_fill(done, pad if pad is not None else 0)
    assert torch.equal(cached, reference)


# -- every method the family supports runs ----------------------------------------------------------------------

# coded is left out (as in tests/test_host_sync.py): it needs a profile fitted to the model's features, and codes
# one image per call (per crop, a call holds every view)
SUPPORTED = [n for n in METHODS.names() if family_named("LLaVA-NeXT").supports(METHODS.get(n)) != "—"
             and n != "coded"]


def test_the_family_runs_what_llava_runs_but_video_and_the_unwired_two():
    llava = family_named("LLaVA-1.5")
    for name in METHODS.names():
        m = METHODS.get(name)
        not_wired = name in ("cdpruner", "flowcut")      # per-image relevance over views; FlowCut's LLM-side cut
        expected = "—" if m.video or not_wired else llava.supports(m)
        assert family_named("LLaVA-NeXT").supports(m) == expected, name


@pytest.mark.parametrize("name", SUPPORTED)
def test_every_supported_method_runs(eager, name):
    m = METHODS.get(name)
    kw = inputs(eager, (WIDE, WIDE)) if m.stage == "llm" else inputs(eager)
    budget = Budget(r=2) if name == "tome" else Budget(keep=8) if m.stage == "llm" else Budget(keep=4)
    patch = tokencodec.compress(eager, name, budget, **LAYER_OPTS.get(name, {}))
    assert isinstance(patch, LlavaNextTokenCompression) and adapter_class(eager, name) is LlavaNextTokenCompression
    with patch:
        out = logits(eager, **kw)
    rec = patch.record()
    assert torch.isfinite(out).all()
    assert rec.extra["views"] == ([3, 3] if m.stage == "llm" else [3, 5])
    assert rec.tokens_per_layer[-1] < (52 if m.stage == "llm" else 5 * S2)


# -- refusals ---------------------------------------------------------------------------------------------------

def test_refusals(eager):
    with pytest.raises(ValueError, match="crops must be"):
        LlavaNextTokenCompression(eager, "random", Budget(keep=4), crops="tiles")
    with pytest.raises(ValueError, match="positions='renumber' only"):
        LlavaNextTokenCompression(eager, "random", Budget(keep=4), positions="original")
    with pytest.raises(ValueError, match="tower signals"):
        LlavaNextTokenCompression(eager, "visionzip", Budget(keep=4), crops="joint")
    with pytest.raises(ValueError, match="crops='joint' does not apply"):
        LlavaNextTokenCompression(eager, "tome", Budget(r=2), crops="joint")
    with pytest.raises(TypeError):
        LlavaNextTokenCompression(eager, "random", Budget(keep=4), frames=2)
    with pytest.raises(TypeError, match="unsupported model"):
        LlavaNextTokenCompression(make_llava(), "random", Budget(keep=4))
    kw = inputs(eager)
    with LlavaNextTokenCompression(eager, "fastv", Budget(keep=8), layers=2), \
            pytest.raises(NotImplementedError, match="one span length"):
        logits(eager, **kw)
    with LlavaNextTokenCompression(eager, [("vispruner", Budget(keep=4)), ("fastv", Budget(keep=8))], layers=2), \
            pytest.raises(NotImplementedError, match="same count in every image"):
        logits(eager, **kw)
    with LlavaNextTokenCompression(eager, "random", Budget(keep=4)), pytest.raises(ValueError, match="one image"):
        bad = dict(kw, image_sizes=torch.tensor([SQUARE, WIDE]))      # spans that do not match the sizes
        logits(eager, **bad)


def make_llava() -> nn.Module:
    vc = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                       num_attention_heads=4, image_size=32, patch_size=8)
    tc = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=100)
    return transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(vision_config=vc, text_config=tc))
