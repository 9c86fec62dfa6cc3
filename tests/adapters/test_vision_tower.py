"""Vision-tower adapters on tiny random CLIP / SigLIP models built from configs (offline, seeded)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from tokencodec.adapters.hooks import ModelPatch, PatchError  # noqa: E402
from tokencodec.adapters.vision_tower import (  # noqa: E402
    SignalCapture,
    ToMeVisionPatch,
    VisionTokenCompressor,
    capture_signals,
    resolve_tower,
)
from tokencodec.tokens.batch import TokenBatch  # noqa: E402
from tokencodec.tokens.compress.base import Budget, TokenMethod  # noqa: E402

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
             image_size=32, patch_size=8)
N = 16  # (32 / 8)² patches
HEADS = 4


def make(kind: str = "clip", attn: str = "eager", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "clip":
        model = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**SMALL))
    else:
        model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**SMALL))
    model.set_attn_implementation(attn)
    return model.eval()


def pixels(b: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))




def hook_state(model: nn.Module) -> dict:
    """Every hook dict and every instance-level forward, per module."""
    return {name: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks), "forward" in vars(m))
            for name, m in model.named_modules()}


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return [t for t in (out.last_hidden_state, out.pooler_output) if t is not None]


def same(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(xs, ys, strict=True))


class TopKCls(TokenMethod):
    """Test-only pre-llm method: keep the top-k patches by CLS attention, in raster order."""

    name = "_test_topk_cls"  # passed as an instance: the shared registry stays untouched
    stage = "pre-llm"
    needs = ("cls_attention",)
    needs_cls = True

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)
        k = budget.tokens(batch.num_tokens)
        idx = batch.signals["cls_attention"].argsort(dim=1, descending=True, stable=True)[:, :k]
        return batch.take(idx.sort(1).values)




# -- hooks base -----------------------------------------------------------------------------------

class _Dummy(ModelPatch):
    def _install(self):
        self.add_hook(self.model, lambda *_: None)
        self.add_pre_hook(self.model, lambda *a, **k: None, with_kwargs=True)
        self.swap(self.model, "forward", lambda x: x * 0)
        self.swap(self.model, "weight", nn.Parameter(torch.zeros(2, 2)))


def test_model_patch_restores_everything_even_after_an_exception():
    lin = nn.Linear(2, 2)
    weight = lin.weight
    with pytest.raises(KeyError), _Dummy(lin) as patch:
        assert patch.active and torch.equal(lin(torch.ones(1, 2)), torch.zeros(1, 2))
        raise KeyError("boom")
    assert not lin._forward_hooks and not lin._forward_pre_hooks
    assert "forward" not in vars(lin) and lin.weight is weight and not patch.active


def test_reentry_and_stacking_are_refused():
    model = make()
    patch = SignalCapture(model)
    with patch:
        with pytest.raises(PatchError, match="already active"):
            patch.__enter__()
        with pytest.raises(PatchError, match="already patched by SignalCapture"):
            ToMeVisionPatch(model, r=1).__enter__()
    with patch:  # usable again once exited
        pass
    assert all(not h and not p and not f for h, p, f in hook_state(model).values())


# -- model resolution ------------------------------------------------------------------------------

def test_unsupported_model_names_class_and_supported_ones():
    with pytest.raises(TypeError, match=r"unsupported vision model Linear; supported: CLIPVisionModel.*Sig"):
        SignalCapture(nn.Linear(2, 2))
    with pytest.raises(IndexError, match=r"allowed range \[-3, 2\]"):
        SignalCapture(make(), layer=3)


class LlavaStyleTower(nn.Module):
    """Like LLaVA's CLIPVisionTower: the HF model under .vision_tower, features from select_layer."""

    def __init__(self, model):
        super().__init__()
        self.vision_tower = model


