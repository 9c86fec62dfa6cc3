"""holitom, holitom-llm and fastvid through LlavaTokenCompression on T-frame prompts (a tiny random LLaVA
built from configs, offline): the path the diagnostic-video observer takes."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from tokencodec.adapters.llava import LlavaTokenCompression  # noqa: E402
from tokencodec.tokens.compress import Budget, get_method  # noqa: E402

from .test_llava_adapter import IMG, LAYERS, N, make  # noqa: E402   (N: patches per frame)

T = 3
PV = [1, 5] + [IMG] * (T * N) + [7, 8]


@pytest.fixture(scope="module")
def model():
    return make("sdpa")


def clip(static: bool = False, b: int = 1) -> dict:
    px = torch.randn(b * T, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    if static:                                         # every frame = the first
        px = px.reshape(b, T, 3, 32, 32)[:, :1].expand(b, T, 3, 32, 32).reshape(b * T, 3, 32, 32)
    return dict(input_ids=torch.tensor([PV] * b), pixel_values=px)


def logits(model, **kw):
    with torch.no_grad():
        return model(**kw).logits


def test_holitom_at_full_budget_on_a_moving_clip_is_the_unpatched_model(model):
    # random frames: no token is static (cosine < τ), every frame its own window, r′ = 1: every token, in order
    kw = clip()
    ref = logits(model, **kw)
    with LlavaTokenCompression(model, "holitom", Budget(ratio=1.0), frames=T) as tc:
        out = logits(model, **kw)
    assert tc.tokens_per_layer == [T * N] * LAYERS and torch.equal(tc.kept.positions[0], torch.arange(T * N))
    assert torch.allclose(out, ref, atol=1e-5)


def test_holitom_merges_a_static_clip_into_its_first_frame(model):
    kw = clip(static=True)
    with LlavaTokenCompression(model, "holitom", Budget(ratio=0.5), frames=T) as tc:
        out = logits(model, **kw)
    # one window: N static tokens, R = N·(T−1), r′ = min(0.5·T, 1) = 1: N tokens at frame 0's positions
    assert tc.kept.positions[0].tolist() == list(range(N)) and tc.kept.sizes[0].tolist() == [float(T)] * N
    assert tc.tokens_per_layer == [N] * LAYERS and out.shape[1] == len(PV) - (T - 1) * N
    assert tc.sequence_index[0, -1].item() == len(PV) - 1


def test_fastvid_on_a_clip_tower_keeps_n_per_frame_in_original_order(model):
    method = get_method("fastvid", saliency="cls", frame_feature="mean")
    kw = clip(b=2)
    with LlavaTokenCompression(model, method, Budget(ratio=0.5), frames=T) as tc:
        logits(model, **kw)
    # T = 3 ≤ c: one segment per frame, n = 8 = 5 salient + 3 merged per frame
    assert tc.tokens_per_layer == [T * 8] * LAYERS and tc.kept.mask is None
    pos = tc.kept.positions
    per_frame = torch.stack([(p // N).bincount(minlength=T) for p in pos])
    assert torch.equal(pos, pos.sort(1).values) and (per_frame == 8).all()
    with pytest.raises(ValueError, match="needs signals"):        # the official signals need SigLIP's head
        LlavaTokenCompression(model, "fastvid", Budget(ratio=0.5), frames=T)


def test_holitom_llm_alone_and_chained_after_the_outer_stage(model):
    kw = clip()
    ref = logits(model, **kw)
    with LlavaTokenCompression(model, "holitom-llm", Budget(ratio=1.0), frames=T, layers=2) as tc:
        out = logits(model, **kw)
    assert torch.allclose(out, ref, atol=1e-5) and tc.tokens_per_layer == [T * N] * LAYERS
    with LlavaTokenCompression(model, "holitom-llm", Budget(ratio=0.5), frames=T, layers=2) as tc:
        logits(model, **kw)
    assert tc.tokens_per_layer == [T * N] * 2 + [T * N // 2] * 3
    assert tc.stages[0].kept.sizes.sum() == T * N                     # every token merged into a kept one
    chain = [("holitom", Budget(ratio=1.0)), ("holitom-llm", Budget(ratio=0.5))]
    with LlavaTokenCompression(model, chain, frames=T, layers=2) as tc:
        logits(model, **kw)
    assert tc.tokens_per_layer == [T * N] * 2 + [T * N // 2] * 3
