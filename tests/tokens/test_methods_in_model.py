"""Methods that act inside the vision encoder or the LLM: ToMe, FastV, SparseVLM, PyramidDrop, DART."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError
from tokencodec.tokens.compress.dart import DART, dart_select
from tokencodec.tokens.compress.fastv import FastV
from tokencodec.tokens.compress.pyramiddrop import PyramidDrop, stage_budgets
from tokencodec.tokens.compress.sparsevlm import SparseVLM, dpc_knn, kept_count, recycle_counts, select_raters
from tokencodec.tokens.compress.tome import (
    ToMe,
    bipartite_soft_matching,
    merge_source,
    merge_wavg,
    parse_r,
)

METHODS = ["tome", "tome-cls", "fastv", "pyramiddrop", "sparsevlm", "sparsevlm-official",
           "dart", "dart-image"]


def case(name: str, seed: int, b: int, h: int, w: int, frac: float):
    """(method, batch, budget, expected output count) for a random image batch."""
    g = torch.Generator().manual_seed(seed)
    n, d = h * w, 6

    def rand(*shape):
        return torch.randn(*shape, generator=g)

    feats = rand(b, n, d)
    if name.startswith("tome"):
        r = round(frac * (n // 2))
        cls = rand(b, d) if name == "tome-cls" else None
        batch = TokenBatch.from_grid(feats, (h, w), cls_token=cls, keys=rand(b, n, 4))
        return ToMe(), batch, Budget(r=r), n - r
    if name in ("fastv", "pyramiddrop"):
        batch = TokenBatch.from_grid(feats, (h, w), text_attention=rand(b, n).softmax(-1))
        k = 1 + round(frac * (n - 1))
        return (FastV() if name == "fastv" else PyramidDrop()), batch, Budget(keep=k), k
    if name.startswith("sparsevlm"):
        batch = TokenBatch.from_grid(feats, (h, w), context={"rater_attention": rand(b, 3, n).softmax(-1)})
        if name == "sparsevlm":             # the official default: the clusters come on top of K
            k = 1 + round(frac * (n - 1))
            return SparseVLM(), batch, Budget(keep=k), k + recycle_counts(n - k)[1]
        lo = recycle_counts(n)[1]
        k = lo + round(frac * (n - lo))
        return SparseVLM(count_recycled=True), batch, Budget(keep=k), k
    text = {} if name == "dart-image" else {"text_keys": rand(b, 5, 4), "text_features": rand(b, 5, d)}
    batch = TokenBatch.from_grid(feats, (h, w), keys=rand(b, n, 4), normed_features=rand(b, n, d), context=text)
    k = 1 + round(frac * (n - 1))
    return DART(pivots=2), batch, Budget(keep=k), k


def one_image(batch: TokenBatch, i: int) -> TokenBatch:
    s = slice(i, i + 1)
    return TokenBatch(features=batch.features[s], grid=batch.grid, frames=batch.frames,
                      cls=None if batch.cls is None else batch.cls[s], sizes=batch.sizes[s],
                      source=batch.source[s], positions=batch.positions[s],
                      signals={k: v[s] for k, v in batch.signals.items()},
                      context={k: v[s] for k, v in batch.context.items()})


def assert_same(a: TokenBatch, b: TokenBatch) -> None:
    assert torch.equal(a.positions, b.positions)
    assert torch.equal(a.source, b.source)
    torch.testing.assert_close(a.sizes, b.sizes)
    torch.testing.assert_close(a.features, b.features)


@pytest.mark.parametrize("name", METHODS)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), b=st.integers(1, 3), h=st.integers(2, 6), w=st.integers(1, 6),
       frac=st.floats(0, 1))
def test_method_properties(name, seed, b, h, w, frac):
    method, batch, budget, expected = case(name, seed, b, h, w, frac)
    n = batch.num_tokens
    out = method(batch, budget)

    assert out.features.shape == (b, expected, batch.features.shape[-1])
    assert out.mask is None
    pos = out.positions
    assert ((pos >= 0) & (pos < n)).all()
    assert all(len(set(row.tolist())) == expected for row in pos)            # unique per image
    # every original patch feeds at most one token, and sizes count the patches fed
    assert (out.source.sum(1) <= 1).all()
    torch.testing.assert_close(out.sizes, out.source.sum(-1).to(out.sizes.dtype))
    # starting from single patches, every token is the mean of the patches it stands for
    src = out.source.float()
    torch.testing.assert_close(out.features, src @ batch.features / src.sum(-1, keepdim=True))

    assert_same(out, method(batch, budget))                                   # deterministic
    for i in range(b):                                                        # images are independent
        alone = method(one_image(batch, i), budget)
        assert_same(one_image(out, i), alone)
        assert torch.equal(alone.positions[0], out.positions[i])

    if name.startswith("tome"):
        assert (out.source.sum(1) == 1).all()                                 # covers every patch once
        torch.testing.assert_close(out.sizes.sum(1), torch.full((b,), float(n)))


# --- ToMe ------------------------------------------------------------------------------------

def four_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    # A = {0, 2}, B = {1, 3}; token 0 is nearly parallel to token 3, so (0 → 3) is the best edge
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1]]])
    x = torch.tensor([[[1.0], [2.0], [3.0], [5.0]]])
    return keys, x


def test_tome_merges_the_best_pair_with_weighted_average():
    keys, x = four_tokens()
    batch = TokenBatch(features=x, grid=(2, 2), sizes=torch.tensor([[1.0, 1.0, 1.0, 3.0]]),
                       signals={"keys": keys})
    out = ToMe()(batch, Budget(r=1))
    assert out.positions.tolist() == [[2, 1, 3]]                               # unmerged A, then B
    assert out.sizes.tolist() == [[1.0, 1.0, 4.0]]
    assert out.features[0, :, 0].tolist() == pytest.approx([3.0, 2.0, (1.0 + 3 * 5.0) / 4])
    assert out.source[0].tolist() == [[False, False, True, False], [False, True, False, False],
                                      [True, False, False, True]]


def test_tome_with_cls_shifts_the_split():
    keys = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.1, 1.0]]])
    batch = TokenBatch(features=torch.arange(4.0).view(1, 4, 1), grid=(2, 2), signals={"keys": keys})
    # no CLS: A = {0, 2}, B = {1, 3}; patch 2 joins patch 3
    assert ToMe()(batch, Budget(r=1)).positions.tolist() == [[0, 1, 3]]
    # a CLS in front: A = {CLS, 1, 3}, B = {0, 2}; patch 3 joins patch 2 and the CLS stays apart
    out = ToMe()(replace(batch, cls=torch.zeros(1, 1)), Budget(r=1))
    assert out.positions.tolist() == [[1, 0, 2]]
    assert out.features[0, :, 0].tolist() == pytest.approx([1.0, 0.0, 2.5])
    assert torch.equal(out.cls, torch.zeros(1, 1))


def test_merge_wavg_and_source_and_unmerge():
    keys, x = four_tokens()
    merge, unmerge = bipartite_soft_matching(keys, 1)
    y, size = merge_wavg(merge, x, torch.tensor([[[2.0], [1.0], [1.0], [2.0]]]))
    assert size[0, :, 0].tolist() == [1.0, 1.0, 4.0]
    assert y[0, :, 0].tolist() == pytest.approx([3.0, 2.0, (2 * 1.0 + 2 * 5.0) / 4])
    y, size = merge_wavg(merge, x)
    assert size.shape == (1, 3, 1) and y[0, 2, 0].item() == pytest.approx(3.0)
    assert unmerge(y)[0, :, 0].tolist() == pytest.approx([3.0, 2.0, 3.0, 3.0])
    src = merge_source(merge, x)
    assert src.dtype == torch.bool and src[0].sum(0).tolist() == [1, 1, 1, 1]
    assert merge_source(merge, x, torch.eye(4)[None]).dtype == torch.float32


def test_bipartite_matching_caps_r_and_protects_cls():
    keys = torch.randn(2, 7, 3)
    merge, _ = bipartite_soft_matching(keys, 100, class_token=True)
    x = torch.randn(2, 7, 5)
    y = merge(x)
    assert y.shape == (2, 4, 5)
    assert torch.equal(y[:, 0], x[:, 0])                                        # CLS first, untouched
    merge, unmerge = bipartite_soft_matching(keys, 0)
    assert merge(x) is x and unmerge(x) is x


def test_parse_r():
    assert parse_r(4, 3) == [3, 3, 3, 3]
    assert parse_r(3, (4, 0.5)) == [2, 4, 6]
    assert parse_r(3, (4, -0.5)) == [6, 4, 2]
    assert parse_r(4, [1, 2]) == [1, 2, 0, 0]
    assert parse_r(5, (8, 1.0)) == [0, 4, 8, 12, 16]
    with pytest.raises(ValueError):
        parse_r(2, [1, 2, 3])


def test_tome_budget_errors():
    batch = TokenBatch.from_grid(torch.randn(1, 9, 2), keys=torch.randn(1, 9, 2))
    for bad in (Budget(r=5), Budget(keep=4)):
        with pytest.raises(BudgetError, match=r"\[0, 4\]"):
            ToMe()(batch, bad)
    with pytest.raises(BudgetError, match=r"r=-1 is outside the allowed range"):   # refused before any method sees it
        Budget(r=-1)
    assert ToMe()(batch, Budget(r=0)) is batch
    with pytest.raises(ValueError, match="keys"):
        ToMe()(TokenBatch.from_grid(torch.randn(1, 4, 2)), Budget(r=1))


# --- FastV and PyramidDrop ------------------------------------------------------------------------

def test_fastv_keeps_the_top_attention_tokens_sorted():
    attn = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05], [0.2, 0.2, 0.2, 0.1, 0.3]])
    batch = TokenBatch(features=torch.randn(2, 5, 3), grid=(1, 5), signals={"text_attention": attn})
    out = FastV()(batch, Budget(keep=2))
    assert out.positions.tolist() == [[1, 3], [0, 4]]                          # ties: lower index
    torch.testing.assert_close(out.signals["text_attention"], torch.tensor([[0.5, 0.3], [0.2, 0.3]]))
    assert FastV().layer == 2 and FastV().query == "last" and FastV(query="all").query == "all"
    with pytest.raises(ValueError):
        FastV(query="first")
    with pytest.raises(BudgetError, match=r"\[1, 5\]"):
        FastV()(batch, Budget(keep=6))


def test_fastv_ranks_padded_slots_last():
    attn = torch.tensor([[0.1, 0.9, 0.0]])
    batch = TokenBatch(features=torch.randn(1, 3, 2), grid=(1, 3), mask=torch.tensor([[True, False, True]]),
                       signals={"text_attention": attn})
    out = FastV()(batch, Budget(keep=2))
    assert out.positions.tolist() == [[0, 2]] and out.mask is None


def test_pyramiddrop_stages():
    assert stage_budgets(576, (0.5, 0.25, 0.125)) == [288, 144, 72]
    assert stage_budgets(64, (0.125, 0.125 ** 2, 0.125 ** 3)) == [8, 1, 1]  # never below one token
    for bad in ((0.5, 0.75), (0.5, 0.0), (1.5,)):
        with pytest.raises(BudgetError, match="allowed range"):
            stage_budgets(8, bad)
    method = PyramidDrop()
    assert method.layers == (8, 16, 24) and method.ratios == (0.5, 0.25, 0.125)
    assert method.positions == "renumber"
    attn = torch.tensor([[0.4, 0.1, 0.3, 0.2]])
    batch = TokenBatch(features=torch.randn(1, 4, 2), grid=(2, 2), signals={"text_attention": attn})
    assert method(batch, Budget(ratio=0.5)).positions.tolist() == [[0, 2]]


# --- SparseVLM ----------------------------------------------------------------------------------

def test_sparsevlm_rater_selection():
    e = torch.eye(3)
    visual = 3 * e[0].expand(4, 3)
    text = torch.stack([e[0], e[0], e[1], -e[0]])
    assert select_raters(visual, text).tolist() == [True, True, False, False]
    assert select_raters(visual, e[1].expand(3, 3)).tolist() == [True, True, True]     # no one above


def test_dpc_knn_separates_two_blobs():
    g = torch.Generator().manual_seed(0)
    blobs = torch.cat([0.05 * torch.randn(12, 4, generator=g), 5 + 0.05 * torch.randn(8, 4, generator=g)])
    perm = torch.randperm(20, generator=g)
    labels, centres = dpc_knn(blobs[perm][None], 2)
    truth = (perm >= 12).long()
    assert len(set(labels[0].tolist())) == 2
    assert torch.equal(labels[0], truth) or torch.equal(labels[0], 1 - truth)
    assert labels[0, centres[0]].tolist() == [0, 1]


def test_sparsevlm_counts_and_schedule():
    assert recycle_counts(0) == (0, 0) and recycle_counts(276) == (83, 9)
    keep = kept_count(576, 192)
    assert keep + recycle_counts(576 - keep)[1] == 192
    assert SparseVLM.layers == (2, 6, 15) and SparseVLM.schedule[128] == (303, 110, 36)
    assert SparseVLM.schedule[96] == (238, 48, 26) and SparseVLM.positions == "renumber"


def test_sparsevlm_recycles_and_accepts_text_attention():
    attn = torch.tensor([[9.0, 8.0, 7.0, 1.0, 0.5, 0.4, 0.3, 0.2]])
    feats = torch.arange(8.0).view(1, 8, 1)
    batch = TokenBatch(features=feats, grid=(2, 4), signals={"text_attention": attn})
    out = SparseVLM()(batch, Budget(keep=3))
    # 5 deleted → ⌊1.5⌋+1 = 2 recycled (tokens 3 and 4), 1 cluster: their plain mean, appended
    assert out.positions[0, :3].tolist() == [0, 1, 2]
    assert out.features[0, :, 0].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.5])
    assert out.sizes.tolist() == [[1.0, 1.0, 1.0, 2.0]]
    assert SparseVLM(recycle=False)(batch, Budget(keep=3)).positions.tolist() == [[0, 1, 2]]
    assert SparseVLM()(batch, Budget(keep=3)).num_tokens == 4                   # official: 3 kept + 1 cluster
    assert SparseVLM(count_recycled=True)(batch, Budget(keep=3)).num_tokens == 3
    with pytest.raises(BudgetError, match=r"\[1, 8\]"):
        SparseVLM()(batch, Budget(keep=9))
    with pytest.raises(ValueError, match="rater_attention"):
        SparseVLM()(TokenBatch.from_grid(torch.randn(1, 4, 2)), Budget(keep=2))


# --- DART --------------------------------------------------------------------------------------

def dart_case():
    e = torch.eye(3)
    feats = torch.stack([e[0], e[0], e[1], -e[1], e[2], -e[0]])[None]
    keys = torch.tensor([[[10.0], [1.0], [1.0], [1.0], [1.0], [1.0]]])
    return feats, keys


def test_dart_picks_dissimilar_tokens():
    feats, keys = dart_case()
    # the pivot is token 0 (largest key norm); -e0 is least similar, then the orthogonal ones
    assert dart_select(feats, keys, 2, pivots=1).tolist() == [[0, 5]]
    assert dart_select(feats, keys, 3, pivots=1).tolist() == [[0, 2, 5]]
    batch = TokenBatch(features=torch.zeros(1, 6, 3), grid=(2, 3),
                       signals={"keys": keys, "normed_features": feats})
    assert DART(pivots=1)(batch, Budget(keep=2)).positions.tolist() == [[0, 5]]   # reads normed_features


def test_dart_text_pivot_goes_first_and_budget_is_exact():
    feats, keys = dart_case()
    text_keys, text_feats = torch.tensor([[[20.0]]]), torch.eye(3)[1][None, None]
    # text pivot (norm 20) is visited before the image pivot (norm 10) and takes -e1
    assert dart_select(feats, keys, 2, 1, text_keys, text_feats).tolist() == [[0, 3]]
    assert dart_select(feats, keys, 3, 1, text_keys, text_feats).tolist() == [[0, 3, 5]]
    assert dart_select(feats, keys, 1, 4).tolist() == [[0]]
    batch = TokenBatch(features=feats, grid=(2, 3),
                       signals={"keys": keys}, context={"text_keys": text_keys, "text_features": text_feats})
    out = DART(pivots=1)(batch, Budget(keep=2))
    assert out.positions.tolist() == [[0, 3]] and "text_keys" in out.context


def test_class_info_for_adapters():
    assert FastV.layer == 2 and FastV.query == "last"
    assert PyramidDrop.layers == (8, 16, 24) and PyramidDrop(layers=(6, 12, 18)).layers == (6, 12, 18)
    assert (FastV.stage, FastV.guidance, DART.guidance, ToMe.stage, ToMe.knob) == (
        "llm", "text", "vision", "vision-encoder", "r")
    assert all("arXiv" in m.paper for m in (ToMe, FastV, SparseVLM, PyramidDrop, DART))
