"""Pre-LLM token-compression methods: random, pool-avg, pool-resize, divprune, visionzip, prumerge(+).

Invariants checked for every method (on fresh encoder batches, where every size is 1):
- the kept count is the budget (pooling: the chosen grid's size; adaptive PruMerge: at most the budget);
- positions are unique, in range, and each token's own patch is among its sources;
- sizes equal the number of source patches (a merge's size is the sum of the merged sizes);
- selection methods (random, divprune) keep sizes 1 and one-hot sources;
- partitions: VisionZip with ≥1 contextual token, and pool-avg with dividing windows, send every patch
  to exactly one token, so their sizes sum to N; PruMerge with its extra token covers every patch;
- a given seed gives the same result, and image i of a batch gives what it gives alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import METHODS, Budget, BudgetError
from tokencodec.tokens.compress.divprune import DivPrune, divprune_select
from tokencodec.tokens.compress.pool import PoolAvg, PoolResize, target_grid
from tokencodec.tokens.compress.prumerge import PruMerge, PruMergePlus, iqr_outliers
from tokencodec.tokens.compress.random import RandomPrune
from tokencodec.tokens.compress.visionzip import VisionZip, split_budget

FAST = settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# name → (factory, smallest budget, kind)
CONFIGS = {
    "random": (lambda s: RandomPrune(seed=s), 1, "select"),
    "random-shared": (lambda s: RandomPrune(seed=s, content_seed=False), 1, "select"),
    "pool-avg": (lambda s: PoolAvg(seed=s), 1, "pool"),
    "pool-avg-at-most": (lambda s: PoolAvg(seed=s, at_most=True), 1, "pool"),
    "pool-resize": (lambda s: PoolResize(seed=s), 1, "pool"),
    "pool-resize-plain": (lambda s: PoolResize(seed=s, antialias=False), 1, "pool"),
    "divprune": (lambda s: DivPrune(seed=s), 1, "select"),
    "visionzip": (lambda s: VisionZip(seed=s), 2, "visionzip"),            # the CLS is one of the K
    "visionzip-no-cls": (lambda s: VisionZip(seed=s, count_cls=False), 1, "visionzip"),
    "visionzip-mean-cls": (lambda s: VisionZip(seed=s, merge="mean", count_cls=True), 2, "visionzip"),
    "prumerge": (lambda s: PruMerge(seed=s), 2, "prumerge"),
    "prumerge+": (lambda s: PruMergePlus(seed=s), 2, "prumerge"),
    "prumerge-adaptive": (lambda s: PruMerge(seed=s, adaptive=True), 2, "adaptive"),
    "prumerge-old": (lambda s: PruMerge(seed=s, order="raster", normalize_attention=True, attention="head-sum",
                                        keys="head-mean"), 2, "prumerge"),
    "prumerge+-adaptive": (lambda s: PruMergePlus(seed=s, adaptive=True, order="attention"), 2, "adaptive"),
}


def make_batch(b: int, h: int, w: int, frames: int, d: int, seed: int) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    n = h * w * frames
    att, keys = torch.rand(b, n, generator=g) ** 4, torch.randn(b, n, 3, generator=g)
    # PruMerge reads the single-head attention and full keys: here the same tensors as VisionZip's signals
    return TokenBatch.from_grid(
        torch.randn(b, n, d, generator=g), (h, w), frames, cls_token=torch.randn(b, d, generator=g),
        cls_attention=att, keys=keys, cls_attention_single_head=att, keys_full=keys)


def one(batch: TokenBatch, i: int) -> TokenBatch:
    return TokenBatch.from_grid(batch.features[i:i + 1], batch.grid, batch.frames, batch.cls[i:i + 1],
                                **{k: v[i:i + 1] for k, v in batch.signals.items()})


def real(out: TokenBatch, i: int) -> slice:
    return slice(0, int(out.counts()[i]))


def assert_same(a: TokenBatch, b: TokenBatch) -> None:
    assert a.features.shape == b.features.shape
    torch.testing.assert_close(a.features, b.features, rtol=1e-5, atol=1e-5)
    for x, y in [(a.sizes, b.sizes), (a.positions, b.positions), (a.source, b.source)]:
        assert torch.equal(x, y)
    assert (a.mask is None) == (b.mask is None) and (a.mask is None or torch.equal(a.mask, b.mask))


def check_invariants(out: TokenBatch, batch: TokenBatch, k: int, kind: str, method) -> None:
    n = batch.num_original
    b, d = batch.batch_size, batch.features.shape[-1]
    assert out.features.shape[0] == b and out.features.shape[2] == d
    assert out.source.shape == (b, out.num_tokens, n) and out.grid == batch.grid and out.cls is batch.cls
    counts = out.counts()
    if kind == "pool":
        h2, w2 = target_grid(*batch.grid, k / batch.frames, method.options.at_most)
        assert counts.tolist() == [h2 * w2 * batch.frames] * b
    elif kind == "adaptive":
        assert all(2 <= c <= k for c in counts.tolist())
        assert out.mask is not None or len(set(counts.tolist())) == 1
    else:  # with count_cls the CLS (kept apart in batch.cls) is one of the k
        k_patches = k - int(getattr(method.options, "count_cls", False))
        assert out.mask is None and counts.tolist() == [k_patches] * b
    for i in range(b):
        r = real(out, i)
        pos, src, size = out.positions[i, r], out.source[i, r], out.sizes[i, r]
        assert len(set(pos.tolist())) == len(pos) and 0 <= pos.min() and pos.max() < n
        assert src[torch.arange(len(pos)), pos].all()  # a token's own patch feeds it
        assert torch.equal(size, src.sum(-1).to(size.dtype))
        if kind == "select":
            assert (size == 1).all()
            assert torch.equal(out.features[i, r], batch.features[i, pos])
        if out.mask is not None:  # padded slots carry nothing
            pad = ~out.mask[i]
            assert (out.features[i, pad] == 0).all() and (out.sizes[i, pad] == 0).all()
            assert not out.source[i, pad].any() and (out.positions[i, pad] == -1).all()
        cover = src.sum(0)
        if kind == "visionzip" and split_budget(k)[1] >= 1:
            assert (cover == 1).all() and size.sum() == n
        if kind in ("prumerge", "adaptive"):
            assert (cover >= 1).all() and size.sum() >= n
        if kind == "pool" and isinstance(method, PoolAvg):
            h2, w2 = target_grid(*batch.grid, k / batch.frames, method.options.at_most)
            assert (cover >= 1).all()
            if batch.grid[0] % h2 == 0 and batch.grid[1] % w2 == 0:
                assert (cover == 1).all() and size.sum() == n


@pytest.mark.parametrize("name", list(CONFIGS))
@FAST
@given(b=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), frames=st.integers(1, 2),
       d=st.integers(1, 4), data_seed=st.integers(0, 2**16), seed=st.integers(0, 2**16), data=st.data())
def test_method_properties(name, b, h, w, frames, d, data_seed, seed, data):
    factory, lo, kind = CONFIGS[name]
    batch = make_batch(b, h, w, frames, d, data_seed)
    n = batch.num_original
    if n < lo:
        with pytest.raises(BudgetError):
            factory(seed)(batch, Budget(keep=n))
        return
    k = data.draw(st.integers(lo, n), label="keep")
    budget = Budget(keep=k) if data.draw(st.booleans(), label="as count") else Budget(ratio=k / n)
    k = budget.tokens(n)
    method = factory(seed)
    out = method(batch, budget)
    check_invariants(out, batch, k, kind, method)
    assert_same(out, factory(seed)(batch, budget))  # deterministic for a seed
    for i in range(b):  # each image is handled on its own
        alone = factory(seed)(one(batch, i), budget)
        r = real(alone, 0)
        assert int(alone.counts()[0]) == int(out.counts()[i])
        torch.testing.assert_close(alone.features[0, r], out.features[i, r], rtol=1e-5, atol=1e-5)
        assert torch.equal(alone.positions[0, r], out.positions[i, r])
        assert torch.equal(alone.source[0, r], out.source[i, r])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_impossible_budgets_raise(name):
    factory, lo, _ = CONFIGS[name]
    batch = make_batch(1, 3, 3, 1, 2, 0)
    for bad in (dict(keep=10), dict(keep=lo - 1), dict(r=2)):
        with pytest.raises(BudgetError, match="range|budget|keep=0"):   # keep=0 is refused by Budget itself
            factory(0)(batch, Budget(**bad))


def test_registered_names_and_attributes():
    expected = {"random": RandomPrune, "pool-avg": PoolAvg, "pool-resize": PoolResize, "divprune": DivPrune,
                "visionzip": VisionZip, "prumerge": PruMerge, "prumerge+": PruMergePlus}
    for name, cls in expected.items():
        assert METHODS.get(name) is cls and cls.name == name
        assert cls.stage == "pre-llm" and cls.guidance == "vision" and cls.knob == "keep"
        assert "arXiv" in cls.paper and cls.cls_fallback
    assert VisionZip.needs == ("cls_attention", "keys") and VisionZip.needs_cls
    assert PruMerge.needs == PruMerge().needs == ("cls_attention_single_head", "keys_full")     # official
    assert PruMerge(attention="head-sum", keys="head-mean").needs == ("cls_attention", "keys")
    assert VisionZip.positions == PruMerge.positions == DivPrune.positions == "renumber"
    assert RandomPrune.positions == PoolAvg.positions == "original" and PruMerge.signal_layer == -1


# ---- random ---------------------------------------------------------------------------------------


def test_random_is_sorted_seeded_and_varies_across_images():
    batch = make_batch(3, 6, 6, 1, 4, 1)
    out = RandomPrune(seed=0)(batch, Budget(keep=9))
    assert (out.positions.diff(dim=1) > 0).all()
    assert len({tuple(p) for p in out.positions.tolist()}) == 3
    assert not torch.equal(out.positions, RandomPrune(seed=1)(batch, Budget(keep=9)).positions)
    shared = RandomPrune(seed=0, content_seed=False)(batch, Budget(keep=9)).positions
    assert (shared == shared[:1]).all()


# ---- pooling --------------------------------------------------------------------------------------


def test_pool_4x4_to_2x2_is_the_block_means():
    x = torch.arange(16.0).reshape(1, 16, 1)
    out = PoolAvg()(TokenBatch.from_grid(x, (4, 4)), Budget(keep=4))
    grid = x.reshape(4, 4)
    means = [grid[r:r + 2, c:c + 2].mean() for r in (0, 2) for c in (0, 2)]
    assert out.features.flatten().tolist() == [float(m) for m in means]
    assert out.sizes.flatten().tolist() == [4.0] * 4
    assert out.positions.flatten().tolist() == [0, 2, 8, 10]  # top-left of each window's centre
    assert out.source[0, 0].nonzero().flatten().tolist() == [0, 1, 4, 5]



@FAST
@given(h=st.integers(1, 7), w=st.integers(1, 7), k=st.integers(1, 49), seed=st.integers(0, 99))
def test_pool_matches_torch(h, w, k, seed):
    k = min(k, h * w)
    x = torch.randn(2, h * w, 3, generator=torch.Generator().manual_seed(seed))
    batch = TokenBatch.from_grid(x, (h, w))
    h2, w2 = target_grid(h, w, k)
    img = x.transpose(1, 2).reshape(2, 3, h, w)
    cases = [(PoolAvg(), F.adaptive_avg_pool2d(img, (h2, w2))),
             (PoolResize(antialias=False), F.interpolate(img, (h2, w2), mode="bilinear"))]
    if min(h2, w2) > 1:  # torch's own antialiased resize is wrong when an output side is 1
        cases.append((PoolResize(), F.interpolate(img, (h2, w2), mode="bilinear", antialias=True)))
    for method, ref in cases:
        out = method(batch, Budget(keep=k))
        torch.testing.assert_close(out.features, ref.flatten(2).transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_antialiased_resize_to_one_row_is_a_triangle_filter():
    x = torch.tensor([[[0.0], [0.0], [3.0]]])
    out = PoolResize()(TokenBatch.from_grid(x, (3, 1)), Budget(keep=1))
    # support widened by the scale 3: weights 1 − |d|/3 = 2/3, 1, 2/3 around the centre patch
    torch.testing.assert_close(out.features.flatten(), torch.tensor([3 * (2 / 3) / (7 / 3)]))
    assert out.positions.tolist() == [[1]] and out.sizes.tolist() == [[3.0]]


def test_target_grid_keeps_aspect_ratio():
    assert [target_grid(24, 24, k) for k in (64, 128, 144, 192)] == [(8, 8), (11, 11), (12, 12), (14, 14)]
    assert target_grid(24, 24, 192, at_most=True) == (13, 13)
    assert target_grid(24, 36, 96) == (8, 12) and target_grid(2, 30, 4) == (1, 4)
    assert target_grid(24, 24, 1) == (1, 1)


# ---- divprune -------------------------------------------------------------------------------------


def test_divprune_constructed_set():
    # a ≈ b, c orthogonal, d opposite a: d's nearest neighbour is farthest, then a, then c
    x = torch.tensor([[[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [-1.0, 0.0]]])
    assert divprune_select(x, 1).tolist() == [[3]]
    assert divprune_select(x, 2).tolist() == [[0, 3]]
    assert divprune_select(x, 3).tolist() == [[0, 2, 3]]
    # duplicates never get picked twice
    assert divprune_select(torch.ones(1, 5, 2), 5).tolist() == [[0, 1, 2, 3, 4]]


def reference_divprune(x: torch.Tensor, k: int) -> list[int]:
    """The official O(K²N) loop, for one image."""
    x = F.normalize(x.float(), dim=-1)
    dist = 1 - x @ x.T
    dist.fill_diagonal_(0)
    picked = [int(dist.topk(2, dim=0, largest=False).values[1].argmax())]
    for _ in range(1, k):
        picked.append(int(dist[picked].min(0).values.argmax()))
    return sorted(picked)


@FAST
@given(n=st.integers(2, 30), k=st.integers(1, 30), seed=st.integers(0, 999))
def test_divprune_matches_official_loop(n, k, seed):
    k = min(k, n)
    x = torch.randn(2, n, 5, generator=torch.Generator().manual_seed(seed))
    got = divprune_select(x, k)
    for i in range(2):
        assert got[i].tolist() == reference_divprune(x[i], k)


def official_fp16_divprune(x: torch.Tensor, k: int) -> list[int]:
    """vbdi/divprune's loop verbatim in the features' dtype (fp16 on LLaVA): no diagonal or picked-token fix."""
    m = x / x.norm(dim=1, keepdim=True)
    dist = 1.0 - torch.mm(m, m.T)
    picked = [int(dist.topk(2, dim=0, largest=False).values[1].argmax())]
    for _ in range(1, k):
        picked.append(int(dist[picked].min(0).values.argmax()))
    return sorted(picked)


@FAST
@given(n=st.integers(2, 30), k=st.integers(1, 30), seed=st.integers(0, 999))
def test_divprune_model_dtype_matches_official_fp16(n, k, seed):
    k = min(k, n)
    x = torch.randn(2, n, 5, generator=torch.Generator().manual_seed(seed)).half()
    batch = TokenBatch.from_grid(x, (1, n))
    got = DivPrune()(batch, Budget(keep=k)).positions                         # compute_dtype="model"
    assert torch.equal(got, divprune_select(x, k, None))
    for i in range(2):
        assert got[i].tolist() == official_fp16_divprune(x[i], k)
    old = DivPrune(compute_dtype="float32")(batch, Budget(keep=k)).positions
    assert torch.equal(old, divprune_select(x, k))                           # the float32 variant


def test_prumerge_plus_adaptive_samples_follow_head_rule():
    from tokencodec.tokens.compress.prumerge import stride_samples
    # HEAD 5632f5a: arange(0, 575, int(step/3)) with step = 576 // k; here n−1 is included (pitfall fix)
    for k in (8, 20, 32, 50, 100, 190):
        step = 576 // k
        official = torch.arange(0, 575, step // 3)
        ours = stride_samples(576, k)
        extra = ours[~torch.isin(ours, official)].tolist()
        assert torch.equal(ours[:len(official)], official) and extra in ([], [575])
    assert stride_samples(576, 32).tolist()[:3] == [0, 6, 12]
    assert stride_samples(576, 400).tolist() == list(range(576))             # official stride 0 would raise


# ---- visionzip ------------------------------------------------------------------------------------


def test_visionzip_budget_split():
    assert [split_budget(k) for k in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]
    assert split_budget(64, cls_counted=True) == (53, 10)


def test_visionzip_dominant_are_top_attention():
    batch = make_batch(2, 6, 6, 1, 4, 3)
    out = VisionZip()(batch, Budget(keep=16))  # the CLS (sent by the adapter) + 13 dominant + 2 contextual
    old = VisionZip(count_cls=False)(batch, Budget(keep=16))  # 14 dominant + 2 contextual
    att = batch.signals["cls_attention"]
    for i in range(2):
        for got, d in ((out, 13), (old, 14)):
            top = att[i].argsort(descending=True)[:d].sort().values
            assert got.num_tokens == d + 2 and torch.equal(got.positions[i, :d], top)
            assert torch.equal(got.features[i, :d], batch.features[i, top])


def test_visionzip_contextual_merge_by_hand():
    x = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(0))
    att = torch.tensor([[0.9, 0.1, 0.8, 0.2, 0.3, 0.4]])
    keys = torch.tensor([[[0, 0], [1, 0], [0, 0], [1, 0.1], [0, 1], [0.1, 1]]])
    batch = TokenBatch.from_grid(x, (1, 6), cls_attention=att, keys=keys)
    # dominant {0, 2}; rest [1, 3, 4, 5], stride 2: targets 1 and 4; 3 → 1 and 5 → 4 by key cosine
    out = VisionZip(contextual_ratio=0.5)(batch, Budget(keep=4))
    assert out.positions.tolist() == [[0, 2, 1, 4]] and out.sizes.tolist() == [[1, 1, 2, 2]]
    expected = torch.stack([x[0, 0], x[0, 2], x[0, 1] + x[0, 3], x[0, 4] + x[0, 5]])
    torch.testing.assert_close(out.features[0], expected)
    mean = VisionZip(contextual_ratio=0.5, merge="mean")(batch, Budget(keep=4))
    torch.testing.assert_close(mean.features[0, 2:], expected[2:] / 2)
    # one contextual token: every other patch goes to target 1, added as a mean
    single = VisionZip(contextual_ratio=1 / 3)(batch, Budget(keep=3))
    torch.testing.assert_close(single.features[0, 2], x[0, 1] + x[0, 3:].mean(0))
    assert single.sizes.tolist() == [[1, 1, 4]]


def test_visionzip_without_cls_uses_mean_attention():
    batch = make_batch(1, 4, 4, 1, 3, 5)
    att = batch.signals.pop("cls_attention")
    batch.signals["mean_attention"] = att
    out = VisionZip(count_cls=False)(batch, Budget(keep=8))
    assert torch.equal(out.positions[0, :7], att[0].argsort(descending=True)[:7].sort().values)
    del batch.signals["mean_attention"]
    with pytest.raises(ValueError, match="cls_attention"):
        VisionZip()(batch, Budget(keep=8))


# ---- prumerge -------------------------------------------------------------------------------------


def test_iqr_count_on_constructed_attention():
    att = torch.tensor([[1.0] * 12 + [2.0] * 4 + [10.0, 20.0, 30.0, 40.0]])
    # Q1 = 1, Q3 = 2, bound 3.5: four outliers (numpy agrees)
    q1, q3 = np.percentile(att.numpy(), [25, 75])
    assert (q1, q3) == (1.0, 2.0) and iqr_outliers(att).tolist() == [4]
    batch = TokenBatch.from_grid(torch.randn(1, 20, 2), (4, 5), cls_attention_single_head=att,
                                 keys_full=torch.randn(1, 20, 3))
    out = PruMerge(adaptive=True)(batch, Budget(ratio=1.0))
    # the outliers (attention-descending, official), then the extra token at the first of the
    # highest-attention pruned patches
    assert out.positions.tolist() == [[19, 18, 17, 16, 12]] and out.sizes[0, -1] == 16
    raster = PruMerge(adaptive=True, order="raster")(batch, Budget(ratio=1.0))
    assert raster.positions.tolist() == [[16, 17, 18, 19, 12]]
    plus = PruMergePlus(adaptive=True)(batch, Budget(ratio=1.0))
    # step = 20 // 4 = 5, stride 1, samples from 0: every patch is kept, none pruned, no extra token
    assert plus.counts().tolist() == [20] and plus.mask is None


def test_prumerge_merge_by_hand():
    x = torch.randn(1, 4, 3, generator=torch.Generator().manual_seed(1))
    att = torch.tensor([[0.1, 0.6, 0.2, 0.1]])
    keys = torch.tensor([[[1, 0], [1, 0.1], [0, 1], [0, 1]]])
    batch = TokenBatch.from_grid(x, (2, 2), cls_attention_single_head=att, keys_full=keys)
    out = PruMerge(neighbours=1)(batch, Budget(keep=2))
    assert out.positions.tolist() == [[1, 2]] and out.sizes.tolist() == [[2, 3]]
    expected = torch.stack([x[0, 1] + 0.1 * x[0, 0], 0.1 * x[0, 0] + 0.2 * x[0, 2] + 0.1 * x[0, 3]])
    torch.testing.assert_close(out.features[0], expected)


def test_prumerge_adaptive_pads_and_orders():
    batch = make_batch(2, 6, 6, 1, 3, 7)
    batch.signals["cls_attention"][0, :3] = 50.0  # image 0 has 3 clear outliers
    out = PruMerge(adaptive=True)(batch, Budget(ratio=1.0))
    counts = iqr_outliers(batch.signals["cls_attention"]).clamp_min(1) + 1
    assert out.counts().tolist() == counts.tolist() and out.positions[0, :3].tolist() == [0, 1, 2]
    fixed = PruMerge(order="attention")(batch, Budget(keep=9))
    att = batch.signals["cls_attention"]
    assert torch.equal(fixed.positions[:, :8], att.argsort(dim=1, descending=True, stable=True)[:, :8])


def test_prumerge_plus_fixed_keeps_top_quarter():
    batch = make_batch(2, 6, 6, 1, 3, 2)
    out = PruMergePlus()(batch, Budget(keep=17))  # 16 selected: 4 by attention, 12 spread samples
    top = batch.signals["cls_attention"].argsort(dim=1, descending=True)[:, :4]
    for i in range(2):
        assert set(top[i].tolist()) <= set(out.positions[i, :16].tolist())


def test_full_budget_is_not_the_identity_for_visionzip_and_prumerge_as_in_the_official_code():
    """Budget(ratio=1.0): VisionZip sends the CLS within K = N and merges one patch (official dominant +
    contextual = N); PruMerge(+) keeps N − 1, still merges neighbours into each, and adds the extra token."""
    batch = make_batch(1, 8, 8, 1, 4, seed=0)                  # N = 64: 10 contextual, 53 dominant + CLS
    out = VisionZip()(batch, Budget(ratio=1.0))
    assert out.num_tokens == 63 and out.sizes.sum() == 64 and int((out.sizes == 2).sum()) == 1
    for method in (PruMerge(), PruMergePlus()):
        out = method(batch, Budget(ratio=1.0))
        assert out.num_tokens == 64 and set(out.positions[0, :63].tolist()) != set(range(64))
        assert not torch.allclose(out.features[0, :63], batch.features[0, out.positions[0, :63]])
