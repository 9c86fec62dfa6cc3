"""temporal (I/P tokens) and uniform-frames on synthetic token videos with known changes."""

import pytest
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, BudgetError, get_method
from tokencodec.tokens.compress.temporal import neighbours, relative_residual
from tokencodec.tokens.frames import compress_per_frame, join_frames, per_frame_budget, split_frames

H = W = 4
HW = H * W


def video(frames=4, seed=0, b=2):
    """A static scene (every frame = frame 0) that callers then edit."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randn(b, HW, 8, generator=g)
    return first.repeat(1, frames, 1)


def pos(out, i=0):
    return out.positions[i][out.mask[i] if out.mask is not None else slice(None)].tolist()


def test_static_video_sends_the_key_frame_and_changes_only():
    x = video()
    x[:, HW + 5] += 5.0                                   # frame 1, cell 5 changes …
    x[:, 2 * HW + 5] = x[:, HW + 5]                       # … and stays changed in frame 2 and 3
    x[:, 3 * HW + 5] = x[:, HW + 5]
    batch = TokenBatch.from_grid(x, (H, W), frames=4)
    out = get_method("temporal", threshold=0.05)(batch, Budget(ratio=1.0))
    assert pos(out) == list(range(HW)) + [HW + 5]         # closed loop: sent once, predicted after
    recon = out.context["temporal_reconstruction"]
    assert torch.allclose(recon, x)                       # the receiver holds every frame exactly


def test_closed_loop_resends_a_change_that_reverts():
    x = video()
    x[:, HW + 5] += 5.0                                   # changed in frame 1 only: frame 2 differs from
    batch = TokenBatch.from_grid(x, (H, W), frames=4)     # the receiver's frame 1 and must be sent again
    out = get_method("temporal", threshold=0.05)(batch, Budget(ratio=1.0))
    assert pos(out) == list(range(HW)) + [HW + 5, 2 * HW + 5]


@pytest.mark.parametrize("k", [16, 17, 20, 40, 64])
def test_exact_budget_keeps_the_largest_changes_first(k):
    g = torch.Generator().manual_seed(1)
    x = video() + 0.01 * torch.randn(2, 4 * HW, 8, generator=g)     # small noise everywhere
    new = torch.randn(2, 8, generator=g)
    for f in (1, 2, 3):                                              # cell 3 is replaced from frame 1 on
        x[:, f * HW + 3] = new                                       # (relative residual ≈ 1.4) …
    x[:, 3 * HW + 9] += 0.3 * torch.randn(2, 8, generator=g)         # … cell 9 changes a little in frame 3
    batch = TokenBatch.from_grid(x, (H, W), frames=4)
    out = get_method("temporal")(batch, Budget(keep=k))
    assert out.mask is None and out.num_tokens == k
    assert all(p == sorted(p) for p in out.positions.tolist())       # raster order, original positions
    kept = set(pos(out))
    assert set(range(HW)) <= kept                                    # the key frame, whole
    if k >= 18:
        assert {HW + 3, 3 * HW + 9} <= kept
    if k == 17:
        assert kept == set(range(HW)) | {HW + 3}


def test_gop_makes_key_frames_and_budgets_below_them_are_refused():
    batch = TokenBatch.from_grid(video(), (H, W), frames=4)
    out = get_method("temporal", gop=2)(batch, Budget(keep=2 * HW))
    assert pos(out) == list(range(HW)) + list(range(2 * HW, 3 * HW))
    with pytest.raises(BudgetError, match=r"K ≥ 32 .* GOP 2; got K=20"):
        get_method("temporal", gop=2)(batch, Budget(keep=20))
    small = get_method("temporal", intra="residual")(batch, Budget(keep=4))   # key-frame tokens compete
    assert small.num_tokens == 4
    with pytest.raises(ValueError, match="frames=1"):
        get_method("temporal")(TokenBatch.from_grid(video(1), (H, W)), Budget(keep=4))


def test_motion_search_predicts_a_shifted_token():
    x = video(frames=2, b=1)
    x[0, 5] = torch.full((8,), 3.0)                          # a distinctive token at cell 5 in frame 0 …
    x[0, HW + 6] = x[0, 5]                                   # … moves one cell right in frame 1
    x[0, HW + 5] = x[0, 4]                                   # and uncovers what is left of it
    batch = TokenBatch.from_grid(x, (H, W), frames=2)
    co = get_method("temporal", threshold=0.05)(batch, Budget(ratio=1.0))
    assert pos(co) == list(range(HW)) + [HW + 5, HW + 6]     # co-located: both cells changed
    moved = get_method("temporal", threshold=0.05, search=1)(batch, Budget(ratio=1.0))
    assert pos(moved) == list(range(HW))                     # both predicted by a neighbour: nothing sent
    assert torch.allclose(moved.context["temporal_reconstruction"][0, HW + 6], x[0, 5])


def test_neighbours_window_and_residual():
    grid = torch.arange(HW, dtype=torch.float).reshape(1, H, W, 1)
    cand = neighbours(grid, 1)                               # [1, 16, 9, 1]
    assert cand.shape == (1, HW, 9, 1)
    assert torch.isnan(cand[0, 0, 0, 0]) and cand[0, 5, 4, 0] == 5 and cand[0, 5, 0, 0] == 0
    assert relative_residual(torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 0.0]])).item() == pytest.approx(0.8)


def test_threshold_mode_is_capped_at_the_budget():
    x = video()
    x[:, HW:] += torch.randn(2, 3 * HW, 8, generator=torch.Generator().manual_seed(3))   # every P token changes
    batch = TokenBatch.from_grid(x, (H, W), frames=4)
    out = get_method("temporal", threshold=0.01)(batch, Budget(keep=30))
    assert out.num_tokens == 30


def test_uniform_frames_keeps_whole_evenly_spaced_frames():
    batch = TokenBatch.from_grid(video(), (H, W), frames=4)
    m = get_method("uniform-frames")
    assert pos(m(batch, Budget(keep=HW))) == list(range(HW))
    assert pos(m(batch, Budget(keep=2 * HW))) == list(range(HW)) + list(range(2 * HW, 3 * HW))
    assert pos(m(batch, Budget(keep=3 * HW))) == [*range(HW), *range(HW, 2 * HW), *range(2 * HW, 3 * HW)]
    with pytest.raises(BudgetError, match="one of 16, 32, 48, 64; got 20"):
        m(batch, Budget(keep=20))


def test_per_frame_compression_equals_each_frame_alone():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3 * HW, 8, generator=g)
    batch = TokenBatch.from_grid(x, (H, W), frames=3)
    method = get_method("divprune")
    joined = compress_per_frame(method, batch, Budget(keep=12))
    assert joined.frames == 3 and joined.num_tokens == 12
    for f in range(3):
        alone = method(TokenBatch.from_grid(x[:, f * HW:(f + 1) * HW], (H, W)), Budget(keep=4))
        assert torch.equal(joined.positions[:, 4 * f:4 * (f + 1)], alone.positions + f * HW)
        assert torch.equal(joined.features[:, 4 * f:4 * (f + 1)], alone.features)
        block = joined.source[:, 4 * f:4 * (f + 1)]
        assert torch.equal(block[..., f * HW:(f + 1) * HW], alone.source) and not block[..., :f * HW].any()
    assert torch.equal(split_frames(batch).features, x.reshape(6, HW, 8))
    assert join_frames(split_frames(batch), 2, 3).num_tokens == 3 * HW
    assert per_frame_budget(Budget(ratio=0.5), 3, HW) == Budget(ratio=0.5)
    with pytest.raises(BudgetError, match="multiple of 3"):
        per_frame_budget(Budget(keep=10), 3, HW)


def test_vbr_one_threshold_meets_the_average_and_counts_follow_the_content():
    from tokencodec.tokens.compress.temporal import calibrate_thresholds

    g = torch.Generator().manual_seed(5)
    x = video(b=8) + 0.01 * torch.randn(8, 4 * HW, 8, generator=g)
    for v in range(8):                               # video v changes v cells from frame 1 on
        for f in (1, 2, 3):
            x[v, f * HW:f * HW + v] = x[v, HW:HW + v] + 1.0 if f == 1 else x[v, HW:HW + v]
    (tau,) = calibrate_thresholds(x, (H, W), 4, [(HW + 3.5) / (4 * HW)])
    method = get_method("temporal", rate_control="vbr", ratios=[(HW + 3.5) / (4 * HW)], thresholds=[tau])
    out = method(TokenBatch.from_grid(x, (H, W), frames=4), Budget(ratio=(HW + 3.5) / (4 * HW)))
    assert out.counts().tolist() == [HW + v for v in range(8)]        # each video its own count, mean 19.5
    with pytest.raises(BudgetError, match="calibrate that ratio first"):
        method(TokenBatch.from_grid(x, (H, W), frames=4), Budget(ratio=0.5))
    with pytest.raises(ValueError, match="ratios and thresholds"):
        get_method("temporal", rate_control="vbr")
