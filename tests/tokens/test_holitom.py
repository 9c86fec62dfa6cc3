"""holitom (outer-LLM merging) and holitom-llm (inner merging) on hand-built token videos with known answers.

The official code (cokeshao/HoliTom @ e9b2972) was run on the same inputs outside the project; these
tests pin the behaviour it showed: windows, counts, order, merged values.
"""

import pytest
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, BudgetError, MethodOptionError, get_method
from tokencodec.tokens.compress.base import LLMStage
from tokencodec.tokens.compress.holitom import count_bound, pairwise_average_weights, select_windows

H = W = 4
S = H * W
D = 8


def orthogonal(n, d=D, seed=0):
    """n tokens far from each other (cosines near 0): nothing is static between different ones."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def batch_of(frames: torch.Tensor, attention=None) -> TokenBatch:
    """[B, T, S, D] → a video TokenBatch with mean_attention (uniform unless given)."""
    b, t = frames.shape[:2]
    if attention is None:
        attention = torch.full((b, t * S), 1.0 / S)
    return TokenBatch.from_grid(frames.reshape(b, t * S, -1), (H, W), frames=t, mean_attention=attention)


def still_with_one_mover(t=4, mover=5):
    """T identical frames except token ``mover``, which is a new random vector in every frame."""
    base = orthogonal(S)
    frames = base.repeat(t, 1, 1)
    frames[:, mover] = orthogonal(t, seed=1)
    return frames[None]


def test_identical_frames_are_one_static_window_and_the_mover_is_kept_in_every_frame():
    x = still_with_one_mover()
    out = get_method("holitom")(batch_of(x), Budget(ratio=0.5))
    # one window 0–3: 15 static positions × 3 merged frames removed (R = 45); r′ = min(0.5·64/19, 1) = 1
    static = [j for j in range(S) if j != 5]
    assert out.mask is None and out.num_tokens == 15 + 4
    assert out.positions[0].tolist() == static + [5, S + 5, 2 * S + 5, 3 * S + 5]    # static first, then frames
    assert torch.allclose(out.features[0, :15], x[0, 0, static])                    # the mean of equal tokens
    assert torch.allclose(out.features[0, 15:], x[0, :, 5])
    assert out.sizes[0].tolist() == [4.0] * 15 + [1.0] * 4                         # a static token: 4 frames
    src = out.source[0].reshape(19, 4, S)
    assert src[0].sum() == 4 and src[0, :, 0].all()                                 # position 0 in every frame


def test_a_smaller_budget_merges_static_tokens_by_density_peaks():
    x = still_with_one_mover()
    out = get_method("holitom")(batch_of(x), Budget(ratio=0.25))
    # r′ = 0.25·64/19 = 0.842: round(15·0.842) = 13 static centres, ⌈1·0.842⌉ = 1 mover per frame
    assert out.num_tokens == 13 + 4
    assert out.positions[0, 13:].tolist() == [5, S + 5, 2 * S + 5, 3 * S + 5]
    assert out.sizes[0, :13].sum() == 60                                            # every static patch, once
    assert (out.source[0].sum(0) <= 1).all()                                        # no patch twice
    merged = out.sizes[0, :13] > 4
    assert merged.sum() >= 1 and out.sizes[0, :13][merged].sum() == 4 * (2 + int(merged.sum()))


def test_two_duplicate_clusters_merge_into_their_centres_with_beta():
    a, b = orthogonal(2, seed=3)
    frame = torch.stack([a] * 8 + [b] * 8) + 1e-3 * orthogonal(S, seed=4)           # two tight clusters
    x = frame.repeat(2, 1, 1)[None]                                                  # 2 identical frames
    out = get_method("holitom")(batch_of(x), Budget(keep=2))
    # one window of 16 static tokens; R = 16, r′ = (2/32)/(16/32) = 0.125 → 2 centres, one per cluster
    assert out.num_tokens == 2 and out.sizes[0].tolist() == [16.0, 16.0]
    centre = frame[out.positions[0]]
    rest = [frame[:8], frame[8:]]
    for i in range(2):
        members = rest[i][(rest[i] != centre[i]).any(-1)]
        assert torch.allclose(out.features[0, i], 0.6 * centre[i] + 0.4 * members.mean(0), atol=1e-6)
    beta1 = get_method("holitom", beta=1.0)(batch_of(x), Budget(keep=2))
    assert torch.allclose(beta1.features[0], centre) and beta1.sizes[0].tolist() == [16.0, 16.0]


def test_a_scene_cut_is_a_window_boundary_at_the_known_frame():
    a, b = orthogonal(S, seed=5), orthogonal(S, seed=6)
    x = torch.stack([a, a, a, b, b])[None]                                           # cut between frames 2 and 3
    out = get_method("holitom")(batch_of(x), Budget(ratio=0.5))
    # windows [0, 2] and [3, 4]: R = 16·2 + 16·1 = 48, r′ = min(0.5·80/32, 1) = 1: every static token kept
    assert out.num_tokens == 32
    assert out.positions[0].tolist() == list(range(S)) + list(range(3 * S, 4 * S))   # at each window's first frame
    assert torch.allclose(out.features[0], torch.cat([a, b]), atol=1e-6)              # means of equal tokens
    src = out.source[0].reshape(32, 5, S)
    assert src[:S, :3].any(-1).all() and not src[:S, 3:].any()                      # frames 0–2 only
    assert src[S:, 3:].any(-1).all() and not src[S:, :3].any()


def test_segmentation_prefers_the_shortest_window_on_equal_gain():
    gain = torch.zeros(1, 3, 3, dtype=torch.float64)
    start, end, total = select_windows(gain, 1024)              # no static token anywhere: single frames
    assert start.tolist() == [[0, 1, 2]] and end.tolist() == [[0, 1, 2]] and total.item() == 0
    gain[0, 0, 2] = 6.0
    gain[0, 1, 2] = 6.0                                           # [0, 2] and [0], [1, 2] tie at 6: shortest last
    start, end, total = select_windows(gain, 1024)
    assert start.tolist() == [[0, 1, 1]] and end.tolist() == [[0, 2, 2]] and total.item() == 6
    start, _, total = select_windows(gain, 1)                    # max_window 1: every frame alone
    assert start.tolist() == [[0, 1, 2]] and total.item() == 0


def test_dynamic_frames_keep_their_top_attention_tokens_in_raster_order():
    x = torch.stack([orthogonal(S, seed=10 + f) for f in range(3)])[None]          # nothing static
    att = torch.rand(1, 3 * S, generator=torch.Generator().manual_seed(2))
    out = get_method("holitom")(batch_of(x, att), Budget(ratio=0.25))
    assert out.num_tokens == 12                                                       # ⌈16·0.25⌉ = 4 per frame
    for f in range(3):
        want = att[0, f * S:(f + 1) * S].topk(4).indices.sort().values + f * S
        assert out.positions[0, 4 * f:4 * (f + 1)].tolist() == want.tolist()
    assert torch.equal(out.features[0], x.reshape(1, -1, D)[0, out.positions[0]])


def test_d_merges_part_of_each_frames_dynamic_count_by_density():
    x = torch.stack([orthogonal(S, seed=20 + f) for f in range(2)])[None]
    out = get_method("holitom", d=0.5)(batch_of(x), Budget(ratio=0.5))
    # 8 per frame: round(8·0.5) = 4 by attention (uniform: the first four), then 4 merged centres
    assert out.num_tokens == 16
    assert out.positions[0, :4].tolist() == [0, 1, 2, 3]
    assert out.sizes[0, :4].tolist() == [1.0] * 4 and out.sizes[0, 4:8].sum() == 12   # the other 12 merged


def random_video(b=2, t=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, 1, S, D, generator=g)
    x = base + torch.rand(b, t, S, 1, generator=g) * torch.randn(b, t, S, D, generator=g)   # varied motion
    return x, torch.rand(b, t * S, generator=g)


@pytest.mark.parametrize("ratio", [0.5, 0.25, 0.125, 0.0625])
def test_invariants_count_bound_bookkeeping_and_batch_rows_alone(ratio):
    x, att = random_video()
    method = get_method("holitom", tau=0.6)
    batch = batch_of(x, att)
    out = method(batch, Budget(ratio=ratio))
    counts = out.counts()
    assert counts.max() == out.num_tokens <= count_bound(ratio, 6, S)
    for i in range(2):
        alone = method(batch_of(x[i:i + 1], att[i:i + 1]), Budget(ratio=ratio))
        k = int(counts[i])
        assert alone.num_tokens == k and alone.mask is None
        assert torch.equal(out.positions[i, :k], alone.positions[0])
        assert torch.allclose(out.features[i, :k], alone.features[0], atol=1e-6)
        real = out.source[i, :k]
        assert torch.equal(out.sizes[i, :k], real.sum(-1).float())            # sizes = patches covered
        assert (real.sum(0) <= 1).all()                                       # each patch feeds one token at most
        assert real[torch.arange(k), out.positions[i, :k]].all()              # a token's own patch is in its source
        if out.mask is not None:
            assert (out.positions[i, k:] == -1).all() and not out.source[i, k:].any()
    bound = get_method("holitom", tau=0.6, length="bound")(batch, Budget(ratio=ratio))
    assert bound.num_tokens == count_bound(ratio, 6, S) and torch.equal(bound.mask.sum(1), counts)
    k = out.num_tokens
    assert torch.equal(bound.positions[:, :k], out.positions) and torch.allclose(bound.features[:, :k], out.features)


def test_one_host_read_per_call_and_none_with_a_fixed_length(host_syncs):
    x, att = random_video(b=1)
    batch = batch_of(x, att)
    with host_syncs() as found:
        get_method("holitom")(batch, Budget(ratio=0.25))
    mine = found.outside("tokens/batch.py")            # TokenBatch's own position check is not the method's
    assert [f for f, _ in mine] == ["tokencodec/tokens/compress/variable_count.py"]
    with host_syncs() as found:
        get_method("holitom", length="bound")(batch, Budget(ratio=0.25))
    assert found.outside("tokens/batch.py") == []


def test_bf16_input_keeps_the_same_tokens_as_fp32():
    base = orthogonal(S, seed=30)
    frames = base.repeat(6, 1, 1)
    frames[3:] = orthogonal(S, seed=31)                                              # a cut at frame 3
    frames[:, :4] = torch.stack([orthogonal(4, seed=40 + f) for f in range(6)])      # 4 movers
    x = frames[None]
    att = torch.rand(1, 6 * S, generator=torch.Generator().manual_seed(7))
    ref = get_method("holitom")(batch_of(x, att), Budget(ratio=0.25))
    low = get_method("holitom")(batch_of(x.bfloat16(), att.bfloat16()), Budget(ratio=0.25))
    assert low.features.dtype == torch.bfloat16
    assert torch.equal(low.positions, ref.positions) and torch.equal(low.sizes.float(), ref.sizes)
    assert torch.allclose(low.features.float(), ref.features, atol=0.05)


def test_budget_and_option_errors():
    batch = batch_of(*random_video(b=1)[:1])
    with pytest.raises(BudgetError, match=r"allowed range \[1, 96\]"):
        get_method("holitom")(batch, Budget(keep=97))
    with pytest.raises(BudgetError, match="not ToMe's r"):
        get_method("holitom")(batch, Budget(r=2))
    with pytest.raises(MethodOptionError, match="tau=2"):
        get_method("holitom", tau=2.0)
    no_signal = TokenBatch.from_grid(batch.features, (H, W), frames=6)
    with pytest.raises(ValueError, match="needs signal 'mean_attention'"):
        get_method("holitom")(no_signal, Budget(ratio=0.5))


# -- holitom-llm: the inner merge ------------------------------------------------------------------

def test_inner_merge_keeps_the_top_attention_tokens_and_averages_the_rest_in_sequence():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    att = torch.tensor([[0.5, 0.4, 0.05, 0.03, 0.02]])
    batch = TokenBatch.from_grid(h[None], (5, 1), text_attention=att)
    out = get_method("holitom-llm")(batch, Budget(ratio=0.4))                   # keep round(5·0.4) = 2
    assert out.positions[0].tolist() == [0, 1]
    # token 0 absorbs 2 then 3: ((h0 + x2)/2 + x3)/2 = h0/4 + x2/4 + x3/2; token 1 absorbs 4: (h1 + x4)/2
    assert torch.allclose(out.features[0, 0], h[0] / 4 + h[2] / 4 + h[3] / 2)
    assert torch.allclose(out.features[0, 1], (h[1] + h[4]) / 2)
    assert out.sizes[0].tolist() == [3.0, 2.0]


def test_pairwise_average_weights_sum_to_one_and_halve_per_member():
    assign = torch.tensor([[0, 0, 0, 1]])
    member = torch.tensor([[True, True, True, False]])
    w, own = pairwise_average_weights(assign, member, 2)
    # ((h + x0)/2 + x1)/2 + x2)/2 = h/8 + x0/8 + x1/4 + x2/2; slot 1 has no member and keeps itself
    assert w[0, 0].tolist() == [0.125, 0.25, 0.5, 0.0] and w[0, 1].sum() == 0 and own[0].tolist() == [0.125, 1.0]
    assert torch.equal(w.sum(-1) + own, torch.ones(1, 2))


def test_inner_merge_plans_one_stage_at_layer_18_of_28():
    m = get_method("holitom-llm")
    assert m.layers_for(28) == (18,) and m.layers_for(32) == (21,)
    assert m.plan(Budget(ratio=0.5), 627, 28) == (LLMStage(18, 17, 314),)       # round(627·0.5), official
    assert m.llm_signal.query == "last" and m.positions == "original"
