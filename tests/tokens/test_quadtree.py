"""quadtree: greedy density-driven partition, one size-weighted token per leaf, exact budgets; its ablations."""

import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, get_method


def grid(h=14, w=14, seed=0, detail=(0, 5, 0, 5)):
    """Zero features except random detail inside one rectangle."""
    g = torch.zeros(1, h, w, 4)
    y0, y1, x0, x1 = detail
    g[0, y0:y1, x0:x1] = torch.randn(y1 - y0, x1 - x0, 4, generator=torch.Generator().manual_seed(seed))
    return TokenBatch.from_grid(g.reshape(1, h * w, 4), (h, w))


def test_budgets_are_met_exactly_and_every_patch_is_covered_once():
    b = grid()
    for k in (1, 2, 3, 7, 10, 49, 100, 196):
        out = get_method("quadtree")(b, Budget(keep=k))
        assert out.num_tokens == k and float(out.sizes.sum()) == 196
        assert torch.equal(out.source.sum(1), torch.ones(1, 196, dtype=torch.long))   # a partition
        assert torch.equal(out.positions, out.positions.sort(1).values)


def test_detail_gets_the_small_blocks_and_piecewise_constant_content_is_exact():
    out = get_method("quadtree")(grid(), Budget(keep=30))
    detailed = out.source[0][:, :].reshape(30, 14, 14)[:, :5, :5].any(-1).any(-1)
    assert float(out.sizes[0][detailed].mean()) < 3                  # fine blocks over the detail
    assert float(out.sizes[0][~detailed].max()) == 49 and int(detailed.sum()) >= 20   # coarse ones elsewhere
    # four constant quadrants: four leaves reproduce them exactly
    g = torch.zeros(1, 8, 8, 2)
    for i, (ys, xs) in enumerate([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                  (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))]):
        g[0, ys, xs] = torch.tensor([float(i), -float(i)])
    out = get_method("quadtree")(TokenBatch.from_grid(g.reshape(1, 64, 2), (8, 8)), Budget(keep=4))
    assert sorted(out.features[0, :, 0].tolist()) == [0.0, 1.0, 2.0, 3.0]
    assert torch.equal(out.sizes, torch.full((1, 4), 16.0))


def test_ablations_uniform_quadtree_and_density_only_selection():
    uniform = get_method("quadtree", criterion="uniform")
    a, b = uniform(grid(), Budget(keep=49)), uniform(grid(seed=1, detail=(8, 14, 6, 14)), Budget(keep=49))
    assert torch.equal(a.source, b.source) and float(a.sizes.max()) <= 16          # content-blind partition
    adaptive = get_method("quadtree")(grid(seed=1, detail=(8, 14, 6, 14)), Budget(keep=49))
    assert not torch.equal(adaptive.source, b.source)
    chosen = get_method("quadtree", mode="select")(grid(), Budget(keep=20))
    assert chosen.num_tokens == 20 and bool((chosen.sizes == 1).all())               # selection, no merging
    inside = (chosen.positions // 14 <= 5) & (chosen.positions % 14 <= 5)            # the detail and its rim
    assert bool(inside.all())


def test_frames_get_their_own_trees_and_share_the_budget():
    features = torch.randn(1, 5 * 36, 4, generator=torch.Generator().manual_seed(2))
    video = TokenBatch.from_grid(features, (6, 6), frames=5)
    out = get_method("quadtree")(video, Budget(keep=12))
    assert out.num_tokens == 12 and float(out.sizes.sum()) == 180
    assert (out.positions // 36).tolist() == [[0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4]]   # 12 = 3 + 3 + 2 + 2 + 2
