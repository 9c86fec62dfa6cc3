"""CDPruner: greedy MAP of a conditional DPP, faithful to Theia-4869/CDPruner @ 9541616.

Known answers: a 3-token kernel whose greedy order is worked out by hand, a brute-force greedy
(log-det of every candidate set) on random kernels, the sign flip on orthogonal tokens. Invariants:
exact K, raster order, selection bookkeeping, each image alone, bf16 == fp32, no host sync.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokencodec.metrics.host_sync import HostSyncs
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import Budget, BudgetError, MethodOptionError, get_method
from tokencodec.tokens.compress.cdpruner import CDPruner, cdpruner_select, dpp_greedy_map, min_max, relevance
from tokencodec.tokens.signals import Signal


def make_batch(b=2, side=6, frames=1, d=32, e=16, m=1, seed=0, dtype=torch.float32) -> TokenBatch:
    g = torch.Generator().manual_seed(seed)
    n = side * side * frames
    feats = torch.randn(b, n, 5, generator=g) @ torch.randn(5, d, generator=g) + 0.3 * torch.randn(b, n, d, generator=g)
    image = torch.randn(b, n, e, generator=g) + torch.randn(e, generator=g)
    text = torch.randn(b, m, e, generator=g)
    return TokenBatch.from_grid(feats.to(dtype), (side, side), frames=frames, image_embedding=image.to(dtype),
                                context={"text_embedding": text.to(dtype)})


def greedy_by_determinants(kernel: torch.Tensor, k: int) -> list[int]:
    """The greedy MAP order by brute force: each step adds the token that maximises det(L_S)."""
    picked: list[int] = []
    for _ in range(k):
        best, best_j = -math.inf, None
        for j in range(kernel.shape[0]):
            if j in picked:
                continue
            s = picked + [j]
            det = torch.linalg.det(kernel[s][:, s].double()).item()
            if det > best + 1e-12:
                best, best_j = det, j
        picked.append(best_j)
    return picked


def test_greedy_order_by_hand():
    # S: tokens 0 and 1 are near-duplicates (cos 0.9), token 2 is orthogonal; relevance 1, 0.95, 0.8.
    # d² starts at r² = (1, .9025, .64): token 0 first. Then d²₁ = .9025 − (.9·.95)² = .1715 and
    # d²₂ = .64: token 2 beats the more relevant duplicate 1, which comes last.
    s = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    r = torch.tensor([1.0, 0.95, 0.8])
    kernel = (r[:, None] * s * r[None, :])[None]
    assert dpp_greedy_map(kernel, 3).tolist() == [[0, 2, 1]]
    assert dpp_greedy_map(kernel, 2).tolist() == [[0, 2]]


@pytest.mark.parametrize("seed", range(6))
def test_greedy_matches_brute_force_determinants(seed):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(12, 6, generator=g), dim=-1)
    r = torch.rand(12, generator=g) + 0.1
    kernel = r[:, None] * (x @ x.T) * r[None, :]
    assert dpp_greedy_map(kernel[None], 5)[0].tolist() == greedy_by_determinants(kernel, 5)


def test_ties_go_to_the_lowest_index():
    assert dpp_greedy_map(torch.eye(5)[None], 3).tolist() == [[0, 1, 2]]


def test_rank_deficient_kernel_still_gives_k_distinct_tokens():
    # rank 2 and a budget of 5: the official √ of a non-positive gain gives NaN; we still pick 5 distinct tokens
    x = F.normalize(torch.randn(8, 2, generator=torch.Generator().manual_seed(1)), dim=-1)
    picked = dpp_greedy_map((x @ x.T)[None], 5)[0]
    assert picked.unique().numel() == 5


def orthogonal_batch(cos: list[float]) -> TokenBatch:
    """Orthogonal features (S = I, so the DPP is top-K by relevance) and patches at the given cos to the text."""
    n = len(cos)
    text = torch.tensor([[[1.0, 0.0]]])
    image = torch.tensor([[[c, math.sqrt(1 - c * c)] for c in cos]])
    return TokenBatch.from_grid(torch.eye(n)[None], (1, n), image_embedding=image, context={"text_embedding": text})


def test_official_sign_flip_keeps_the_tokens_least_similar_to_the_text():
    batch = orthogonal_batch([0.9, -0.5, 0.1, 0.7, -0.9, 0.3])
    assert get_method("cdpruner")(batch, Budget(keep=2)).positions.tolist() == [[1, 4]]
    assert get_method("cdpruner", relevance="cosine")(batch, Budget(keep=2)).positions.tolist() == [[0, 3]]


def test_relevance_and_min_max_follow_the_official_expressions():
    image = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])
    text = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    rel = relevance(image, text)                            # −mean cos over the two chunks
    torch.testing.assert_close(rel, torch.tensor([[-0.5, -0.5, -math.sqrt(0.5)]]))
    lo, hi = -math.sqrt(0.5), -0.5
    torch.testing.assert_close(min_max(rel, None), (rel - lo + 1e-6) / (hi - lo))
    masked = relevance(image, torch.cat([text, torch.full((1, 1, 2), 7.0)], 1), torch.tensor([[True, True, False]]))
    torch.testing.assert_close(masked, rel)


def by_hand(batch: TokenBatch, k: int, dims) -> list[list[int]]:
    """Relevance min–max over ``dims`` of [B, views, n], then a brute-force greedy DPP of k per view."""
    views, n = batch.frames, batch.grid[0] * batch.grid[1]
    feats, image, text = batch.features, batch.signals["image_embedding"], batch.context["text_embedding"]
    rel = min_max(relevance(image, text).view(batch.batch_size, views, n), dims)
    rows = []
    for row in range(batch.batch_size):
        kept = []
        for view in range(views):
            x = F.normalize(feats[row, n * view:n * (view + 1)], dim=-1)
            r = rel[row, view]
            kept += sorted(j + n * view for j in greedy_by_determinants(r[:, None] * (x @ x.T) * r[None, :], k))
        rows.append(kept)
    return rows


def test_views_each_keep_k_per_view_with_one_min_max_per_image():
    batch = make_batch(b=2, side=4, frames=2, seed=3)
    out = get_method("cdpruner")(batch, Budget(keep=6))
    assert out.positions.tolist() == by_hand(batch, 3, (1, 2))            # min–max over both views of a row
    per_view = get_method("cdpruner", normalize="view")(batch, Budget(keep=6))
    assert per_view.positions.tolist() == by_hand(batch, 3, (2,))
    whole = get_method("cdpruner", normalize="batch")(batch, Budget(keep=6))
    assert whole.positions.tolist() == by_hand(batch, 3, None)
    joint = get_method("cdpruner", views="joint")(batch, Budget(keep=6))
    flat = TokenBatch.from_grid(batch.features, (4, 8), image_embedding=batch.signals["image_embedding"],
                                context=batch.context)
    assert joint.positions.tolist() == by_hand(flat, 6, (1, 2))
    with pytest.raises(BudgetError, match="multiple of 2"):
        get_method("cdpruner")(batch, Budget(keep=5))


def test_one_image_per_call_makes_batch_normalisation_the_image_one():
    batch = make_batch(b=1, side=5, seed=4)
    image = get_method("cdpruner")(batch, Budget(keep=7))
    assert torch.equal(get_method("cdpruner", normalize="batch")(batch, Budget(keep=7)).positions, image.positions)


@pytest.mark.parametrize("k", [1, 7, 20, 35])
def test_invariants(k):
    batch = make_batch(b=3, seed=k)
    out = get_method("cdpruner")(batch, Budget(keep=k))
    pos = out.positions
    assert pos.shape == (3, k) and (pos[:, 1:] > pos[:, :-1]).all() and (pos >= 0).all() and (pos < 36).all()
    assert torch.equal(out.features, batch.features.gather(1, pos[..., None].expand(-1, -1, 32)))
    assert (out.sizes == 1).all() and torch.equal(out.source.sum(-1), torch.ones(3, k, dtype=torch.long))
    assert torch.equal(out.source.float().argmax(-1), pos)
    # each image gives alone what it gives in the batch (except the last picks of k = 35 of 36, whose gains
    # reach the float32 noise floor: the least relevant token's kernel row is ~1e-12 after the min–max)
    for i in range(3 if k < 30 else 0):
        alone = TokenBatch.from_grid(batch.features[i:i + 1], batch.grid,
                                     image_embedding=batch.signals["image_embedding"][i:i + 1],
                                     context={"text_embedding": batch.context["text_embedding"][i:i + 1]})
        assert torch.equal(get_method("cdpruner")(alone, Budget(keep=k)).positions, pos[i:i + 1])


def test_full_budget_keeps_every_token():
    batch = make_batch()
    assert torch.equal(get_method("cdpruner")(batch, Budget(ratio=1.0)).positions, batch.positions)


def test_bf16_keeps_the_fp32_set_when_scores_are_untied():
    # orthogonal features and well-separated relevance: no near-ties for bf16 rounding to flip
    cos = torch.linspace(-0.9, 0.9, 24)[torch.randperm(24, generator=torch.Generator().manual_seed(0))]
    batch = orthogonal_batch(cos.tolist())
    feats = batch.features + 0.05 * torch.randn(batch.features.shape, generator=torch.Generator().manual_seed(1))
    batch = TokenBatch.from_grid(feats, batch.grid, image_embedding=batch.signals["image_embedding"],
                                 context=batch.context)
    low = TokenBatch.from_grid(feats.bfloat16(), batch.grid,
                               image_embedding=batch.signals["image_embedding"].bfloat16(),
                               context={"text_embedding": batch.context["text_embedding"].bfloat16()})
    for k in (4, 8, 12):
        fp32 = get_method("cdpruner")(batch, Budget(keep=k))
        bf16 = get_method("cdpruner")(low, Budget(keep=k))
        assert torch.equal(fp32.positions, bf16.positions)
        assert bf16.features.dtype == torch.bfloat16


def test_no_host_sync(monkeypatch):
    monkeypatch.setattr("tokencodec.tokens.batch.CHECK_VALUES", False)     # the suite's value checks are syncs
    batch = make_batch(b=2, side=8, frames=2, m=2)
    with HostSyncs() as syncs:
        get_method("cdpruner")(batch, Budget(keep=32))
    assert syncs.count() == 0, str(syncs)


def test_declarations_and_options():
    assert CDPruner.stage == "pre-llm" and CDPruner.guidance == "text" and CDPruner.features == "projected"
    assert CDPruner.needs == (Signal.IMAGE_EMBEDDING, Signal.TEXT_EMBEDDING) and CDPruner.positions == "renumber"
    with pytest.raises(MethodOptionError, match="theta=1.0 is outside"):
        get_method("cdpruner", theta=1.0)
    # θ reweights relevance monotonically: with S = I the kept set is unchanged
    batch = orthogonal_batch([0.9, -0.5, 0.1, 0.7, -0.9, 0.3])
    assert get_method("cdpruner", theta=0.5)(batch, Budget(keep=2)).positions.tolist() == [[1, 4]]
    with pytest.raises(ValueError, match=r"needs signals \['text_embedding'\]"):
        get_method("cdpruner")(TokenBatch.from_grid(batch.features, batch.grid,
                                                    image_embedding=batch.signals["image_embedding"]), Budget(keep=2))
    bad = TokenBatch.from_grid(batch.features, batch.grid, image_embedding=batch.signals["image_embedding"],
                               context={"text_embedding": torch.zeros(1, 1, 3)})
    with pytest.raises(ValueError, match=r"'text_embedding' has shape \(1, 1, 3\), expected \[B=1 \(or 1\), M, E=2\]"):
        get_method("cdpruner")(bad, Budget(keep=2))


def test_model_dtype_normalisation_is_what_the_official_fp16_path_computes():
    batch = make_batch(b=1, side=6, seed=5, dtype=torch.float16)
    feats = batch.features
    rel = min_max(relevance(batch.signals["image_embedding"], batch.context["text_embedding"]), None)
    x = (feats / feats.norm(dim=-1, keepdim=True)).float()           # official: normalise in fp16, then float
    kernel = rel[..., :, None] * (x @ x.transpose(1, 2)) * rel[..., None, :]
    expected = dpp_greedy_map(kernel, 9).sort(1).values
    got = cdpruner_select(feats, batch.signals["image_embedding"], batch.context["text_embedding"], 9)
    assert torch.equal(got, expected)
