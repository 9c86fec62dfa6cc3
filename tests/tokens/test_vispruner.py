"""VisPruner: important tokens by CLS attention, then diverse ones by duplicate removal, faithful to
Theia-4869/VisPruner @ aefa01a.

Known answers: a hand-built case whose duplicates decide the kept set, and a plain-list reference of
the official loop (the card's steps, one Python list per image) on random inputs. Invariants: exact K,
raster order, each image alone, views, the no-CLS fallback, bf16 == fp32, no host sync.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokencodec.metrics.host_sync import HostSyncs
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, BudgetError, MethodOptionError, get_method
from tokencodec.tokens.compress.vispruner import VisPruner, split_counts, vispruner_select
from tokencodec.tokens.signals import Signal

# attention order of the hand case: the first 7 are the important tokens, the rest the residual list
ORDER = [19, 3, 7, 0, 12, 5, 16, 1, 2, 4, 6, 8, 9, 10, 11, 13, 14, 15, 17, 18]
DUPLICATE_OF = {1: 2, 4: 6, 8: 9, 10: 11, 13: 14, 15: 17}      # a-tokens copying a b-token


def hand_batch(dtype=torch.float32) -> TokenBatch:
    attention = torch.zeros(20)
    attention[ORDER] = torch.linspace(1.0, 0.05, 20)
    feats = torch.eye(20)
    for a, b in DUPLICATE_OF.items():
        feats[a] = feats[b]
    return TokenBatch.from_grid(feats[None].to(dtype), (4, 5), cls_token=torch.zeros(1, 20),
                                cls_attention=attention[None].to(dtype))


def test_hand_case_keeps_the_important_the_unique_and_every_b_token():
    # K = 14, ρ = 0.5: 7 important (ORDER[:7]); residual (13) splits into a = [1, 4, 8, 10, 13, 15, 18] and
    # b = [2, 6, 9, 11, 14, 17]; r = min(8, 13 − 7) = 6 drops the six a-tokens that duplicate a b-token
    # (cosine 1), leaving 18 (cosine 0) and every b-token: 7 + 1 + 6 = 14
    out = get_method("vispruner")(hand_batch(), Budget(keep=14))
    expected = sorted(ORDER[:7] + [18, 2, 6, 9, 11, 14, 17])
    assert out.positions.tolist() == [expected]
    top_attention = sorted(ORDER[:14])
    assert expected != top_attention        # attention alone would keep the duplicates


def reference(attention: torch.Tensor, features: torch.Tensor, k: int, ratio: float) -> list[int]:
    """The official loop on Python lists for one image (ties: earlier list slot first)."""
    n_imp = int(k * ratio)
    n_div = k - n_imp
    order = sorted(range(len(attention)), key=lambda i: -float(attention[i]))
    important, residual = order[:n_imp], order[n_imp:]
    x = F.normalize(features.double(), dim=-1)
    while n_div > 0:
        r = min(8, len(residual) - n_div)
        if r <= 0:
            break
        a, b = residual[0::2], residual[1::2]
        score = [max(float(x[i] @ x[j]) for j in b) for i in a]
        ranked = sorted(range(len(a)), key=lambda p: -score[p])          # highest duplicate first
        residual = [a[p] for p in ranked[r:]] + b
    return sorted(important + (residual if n_div > 0 else []))


@pytest.mark.parametrize("n, k, ratio, seed", [(36, 12, 0.5, 0), (36, 8, 0.75, 1), (49, 20, 0.5, 2),
                                               (49, 30, 0.3, 3), (64, 5, 0.5, 4), (64, 63, 0.5, 5),
                                               (25, 25, 0.5, 6), (36, 10, 1.0, 7), (36, 10, 0.0, 8)])
def test_matches_the_plain_reference(n, k, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    attention = torch.rand(2, n, generator=g)
    low_rank = torch.randn(2, n, 4, generator=g) @ torch.randn(4, 24, generator=g)
    feats = low_rank + 0.2 * torch.randn(2, n, 24, generator=g)
    n_imp, n_div = split_counts(k, ratio)
    got = vispruner_select(attention, feats.double(), n_imp, n_div)
    for i in range(2):
        assert got[i].tolist() == reference(attention[i], feats[i], k, ratio)


def test_counts_split_as_the_official_int():
    assert split_counts(64, 0.75) == (48, 16) and split_counts(128, 0.5) == (64, 64)
    assert split_counts(192, 0.5) == (96, 96) and split_counts(10, 0.33) == (3, 7)


def make_batch(b=3, side=6, frames=1, d=16, seed=0, cls=True) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    n = side * side * frames
    att = torch.rand(b, n, generator=g) ** 3
    feats = torch.randn(b, n, d, generator=g)
    signals = {"cls_attention": att} if cls else {"mean_attention": att}
    return TokenBatch.from_grid(feats, (side, side), frames=frames,
                                cls_token=torch.randn(b, d, generator=g) if cls else None, **signals)


@pytest.mark.parametrize("k", [1, 2, 9, 18, 35, 36])
def test_invariants(k):
    batch = make_batch()
    out = get_method("vispruner")(batch, Budget(keep=k))
    pos = out.positions
    assert pos.shape == (3, k) and (pos[:, 1:] > pos[:, :-1]).all() and (pos >= 0).all() and (pos < 36).all()
    assert torch.equal(out.features, batch.features.gather(1, pos[..., None].expand(-1, -1, 16)))
    assert (out.sizes == 1).all() and torch.equal(out.source.float().argmax(-1), pos)
    n_imp = int(k * 0.5)
    top = batch.signals["cls_attention"].argsort(dim=1, descending=True, stable=True)[:, :n_imp]
    assert all(set(top[i].tolist()) <= set(pos[i].tolist()) for i in range(3))     # the important ones are in
    for i in range(3):
        alone = TokenBatch.from_grid(batch.features[i:i + 1], batch.grid, cls_token=batch.cls[i:i + 1],
                                     cls_attention=batch.signals["cls_attention"][i:i + 1])
        assert torch.equal(get_method("vispruner")(alone, Budget(keep=k)).positions, pos[i:i + 1])


def test_views_each_select_per_view_and_joint_over_all():
    batch = make_batch(b=2, side=4, frames=3, seed=1)
    out = get_method("vispruner")(batch, Budget(keep=12))
    for v in range(3):
        view = TokenBatch.from_grid(batch.features[:, 16 * v:16 * (v + 1)], (4, 4), cls_token=batch.cls,
                                    cls_attention=batch.signals["cls_attention"][:, 16 * v:16 * (v + 1)])
        mine = out.positions[:, 4 * v:4 * (v + 1)] - 16 * v
        assert torch.equal(mine, get_method("vispruner")(view, Budget(keep=4)).positions)
    joint = get_method("vispruner", views="joint")(batch, Budget(keep=12))
    n_imp, n_div = split_counts(12, 0.5)
    assert torch.equal(joint.positions, vispruner_select(batch.signals["cls_attention"], batch.features, n_imp, n_div))
    with pytest.raises(BudgetError, match="multiple of 3"):
        get_method("vispruner")(batch, Budget(keep=10))


def test_without_cls_the_mean_attention_ranks():
    batch = make_batch(cls=False, seed=2)
    out = get_method("vispruner", important_ratio=1.0)(batch, Budget(keep=5))
    top = batch.signals["mean_attention"].argsort(dim=1, descending=True, stable=True)[:, :5].sort(1).values
    assert torch.equal(out.positions, top)
    with pytest.raises(ValueError, match="'cls_attention'.*'mean_attention'"):
        get_method("vispruner")(TokenBatch.from_grid(batch.features, batch.grid), Budget(keep=5))


def test_bf16_keeps_the_fp32_set_when_scores_are_untied():
    # duplicates at distinct, well-separated cosines (0.95, 0.75, 0.55, …) and distinct attention levels
    g = torch.Generator().manual_seed(3)
    base = torch.eye(32)[torch.randperm(32, generator=g)]
    feats = base.clone()
    for i, c in zip(range(0, 32, 3), torch.linspace(0.95, 0.05, 11), strict=False):
        j = (i + 7) % 32
        feats[i] = c * base[j] + (1 - c * c) ** 0.5 * base[i]
    attention = torch.linspace(1.0, 0.1, 32)[torch.randperm(32, generator=g)]
    fp32 = TokenBatch.from_grid(feats[None], (4, 8), cls_attention=attention[None])
    bf16 = TokenBatch.from_grid(feats[None].bfloat16(), (4, 8), cls_attention=attention[None].bfloat16())
    for k in (6, 12, 20):
        a = get_method("vispruner")(fp32, Budget(keep=k))
        b = get_method("vispruner")(bf16, Budget(keep=k))
        assert torch.equal(a.positions, b.positions) and b.features.dtype == torch.bfloat16
    hand = get_method("vispruner")(hand_batch(torch.float16), Budget(keep=14))
    assert hand.positions.tolist() == get_method("vispruner")(hand_batch(), Budget(keep=14)).positions.tolist()


def test_no_host_sync(monkeypatch):
    monkeypatch.setattr("tokencodec.tokens.batch.CHECK_VALUES", False)     # the suite's value checks are syncs
    batch = make_batch(b=2, side=8, frames=2)
    with HostSyncs() as syncs:
        get_method("vispruner")(batch, Budget(keep=40))
    assert syncs.count() == 0, str(syncs)


def test_declarations_and_options():
    assert VisPruner.stage == "pre-llm" and VisPruner.needs == (Signal.CLS_ATTENTION,) and VisPruner.needs_cls
    assert VisPruner.features == "vision" and VisPruner.positions == "renumber" and VisPruner.cls_fallback
    with pytest.raises(MethodOptionError, match=r"important_ratio=1.5 is outside the allowed range \[0, 1\]"):
        get_method("vispruner", important_ratio=1.5)
    assert get_method("vispruner", important_ratio=0.75).label == "vispruner(important_ratio=0.75)"
