"""LlavaOnevisionTokenCompression on tiny random LLaVA-OneVision models built from configs (offline, seeded).

Images: two 40×60 images → 5 AnyRes views (base + 2×2 crops), packed as 64 base tokens then a 10×16 grid whose
rows end in a newline: 234 image tokens. Video: T = 3 frames of 8×8 patches pooled to 4×4: 48 tokens + 1 newline.
Video inputs are built by hand (``pixel_values_videos``): OV's video processor needs torchvision.
Batched-vs-alone comparisons allow 1e-5 (padding changes float32 summation order).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import tokencodec  # noqa: E402
from tokencodec.adapters.hf_compat import cache_of  # noqa: E402
from tokencodec.adapters.llava_onevision import (  # noqa: E402
    LlavaOnevisionTokenCompression,
    anyres_layout,
    pack_views,
    view_budgets,
)
from tokencodec.adapters.registry import family_of  # noqa: E402
from tokencodec.adapters.support import support_matrix  # noqa: E402
from tokencodec.models.tiny import OV_PINPOINTS, llava_onevision_config  # noqa: E402
from tokencodec.tokens.batch import TokenBatch  # noqa: E402
from tokencodec.tokens.compress import METHODS, Budget, BudgetError, get_method  # noqa: E402
from tokencodec.tokens.compress.fastv import FastV, keep_top_k  # noqa: E402

IMG, VID = 3, 4
LAYERS = 5
T, FRAME = 3, 16                     # video frames, pooled tokens per frame
SIZE = (40, 60)                      # image (height, width): 5 views, a 10×16 high-resolution grid
LLM_OPTS = {"fastv": dict(layers=2), "dart": dict(layers=2), "pyramiddrop": dict(layers=(1, 2, 3)),
            "sparsevlm": dict(layers=(1, 2, 3)), "holitom-llm": dict(layers=2)}
P0, P1 = [1, 5, 6], [1, 5]           # text before the visual span (the second prompt is shorter: left-padded)
AFTER = [7, 8, 9]


def make(head: bool = False, attn: str = "sdpa", aspect: str = "anyres_max_9", seed: int = 0):
    torch.manual_seed(seed)
    cfg = llava_onevision_config(50, IMG, VID, text_layers=LAYERS, pad_token_id=0, head=head,
                                 vision_aspect_ratio=aspect)
    model = transformers.LlavaOnevisionForConditionalGeneration(cfg)
    model.set_attn_implementation(attn)
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return make()


@pytest.fixture(scope="module")
def with_head():
    return make(head=True)


def image_inputs(sizes=(SIZE, SIZE), seed: int = 0, aspect: str | None = None, prompts=(P0, P1)) -> dict:
    rng = np.random.default_rng(seed)
    images = [(rng.random((*s, 3)) * 255).astype(np.uint8) for s in sizes]
    processor = transformers.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32},
                                                              image_grid_pinpoints=OV_PINPOINTS)
    out = dict(processor(images=images, return_tensors="pt"))
    cfg = make_config(aspect)
    spans = [anyres_layout(cfg, s).span for s in sizes]
    out.update(padded([p + [IMG] * n + AFTER for p, n in zip(prompts, spans, strict=True)]))
    return out


def make_config(aspect: str | None = None):
    return llava_onevision_config(50, IMG, VID, text_layers=LAYERS, vision_aspect_ratio=aspect or "anyres_max_9")


def video_inputs(b: int = 2, static: bool = False, seed: int = 5, prompts=(P0, P1)) -> dict:
    px = torch.randn(b, T, 3, 32, 32, generator=torch.Generator().manual_seed(seed))
    if static:
        px = px[:, :1].expand(b, T, 3, 32, 32).contiguous()
    out = padded([p + [VID] * (T * FRAME + 1) + AFTER for p in prompts[:b]])
    return dict(out, pixel_values_videos=px)


def padded(rows: list[list[int]]) -> dict:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return dict(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp_min(0))


def logits(model, **kw) -> torch.Tensor:
    with torch.no_grad():
        return model(**kw).logits


def alone(kw: dict, b: int) -> dict:
    """Sample b of a padded batch, unpadded."""
    real = kw["attention_mask"][b].bool()
    out = {k: v[b:b + 1] for k, v in kw.items() if k not in ("input_ids", "attention_mask", "position_ids")}
    return dict(out, input_ids=kw["input_ids"][b:b + 1, real])


SPAN = anyres_layout(make_config(), SIZE).span          # 64 + 10·17 = 234
NEWLINES = anyres_layout(make_config(), SIZE).grid[0]   # 10
ROWS = {"prumerge": dict(neighbours=0, extra_token=False), "prumerge+": dict(neighbours=0, extra_token=False)}


def method_for(name: str, **extra):
    # PruMerge always merges neighbours into kept tokens; without neighbours and the extra token it is exact
    return get_method(name, **ROWS.get(name, {}), **extra)


# -- the layout is the model's ----------------------------------------------------------------------

@pytest.mark.parametrize("aspect", ["anyres_max_9", "anyres_max_1"])   # _1: the grid is down-scaled bilinearly
@pytest.mark.parametrize("size", [(40, 60), (60, 40), (30, 30), (64, 20)])
def test_anyres_layout_and_packing_are_the_models(size, aspect):
    model = make(aspect=aspect)
    ov = model.model
    layout = anyres_layout(model.config, size)
    assert layout.resized == (aspect == "anyres_max_1" and layout.window[2] * layout.window[3] > 1.21 * 64)
    px = image_inputs(sizes=(size,), aspect=aspect, prompts=(P0,))
    with torch.no_grad():
        packed = ov.get_image_features(px["pixel_values"], px["image_sizes"]).pooler_output[0]
        tower = ov.vision_tower(px["pixel_values"][0, :layout.views], output_hidden_states=True)
        views = ov.multi_modal_projector(tower.hidden_states[-1])       # the feature layer (before the norm)
    h, w = layout.grid
    assert packed.shape[0] == layout.span == 64 + h * (w + 1)
    ours = pack_views(views[None], layout)[0]
    theirs = torch.cat([packed[:64], packed[64:].reshape(h, w + 1, -1)[:, :w].reshape(h * w, -1)])
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert logits(model, **px).shape[1] == px["input_ids"].shape[1]       # the prompt's count is the model's


def test_view_budgets():
    assert view_budgets(Budget(keep=32), (64, 160)) == [Budget(keep=9), Budget(keep=23)]
    assert view_budgets(Budget(ratio=0.5), (64, 160)) == [Budget(ratio=0.5)] * 2
    with pytest.raises(BudgetError, match="allowed range"):
        view_budgets(Budget(keep=1), (64, 160))


# -- full budget == the unpatched model ---------------------------------------------------------------

# coded needs a token profile fitted to the model (none is shipped for OV's tokens), as on LLaVA-1.5's tables
IMAGE_METHODS = [n for n in METHODS.names() if support_matrix()[n]["LLaVA-OneVision"] in ("yes", "fallback")
                 and n != "coded"]
VIDEO_METHODS = [n for n in METHODS.names() if support_matrix()[n]["LLaVA-OneVision"] == "video"]
# identity at ratio 1 with the representative-sorted layout (their options as on LLaVA-1.5's test)
IDENTITY = ["random", "pool-avg", "pool-resize", "divprune", "visionzip", "prumerge", "prumerge+", "token-norm",
            "vispruner", "dct", "fastv", "sparsevlm", "pyramiddrop", "dart", "holitom-llm"]


@pytest.mark.parametrize("name", IDENTITY)
def test_image_full_budget_equals_unpatched(model, name):
    kw = image_inputs()
    ref = logits(model, **kw)
    with LlavaOnevisionTokenCompression(model, method_for(name), Budget(ratio=1.0), positions="original",
                                        **LLM_OPTS.get(name, {})) as tc:
        out = logits(model, **kw)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert tc.tokens_per_layer == [SPAN] * LAYERS
    assert tc.record().extra["views"] == 5 and tc.record().projector_tokens == 5 * 64


@pytest.mark.parametrize("name", ["random", "pool-avg", "divprune", "visionzip", "uniform-frames", "temporal",
                                  "holitom", "fastv", "dart", "holitom-llm"])
def test_video_full_budget_equals_unpatched(model, name):
    kw = video_inputs()
    ref = logits(model, **kw)
    # holitom at τ = 1 sees no static token: every frame is its own window, r′ = 1, every token in order
    method = get_method("holitom", tau=1.0) if name == "holitom" else method_for(name)
    with LlavaOnevisionTokenCompression(model, method, Budget(ratio=1.0), positions="original",
                                        **LLM_OPTS.get(name, {})) as tc:
        out = logits(model, **kw)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert tc.tokens_per_layer == [T * FRAME] * LAYERS and tc.record().extra["views"] == T


# -- every supported method runs, with its counts -----------------------------------------------------

@pytest.mark.parametrize("name", IMAGE_METHODS)
def test_every_image_method_runs_per_view_with_its_counts(model, name):
    kw = image_inputs()
    m = METHODS.get(name)
    budget = Budget(ratio=0.5) if name == "pyramiddrop" else Budget(keep=32)
    with tokencodec.compress(model, name, budget, **LLM_OPTS.get(name, {})) as tc:
        out = logits(model, **kw)
    rec = tc.record()
    assert isinstance(tc, LlavaOnevisionTokenCompression)
    assert out.shape[1] == kw["input_ids"].shape[1] - SPAN + rec.tokens_per_layer[-1]    # logits: the last layer's
    if m.stage == "llm":
        assert rec.tokens_per_layer[0] == SPAN and rec.tokens_per_layer[-1] < SPAN
        return
    # per view: 9 of the 64 base tokens, 23 of the 160 high-resolution ones (at most: pooling's grid), every newline
    kept = rec.kept
    real = kept.mask[0] if kept.mask is not None else torch.ones(kept.num_tokens, dtype=torch.bool)
    pos = kept.positions[0][real]
    base, newline = pos < 64, (pos >= 64) & ((pos - 64) % 17 == 16)
    assert int(newline.sum()) == NEWLINES and 0 < int(base.sum()) and 0 < int((~base & ~newline).sum())
    if name not in ("pool-avg", "pool-resize", "dct", "prumerge", "prumerge+"):   # grids near K; adaptive counts
        assert int(base.sum()) == 9 and int((~base & ~newline).sum()) == 23
        assert rec.tokens_per_layer == [32 + NEWLINES] * LAYERS


@pytest.mark.parametrize("name", [n for n in IMAGE_METHODS if METHODS.get(n).stage == "pre-llm"] + VIDEO_METHODS)
def test_every_video_method_runs(with_head, name):
    """Spatial methods on each frame alone at K/T, video methods on the clip (FastVID with the pooling head)."""
    kw = video_inputs()
    budget = Budget(keep={"temporal": 2 * FRAME, "uniform-frames": FRAME}.get(name, T * 6))
    with tokencodec.compress(with_head, name, budget) as tc:
        out = logits(with_head, **kw)
    rec = tc.record()
    k = rec.tokens_per_layer[0]
    # HoliTom's official count is data dependent: at most r·N + 1.25·T
    assert out.shape[1] == kw["input_ids"].shape[1] - T * FRAME + k and 0 < k <= budget.keep + 1.25 * T
    assert rec.extra["views"] == T and rec.projector_tokens == T * 64
    pos = rec.kept.positions
    if not METHODS.get(name).video and name not in ("pool-avg", "pool-resize", "dct", "prumerge", "prumerge+"):
        frame = pos.clamp_min(0) // FRAME
        assert k == T * 6 and all((row == f).sum() == 6 for row in frame for f in range(T))


def test_holitom_merges_a_static_clip_into_its_first_frame(model):
    kw = video_inputs(static=True)
    with LlavaOnevisionTokenCompression(model, "holitom", Budget(ratio=0.5)) as tc:
        out = logits(model, **kw)
    # one window: 16 static tokens, R = 16·(T−1), r′ = min(0.5·T, 1) = 1: 16 tokens at frame 0's positions
    assert tc.kept.positions[0].tolist() == list(range(FRAME)) and tc.kept.sizes[0].tolist() == [float(T)] * FRAME
    assert tc.tokens_per_layer == [FRAME] * LAYERS and out.shape[1] == kw["input_ids"].shape[1] - (T - 1) * FRAME


class Spy:
    """Records the batch a method is given (the adapter's signals)."""

    def __init__(self, method):
        self.method, self.batch = method, None

    def __getattr__(self, name):
        return getattr(self.method, name)

    def __call__(self, batch, budget):
        self.batch = batch
        return self.method(batch, budget)


def test_signals_are_the_towers_pooled_like_the_features():
    with_head = make(head=True, attn="eager")       # eager: the tower's attention maps are the reference
    kw = video_inputs(b=1)
    ov = with_head.model
    frames = kw["pixel_values_videos"][0]
    with torch.no_grad():
        tower = ov.vision_tower(frames, output_hidden_states=True, output_attentions=True)
        # holitom: eager attention of the last (feature) layer, mean over heads and query rows, 8×8 → 4×4 bilinear
        received = tower.attentions[-1].float().mean((1, 2))
        x = ov.vision_tower.post_layernorm(tower.hidden_states[-1])
        probe = ov.vision_tower.head.probe.expand(T, -1, -1)
        _, head_attention = ov.vision_tower.head.attention(probe, x, x)
    pool = ov.apply_pooling
    holitom, fastvid = Spy(get_method("holitom")), Spy(get_method("fastvid"))
    for spy in (holitom, fastvid):
        with LlavaOnevisionTokenCompression(with_head, spy.method, Budget(ratio=0.5)) as tc:
            tc.pre_method = spy
            logits(with_head, **kw)
    torch.testing.assert_close(holitom.batch.signals["mean_attention"][0],
                               pool(received[..., None]).reshape(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(fastvid.batch.signals["pooler_attention"][0],
                               pool(head_attention[:, 0, :, None]).reshape(-1), atol=1e-6, rtol=0)
    # the head's pooled output of each frame: the tower's own pooler_output (its feature layer is the last)
    torch.testing.assert_close(fastvid.batch.context["frame_features"][0], tower.pooler_output, atol=1e-6, rtol=0)
    assert holitom.batch.frames == T and holitom.batch.grid == (4, 4)


def test_fastvid_without_the_pooling_head_runs_its_named_options_only(model):
    with pytest.raises(ValueError, match="saliency='cls', frame_feature='mean'"):
        LlavaOnevisionTokenCompression(model, "fastvid", Budget(ratio=0.5))
    method = get_method("fastvid", saliency="cls", frame_feature="mean")
    kw = video_inputs()
    with LlavaOnevisionTokenCompression(model, method, Budget(ratio=0.5)) as tc:
        logits(model, **kw)
    # T = 3 ≤ c: every frame its own segment, n = 8 = 5 salient + 3 merged per frame, original order
    pos = tc.kept.positions
    assert tc.tokens_per_layer == [T * 8] * LAYERS and torch.equal(pos, pos.sort(1).values)
    assert all(((pos[b] // FRAME) == f).sum() == 8 for b in range(2) for f in range(T))


def test_chain_holitom_then_holitom_llm_plans_from_what_was_sent(model):
    kw = video_inputs()
    chain = [("holitom", Budget(ratio=0.5)), ("holitom-llm", Budget(ratio=0.5))]
    with LlavaOnevisionTokenCompression(model, chain, layers=2) as tc:
        out = logits(model, **kw)
    first = tc.tokens_per_layer[0]
    assert tc.stage_keep == (round(first * 0.5),)
    assert tc.tokens_per_layer == [first] * 2 + [round(first * 0.5)] * 3
    assert out.shape[1] == kw["input_ids"].shape[1] - T * FRAME + round(first * 0.5)
    assert tc.stages[0].kept.sizes.sum() == tc.kept.sizes.sum()     # every sent token merged into a kept one


# -- batches ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["divprune", "visionzip", "pool-avg", "fastv", "sparsevlm", "dart"])
@pytest.mark.parametrize("modality", ["image", "video"])
def test_batch_rows_equal_each_sample_alone(model, name, modality):
    kw = image_inputs(seed=3) if modality == "image" else video_inputs()
    budget = Budget(keep=24 if modality == "image" else 12)
    with LlavaOnevisionTokenCompression(model, name, budget, **LLM_OPTS.get(name, {})) as tc:
        out = logits(model, **kw)
        index = tc.sequence_index
        for b in range(2):
            last = int(kw["attention_mask"][b].nonzero().max())
            slot = int((index[b] == last).nonzero())
            single = logits(model, **alone(kw, b))[0, -1]
            torch.testing.assert_close(out[b, slot], single, atol=1e-5, rtol=0)


# -- generate() with the pruned KV cache == re-pruning the whole prompt each step ------------------------

class FixedFastV(FastV):
    """FastV whose choice does not depend on the prompt's last token (the even slots), so re-pruning agrees."""

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)
        return keep_top_k(batch, -(batch.positions % 2).float(), budget.tokens(batch.num_tokens))


def greedy_without_cache(model, kw: dict, steps: int) -> torch.Tensor:
    ids, mask = kw["input_ids"], kw["attention_mask"]
    visual = {k: v for k, v in kw.items() if k not in ("input_ids", "attention_mask", "position_ids")}
    for _ in range(steps):
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **visual)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    return ids


@pytest.mark.parametrize("case", ["image-visionzip", "image-fixed-fastv", "image-divprune-original",
                                  "video-holitom", "video-fastvid", "video-fixed-fastv", "video-chain"])
def test_cached_generate_equals_re_pruning(model, case):
    modality, name = case.split("-", 1)
    kw = image_inputs(seed=2) if modality == "image" else video_inputs()
    method, opts, budget = {
        "visionzip": ("visionzip", {}, Budget(keep=20)),
        "fixed-fastv": (FixedFastV(), dict(layers=2), Budget(keep=10)),
        "divprune-original": ("divprune", dict(positions="original"), Budget(keep=20)),
        "holitom": ("holitom", {}, Budget(ratio=0.25)),
        "fastvid": (get_method("fastvid", saliency="cls", frame_feature="mean"), {}, Budget(ratio=0.25)),
        "chain": ([("holitom", Budget(ratio=0.5)), (FixedFastV(), Budget(keep=6))], dict(layers=2), None),
    }[name]
    with LlavaOnevisionTokenCompression(model, method, budget, **opts) as tc:
        with torch.no_grad():
            out = model(**{k: v for k, v in kw.items() if k != "position_ids"}, use_cache=True)
        lengths = [layer.keys.shape[-2] for layer in cache_of(out).layers]
        s_in = tc._run.s_in                                    # the sequence entering layer 0
        assert lengths == [s_in - (tc.tokens_per_layer[0] - k) for k in tc.tokens_per_layer]
        assert lengths[-1] < kw["input_ids"].shape[1]
        with torch.no_grad():
            cached = model.generate(**{k: v for k, v in kw.items() if k != "position_ids"}, max_new_tokens=4,
                                    do_sample=False)
        reference = greedy_without_cache(model, kw, 4)
    assert torch.equal(cached, reference)


def test_generate_at_full_budget_is_the_unpatched_generate(model):
    kw = {k: v for k, v in image_inputs().items() if k != "position_ids"}
    with torch.no_grad():
        ref = model.generate(**kw, max_new_tokens=4, do_sample=False)
        with LlavaOnevisionTokenCompression(model, "fastv", Budget(ratio=1.0), layers=2):
            out = model.generate(**kw, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref)


# -- refusals -------------------------------------------------------------------------------------------

def test_refusals(model):
    assert family_of(model).label == "LLaVA-OneVision" and support_matrix()["tome"]["LLaVA-OneVision"] == "—"
    with pytest.raises(NotImplementedError, match="inside the vision tower"):
        LlavaOnevisionTokenCompression(model, "tome", Budget(r=2))
    with pytest.raises(ValueError, match="only 'projected'"):
        LlavaOnevisionTokenCompression(model, "divprune", Budget(keep=8), features="vision")
    with pytest.raises(TypeError, match="unsupported model"):
        LlavaOnevisionTokenCompression(torch.nn.Linear(2, 2), "divprune", Budget(keep=8))
    mixed = image_inputs(sizes=(SIZE, (60, 40)))
    with LlavaOnevisionTokenCompression(model, "divprune", Budget(keep=24)):
        with pytest.raises(ValueError, match="different AnyRes layouts"):
            logits(model, **mixed)
    with LlavaOnevisionTokenCompression(model, "holitom", Budget(ratio=0.5)):
        with pytest.raises(NotImplementedError, match="video method"):
            logits(model, **image_inputs())
    both = dict(image_inputs(), pixel_values_videos=video_inputs()["pixel_values_videos"])
    with LlavaOnevisionTokenCompression(model, "fastv", Budget(keep=8), layers=2):
        with pytest.raises(NotImplementedError, match="not both"):
            logits(model, **both)


# -- HFMLLM on a tiny saved checkpoint ------------------------------------------------------------------

def test_hfmllm_loads_prompts_and_costs_a_saved_checkpoint(tmp_path):
    from tokencodec.models.hf import HFMLLM, families
    from tokencodec.models.tiny import save_tiny

    assert families()["llava_onevision"] == "LlavaOnevisionForConditionalGeneration"
    mllm = HFMLLM.load(str(save_tiny("llava-onevision", tmp_path / "ov")))
    rng = np.random.default_rng(1)
    wide, tall = ((rng.random((h, w, 3)) * 255).astype(np.uint8) for h, w in (SIZE, (60, 40)))
    kw = mllm.inputs([wide], "what colour ?")
    assert int((kw["input_ids"] == mllm.image_token_id).sum()) == anyres_layout(mllm.model.config, SIZE).span
    plain = mllm.generate([wide], "what colour ?", max_new_tokens=3)
    pruned = mllm.generate([wide], "what colour ?", method="divprune", budget=Budget(keep=32), max_new_tokens=3)
    assert plain.rates["tokens_in"] == SPAN and pruned.rates["tokens_in"] == 32 + NEWLINES
    # the tower ran on the image's 5 views in both; the projector on their 5·64 patches under the method
    cost, text = mllm.cost_model, kw["input_ids"].shape[1] - SPAN
    assert plain.rates["flops"] == cost.point([SPAN] * 4, text, images=5)["flops"]
    assert pruned.rates["flops"] == cost.point([32 + NEWLINES] * 4, text, images=5, projector_tokens=320)["flops"]
    one_view = cost.point([SPAN] * 4, text, images=1)["flops"] - cost.point([SPAN] * 4, text, images=0)["flops"]
    assert one_view > 0 and pruned.record.extra["views"] == 5
    # a batch of two image sizes runs in two groups (one layout per forward under a method)
    outs = mllm.generate_batch([([wide], "what colour ?"), ([tall], "is there a cat ?"), ([wide], "how many ?")],
                               "fastv", Budget(ratio=0.5), max_new_tokens=2, layers=2)
    assert [g.rates["tokens_in"] for g in outs] == [SPAN, anyres_layout(mllm.model.config, (60, 40)).span, SPAN]
    assert outs[0].rates["batch_size"] == 2.0 and outs[1].rates["batch_size"] == 1.0