def test_llava_style_wrapper_resolves_to_the_inner_model():
    model = make()
    tower = resolve_tower(LlavaStyleTower(model))
    assert tower.model is model and tower.class_token and tower.patch_size == 8
    assert not resolve_tower(make("siglip")).class_token
    a = VisionTokenCompressor(LlavaStyleTower(model), TopKCls(), 5).compress(pixels())
    b = VisionTokenCompressor(model, TopKCls(), 5).compress(pixels())
    assert torch.equal(a.features, b.features)


# -- signals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer", [-2, 0])
def test_captured_signals_match_eager_attention_maps(layer):
    model, x = make(), pixels()
    names = ("cls_attention", "cls_attention_single_head", "mean_attention", "keys", "keys_full")
    hidden, sig = capture_signals(model, x, layer=layer, signals=names)
    with torch.no_grad():
        ref = model(x, output_attentions=True, output_hidden_states=True)
    # HF's hidden_states[0] is the embedding output, so layer k's output is hidden_states[k + 1]
    assert torch.equal(hidden, ref.hidden_states[layer % 3 + 1])
    att = ref.attentions[layer]
    # the capture forms only the CLS row (a different matmul shape), so allow float32 rounding
    torch.testing.assert_close(sig["cls_attention"], att[:, :, 0, 1:].sum(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sig["mean_attention"], att[..., 1:].mean((1, 2)), rtol=1e-5, atol=1e-6)

    lyr = model.encoder.layers[layer]
    with torch.no_grad():
        h = lyr.layer_norm1(ref.hidden_states[layer % 3])
        q, k = lyr.self_attn.q_proj(h), lyr.self_attn.k_proj(h)
    assert torch.equal(sig["keys_full"], k[:, 1:])
    assert torch.equal(sig["keys"], k.view(2, N + 1, HEADS, -1).mean(2)[:, 1:])
    single = torch.softmax(q[:, :1] @ k.transpose(1, 2) / 32**0.5, -1)[:, 0, 1:]
    torch.testing.assert_close(sig["cls_attention_single_head"], single, rtol=1e-5, atol=1e-6)
    assert sig["cls_attention"].shape == (2, N) and sig["keys"].shape == (2, N, 32 // HEADS)


def test_signals_under_sdpa_equal_eager_ones():
    x = pixels()
    eager = capture_signals(make(attn="eager"), x, signals=("cls_attention", "keys"))
    sdpa = capture_signals(make(attn="sdpa"), x, signals=("cls_attention", "keys"))
    # SDPA kernels round differently from eager in the layers before, hence a tolerance
    for name in ("cls_attention", "keys"):
        torch.testing.assert_close(sdpa.signals[name], eager.signals[name], rtol=1e-5, atol=1e-5)


def test_siglip_has_no_cls_signals_but_mean_attention_works():
    model, x = make("siglip"), pixels()
    with pytest.raises(ValueError, match="SiglipVisionModel has no CLS token.*'mean_attention'"):
        capture_signals(model, x, signals=("cls_attention",))
    hidden, sig = capture_signals(model, x, signals=("mean_attention", "keys"))
    with torch.no_grad():
        ref = model(x, output_attentions=True)
    torch.testing.assert_close(sig["mean_attention"], ref.attentions[-2].mean((1, 2)), rtol=1e-5, atol=1e-6)
    assert hidden.shape == (2, N, 32) and sig["keys"].shape == (2, N, 8)


# -- pre-llm compression ---------------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_compressor_with_full_budget_is_exact_and_leaves_the_model_unchanged(attn):
    model, x = make(attn=attn), pixels()
    before, ref = hook_state(model), outputs(model, x)
    with torch.no_grad():
        hs = model(x, output_hidden_states=True).hidden_states[-2]
    before = hook_state(model)  # HF installs its own capture hooks on first use; they stay
    with torch.no_grad(), VisionTokenCompressor(model, TopKCls(), Budget(keep=N)) as comp:
        assert same(outputs(model, x), ref)  # model runs as usual
        batch = comp.last_batch
        assert torch.equal(comp.compress(x).features, batch.features)
    assert torch.equal(batch.features, hs[:, 1:]) and torch.equal(batch.cls, hs[:, 0])
    assert batch.grid == (4, 4) and set(batch.signals) == {"cls_attention"}
    assert hook_state(model) == before
    assert same(outputs(model, x), ref)


def test_fresh_model_has_no_hooks_after_exit():
    model, x = make(), pixels()
    ref = outputs(model, x)
    with VisionTokenCompressor(model, TopKCls(), 4) as comp:
        comp.compress(x)
    with pytest.raises(RuntimeError), ToMeVisionPatch(model, r=2):
        outputs(model, x)
        raise RuntimeError("stop")
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and "forward" not in vars(m)
    assert same(outputs(model, x), ref)


def test_compressor_keeps_top_k_and_batches_like_single_images():
    model, x = make(), pixels(3)
    with torch.no_grad():
        batch = VisionTokenCompressor(model, TopKCls(), 0.25).compress(x)
        alone = [VisionTokenCompressor(model, TopKCls(), 0.25).compress(x[i:i + 1]) for i in range(3)]
    assert batch.features.shape == (3, 4, 32)
    for i, one in enumerate(alone):
        # batched and single matmuls may round differently in the last bit
        torch.testing.assert_close(batch.features[i:i + 1], one.features, rtol=1e-6, atol=1e-6)
        assert torch.equal(batch.positions[i:i + 1], one.positions)
    hidden, sig = capture_signals(model, x, signals=("cls_attention",))
    top = sig["cls_attention"].topk(4).indices.sort(1).values
    assert torch.equal(batch.positions, top)


def test_compressor_refuses_other_stages_and_cls_methods_without_fallback():
    with pytest.raises(ValueError, match="stage 'vision-encoder'"):
        VisionTokenCompressor(make(), "tome", 4)
    with pytest.raises(ValueError, match="needs a CLS token and declares no cls_fallback"):
        VisionTokenCompressor(make("siglip"), TopKCls(), 4)


@pytest.mark.skipif(importlib.util.find_spec("tokencodec.tokens.compress.visionzip") is None,
                    reason="visionzip is not written yet")
@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_visionzip_runs_through_the_compressor(kind):
    import tokencodec.tokens.compress.visionzip  # noqa: F401  (registers the method)

    with torch.no_grad():
        batch = VisionTokenCompressor(make(kind), "visionzip", 8).compress(pixels())
    # with a CLS, K counts it (official count_cls=True): 7 patch tokens plus batch.cls
    assert batch.features.shape == (2, 8 - (kind == "clip"), 32) and (batch.cls is not None) == (kind == "clip")


@pytest.mark.skipif(importlib.util.find_spec("tokencodec.tokens.compress.divprune") is None,
                    reason="divprune is not written yet")
def test_divprune_runs_through_the_compressor():
    import tokencodec.tokens.compress.divprune  # noqa: F401

    with torch.no_grad():
        batch = VisionTokenCompressor(make("siglip"), "divprune", 6).compress(pixels())
    assert batch.features.shape == (2, 6, 32) and batch.cls is None


# -- ToMe ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_tome_r0_with_proportional_attention_equals_the_plain_model(kind):
    model, x = make(kind, attn="eager"), pixels()
    ref = outputs(model, x)
    with ToMeVisionPatch(model, r=0) as patch:  # sizes all one: a zero log-size bias every layer
        out = outputs(model, x)
    assert same(out, ref)  # adding 0.0 to logits is exact in eager
    assert patch.token_counts == [N + (kind == "clip")] * 3 and patch.last_source is None
    batch = patch.token_batch()
    assert torch.equal(batch.features, ref[0][:, 1:] if kind == "clip" else patch.last_hidden)
    assert torch.equal(batch.positions, torch.arange(N).expand(2, N))


def test_tome_r0_under_sdpa_is_close_to_the_plain_model():
    model, x = make(attn="sdpa"), pixels()
    ref = outputs(model, x)
    with ToMeVisionPatch(model, r=0):
        out = outputs(model, x)
    # a zero float attn_mask can route SDPA to another CPU kernel, which rounds differently
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_tome_merges_r_tokens_per_layer_and_sizes_add_up(kind, attn):
    model, x = make(kind, attn), pixels(3)
    cls = int(kind == "clip")
    with torch.no_grad(), ToMeVisionPatch(model, r=2) as patch:
        out = model(x, output_hidden_states=True)
    t0 = N + cls
    assert patch.token_counts == [t0 - 2, t0 - 4, t0 - 6]
    assert [h.shape[1] for h in out.hidden_states] == [t0, t0 - 2, t0 - 4, t0 - 6]
    assert torch.equal(patch.last_sizes.sum((1, 2)), torch.full((3,), float(t0)))
    assert torch.equal(patch.last_source.sum(1), torch.ones(3, t0, dtype=torch.long))  # a partition
    if cls:
        assert torch.equal(patch.last_sizes[:, 0, 0], torch.ones(3)) and patch.last_source[:, 0, 0].all()
    batch = patch.token_batch()
    assert batch.num_tokens == N - 6 and batch.num_original == N and batch.grid == (4, 4)
    assert torch.equal(batch.sizes.sum(1), torch.full((3,), float(N)))
    assert torch.equal(batch.sizes, batch.source.sum(-1).float())
    assert (batch.original_index_map() >= 0).all()
    assert batch.source.gather(2, batch.positions[..., None]).all()  # a token sits on one of its patches


def test_tome_batches_like_single_images_and_stops_merging_after_layer():
    model, x = make(), pixels(3)
    with torch.no_grad(), ToMeVisionPatch(model, r=3, layer=-2) as patch:
        model(x)
        together = patch.token_batch()
        alone = []
        for i in range(3):
            model(x[i:i + 1])
            alone.append(patch.token_batch())
    assert patch.r == [3, 3, 0] and patch.token_counts == [N + 1 - 3, N + 1 - 6, N + 1 - 6]
    for i, one in enumerate(alone):
        torch.testing.assert_close(together.features[i:i + 1], one.features, rtol=1e-6, atol=1e-6)
        assert torch.equal(together.source[i:i + 1], one.source)


def test_tome_proportional_attention_adds_log_size_to_the_logits():
    model, x = make(attn="eager"), pixels()
    with torch.no_grad(), ToMeVisionPatch(model, r=[3, 0, 0]) as patch:
        out = model(x, output_hidden_states=True, output_attentions=True)
    size = patch.last_sizes[..., 0]  # sizes after layer 0, unchanged since
    assert size.max() > 1
    lyr = model.encoder.layers[1]
    with torch.no_grad():
        h = lyr.layer_norm1(out.hidden_states[1])
        q = lyr.self_attn.q_proj(h).view(2, -1, HEADS, 8).transpose(1, 2)
        k = lyr.self_attn.k_proj(h).view(2, -1, HEADS, 8).transpose(1, 2)
    expected = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + size.log()[:, None, None], -1)
    torch.testing.assert_close(out.attentions[1], expected, rtol=1e-5, atol=1e-6)


def test_tome_refuses_attention_without_an_additive_bias():
    model = make()
    model.config._attn_implementation = "flash_attention_2"  # only the name is read; nothing runs
    with pytest.raises(ValueError, match="cannot take"):
        ToMeVisionPatch(model, r=1)
    ToMeVisionPatch(model, r=1, prop_attn=False)


def test_tome_proportional_attention_under_sdpa_matches_eager():
    x, got = pixels(), {}
    for attn in ("eager", "sdpa"):
        with torch.no_grad(), ToMeVisionPatch(make(attn=attn), r=3) as patch:
            patch.model(x)
            got[attn] = patch.token_batch()
    assert torch.equal(got["eager"].source, got["sdpa"].source)  # the same merges
    # SDPA takes log(size) as its float attn_mask; its kernel rounds differently from eager
    torch.testing.assert_close(got["sdpa"].features, got["eager"].features, rtol=1e-5, atol=1e-5)
