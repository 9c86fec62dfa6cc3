"""fastvid (DySeg + ATS + DTM) on hand-built token videos with known answers.

The official code (LunarShen/FastVID @ a40a109, LLaVA-OneVision copy) was run on the same kind of inputs
outside the project; these tests pin its behaviour: segments, anchors, counts, order, merged values.
"""

import pytest
import torch

from tokencodec.adapters.qwen2_vl import QWEN_SIGNALS as QWEN2_VL
from tokencodec.adapters.vision_tower import TOWER_SIGNALS as VISION_TOWER
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, BudgetError, get_method
from tokencodec.tokens.compress.fastvid import anchor_counts, frame_budget, segment_ids
from tokencodec.tokens.signals import Signal, resolve_request

H = W = 4
S = H * W
D = 8


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def video(x: torch.Tensor, saliency=None, global_features=None) -> TokenBatch:
    """[B, T, S, D] tokens with pooler_attention [B, T·S] and frame_features [B, T, D'] (defaults: random)."""
    b, t = x.shape[:2]
    if saliency is None:
        saliency = torch.rand(b, t * S, generator=torch.Generator().manual_seed(1))
    if global_features is None:
        global_features = randn(b, t, 6, seed=2)
    return TokenBatch.from_grid(x.reshape(b, t * S, -1), (H, W), frames=t, pooler_attention=saliency,
                                context={"frame_features": global_features})


def scenes(lengths, seed=0, d=6):
    """Global frame features: one direction per scene (orthogonal scenes), repeated over its frames."""
    basis = torch.linalg.qr(randn(d, d, seed=seed))[0]
    return torch.cat([basis[i].repeat(n, 1) for i, n in enumerate(lengths)])[None]


def turning(angles):
    """Global features on a circle: frame f at angle Σ angles[:f], so transition f has cosine cos(angles[f])."""
    theta = torch.cat([torch.zeros(1), torch.tensor(angles).cumsum(0)])
    return torch.stack([theta.cos(), theta.sin()], -1)[None]


def test_dyseg_cuts_after_the_least_similar_transitions_and_below_tau():
    g = turning([0.1, 0.3, 0.05, 1.2, 0.2, 0.02, 0.4])     # cosines .995 .955 .999 .362 .980 .9998 .921
    assert segment_ids(g, 2, 0.9).tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]       # the cut, c − 1 = 1
    assert segment_ids(g, 3, 0.9).tolist() == [[0, 0, 0, 0, 1, 1, 1, 2]]       # and the next least similar
    assert segment_ids(g, 1, 0.96).tolist() == [[0, 0, 1, 1, 2, 2, 2, 3]]      # c = 1: τ alone cuts
    assert segment_ids(g, 8, 0.9).tolist() == [list(range(8))]                 # c − 1 ≥ T − 1: every frame


def test_anchors_are_every_pth_frame_back_from_the_segment_end():
    seg = torch.tensor([[0, 0, 0, 0, 0, 1, 2, 2]])                             # lengths 5, 1, 2
    # 5 frames, p = 4: anchors at the last frame and 4 before it, each (7·5)//2 = 17; 1 frame: 7;
    # 2 frames: 14 on the last
    assert anchor_counts(seg, 7, 4).tolist() == [[17, 0, 0, 0, 17, 7, 0, 14]]


def test_frame_budget_matches_the_official_numbers():
    assert frame_budget(Budget(ratio=0.10), 32, 196, 0.4) == (12, 7)           # 19 = 12 salient + 7 contextual
    assert frame_budget(Budget(keep=608), 32, 196, 0.4) == (12, 7)
    with pytest.raises(BudgetError, match=r"n = 0 tokens per frame; the allowed range is \[1, 196\]"):
        frame_budget(Budget(ratio=0.001), 32, 196, 0.4)


def test_single_frame_segments_keep_salient_tokens_and_merge_the_rest_into_density_peaks():
    # two frames in different scenes; each frame: 4 tight clusters of 4 near-duplicates
    centres = randn(2, 4, D, seed=3) * 3
    x = centres.repeat_interleave(4, dim=1) + 1e-3 * randn(2, S, D, seed=4)
    sal = torch.zeros(1, 2 * S)
    sal[0, [0, 1, 2, 3, S + 8, S + 9, S + 10, S + 11]] = 1.0           # a whole cluster is salient per frame
    out = get_method("fastvid", c=1, d=0.5)(video(x[None], sal, turning([2.0])), Budget(keep=2 * 7))
    # n = 7 per frame: 7 − int(3.5) = 4 salient, 3 contextual: one density peak per remaining cluster
    pos = out.positions[0].tolist()
    assert out.num_tokens == 14 and pos == sorted(pos)                          # original order
    salient = out.sizes[0] == 1
    assert out.positions[0, salient].tolist() == [0, 1, 2, 3, S + 8, S + 9, S + 10, S + 11]
    assert torch.equal(out.features[0, salient], x.reshape(-1, D)[out.positions[0, salient]])
    assert out.sizes[0, ~salient].tolist() == [4.0] * 6                        # each target: its whole cluster
    flat = x.reshape(-1, D)
    for i in (~salient).nonzero()[:, 0].tolist():
        members = out.source[0, i]
        assert (members.nonzero()[:, 0] // 4).unique().numel() == 1            # one cluster of one frame
        target = flat[out.positions[0, i]]
        assert torch.allclose(out.features[0, i], 0.6 * target + 0.4 * flat[members].mean(0), atol=1e-5)


def test_multi_frame_segments_send_context_on_anchors_only_and_count_tokens_per_anchor():
    t = 6
    x = randn(1, t, S, D, seed=5)
    g = scenes([5, 1])                                                           # segments of 5 and 1 frames
    out = get_method("fastvid", c=1)(video(x, global_features=g), Budget(keep=t * 5))
    # n = 5: 3 salient + 2 contextual; 5-frame segment: anchors frames 0 and 4, (2·5)//2 = 5 each; frame 5: 2
    assert out.num_tokens == t * 3 + 5 + 5 + 2
    frame = out.positions[0] // S
    assert torch.bincount(frame, minlength=t).tolist() == [8, 3, 3, 3, 8, 5]
    # every non-salient token of the segment joins both anchors' targets (the official double count)
    m = S - 3
    assert out.sizes[0].sum() == t * 3 + 2 * 5 * m + m
    source = out.source[0]
    anchors = (frame == 0) & (out.sizes[0] > 1) | (frame == 4) & (out.sizes[0] > 1)
    covered = source[anchors].reshape(-1, t, S).any(0)
    assert covered[:5].sum() == 5 * m and not covered[5].any()


def test_bookkeeping_count_bound_and_batch_rows_alone():
    x = randn(2, 8, S, D, seed=6)
    g = torch.cat([scenes([3, 5], seed=1), scenes([8], seed=2)])
    batch = video(x, global_features=g)
    method = get_method("fastvid", c=2)
    out = method(batch, Budget(ratio=0.5))                                       # n = 8: 5 + 3 per frame
    counts = out.counts()
    # video 0: segments 3 + 5: 1·(9) + 2·(15//2 = 7) contextual; video 1: 8 frames, c = 2 cuts one transition
    assert counts[0] == 8 * 5 + 9 + 14 and out.num_tokens == counts.max() <= 8 * 8
    for i in range(2):
        alone = method(video(x[i:i + 1], batch.signals["pooler_attention"][i:i + 1], g[i:i + 1]), Budget(ratio=0.5))
        k = int(counts[i])
        assert alone.num_tokens == k and torch.equal(out.positions[i, :k], alone.positions[0])
        assert torch.allclose(out.features[i, :k], alone.features[0], atol=1e-6)
        assert torch.equal(out.sizes[i, :k], out.source[i, :k].sum(-1).float())     # disjoint sources per token
        assert out.source[i, torch.arange(k), out.positions[i, :k]].all()
    bound = get_method("fastvid", c=2, length="bound")(batch, Budget(ratio=0.5))
    assert bound.num_tokens == 64 and torch.equal(bound.mask.sum(1), counts)
    assert torch.equal(bound.positions[:, :out.num_tokens], out.positions)


def test_one_host_read_per_call_and_none_with_a_fixed_length(host_syncs):
    batch = video(randn(1, 8, S, D, seed=7), global_features=scenes([3, 5]))
    with host_syncs() as found:
        get_method("fastvid")(batch, Budget(ratio=0.25))
    assert [f for f, _ in found.outside("tokens/batch.py")] == ["tokencodec/tokens/compress/variable_count.py"]
    with host_syncs() as found:
        get_method("fastvid", length="bound")(batch, Budget(ratio=0.25))
    assert found.outside("tokens/batch.py") == []


def test_bf16_input_keeps_the_same_tokens_as_fp32():
    x = randn(1, 8, S, D, seed=8)
    sal = torch.rand(1, 8 * S, generator=torch.Generator().manual_seed(9))
    g = scenes([3, 5])
    ref = get_method("fastvid", c=2)(video(x, sal, g), Budget(ratio=0.5))
    low = get_method("fastvid", c=2)(video(x.bfloat16(), sal.bfloat16(), g.bfloat16()), Budget(ratio=0.5))
    assert low.features.dtype == torch.bfloat16
    assert torch.equal(low.positions, ref.positions) and torch.equal(low.sizes.float(), ref.sizes)
    assert torch.allclose(low.features.float(), ref.features, atol=0.05)


def test_options_for_towers_without_the_siglip_head():
    x = randn(1, 4, S, D, seed=10)
    cls_att = torch.rand(1, 4 * S, generator=torch.Generator().manual_seed(11))
    batch = TokenBatch.from_grid(x.reshape(1, -1, D), (H, W), frames=4, cls_attention=cls_att)
    method = get_method("fastvid", saliency="cls", frame_feature="mean")
    assert method.needs == (Signal.CLS_ATTENTION,)
    assert resolve_request(method, VISION_TOWER, True, "CLIP") == (Signal.CLS_ATTENTION,)
    assert resolve_request(method, QWEN2_VL, False, "Qwen2-VL") == (Signal.MEAN_ATTENTION,)
    out = method(batch, Budget(ratio=0.5))            # T = 4 ≤ c: every frame its own segment, 8 per frame
    assert out.num_tokens == 32
    first = out.positions[0, :8] < S
    assert first.all() and set(cls_att[0, :S].topk(5).indices.tolist()) <= set(out.positions[0, :8].tolist())
    official = get_method("fastvid")
    assert official.needs == (Signal.POOLER_ATTENTION, Signal.FRAME_FEATURES)
    with pytest.raises(ValueError, match="needs signal 'pooler_attention'"):
        official(batch, Budget(ratio=0.5))
    with pytest.raises(ValueError, match=r"needs context 'frame_features' \[B=1, T=4, D'\]"):
        get_method("fastvid", saliency="cls")(batch, Budget(ratio=0.5))
    with pytest.raises(ValueError, match="needs signals"):
        resolve_request(official, VISION_TOWER, True, "CLIP")
