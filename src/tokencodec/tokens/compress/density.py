"""Density-peak (DPC-KNN) scores on masked groups of tokens, shared by HoliTom and FastVID.

Both official codes score tokens the same way (Du et al.'s DPC-KNN as used by ToMe-style video
methods): distances d = cdist(x, x)/√D; density ρᵢ = exp(−mean of d² to the k nearest tokens, the
token itself included); δᵢ = distance to the nearest denser token (the largest distance in the group
for the densest one); score = δ·ρ. Cluster centres are the top-m scores.

The official codes add random noise (1e-6) to ρ so that no two tokens tie; here a tie in ρ goes to
the lower index (that token counts as denser), so results are deterministic. Groups are padded:
``valid`` marks the real tokens of each group, so that windows and frames with different token
counts run in one batched call (no host sync, no Python loop over groups).
"""

from __future__ import annotations

import torch
from torch import Tensor


def density_peaks(x: Tensor, k: Tensor | int, valid: Tensor | None = None, k_max: int | None = None
                  ) -> tuple[Tensor, Tensor]:
    """(dist [G, M, M], score [G, M]) for G groups of M tokens ``x`` [G, M, D] (float32 inside).

    ``k``: nearest neighbours per group (an int, or [G] long, each ≤ the group's valid count, ≥ 1 where
    the group is used); ``k_max`` bounds it (needed when ``k`` is a tensor, so no value is read back).
    Invalid tokens score −inf and are never anyone's denser neighbour.
    """
    g, m, d = x.shape
    x = x.float()
    dist = torch.cdist(x, x) / d ** 0.5
    if valid is None:
        valid = torch.ones(g, m, dtype=torch.bool, device=x.device)
    pair = valid[:, :, None] & valid[:, None, :]
    if isinstance(k, int):
        nearest = dist.masked_fill(~pair, torch.inf).topk(min(k, m), dim=-1, largest=False).values
        density = (-(nearest ** 2).mean(dim=-1)).exp()
    else:
        top = min(k_max if k_max is not None else m, m)
        nearest = dist.masked_fill(~pair, torch.inf).topk(top, dim=-1, largest=False).values
        k = k.clamp_min(1)
        use = torch.arange(top, device=x.device) < k[:, None, None]
        density = (-(nearest ** 2).masked_fill(~use, 0).sum(-1) / k[:, None]).exp()
    density = density.masked_fill(~valid, -torch.inf)
    index = torch.arange(m, device=x.device)
    rho_j, rho_i = density[:, None, :], density[:, :, None]
    denser = (rho_j > rho_i) | ((rho_j == rho_i) & (index[None, :] < index[:, None]))   # j denser than i
    denser &= pair
    dist_max = dist.masked_fill(~pair, -torch.inf).flatten(1).amax(-1)
    delta = torch.where(denser, dist, dist_max[:, None, None]).amin(-1)
    score = (delta * density).masked_fill(~valid, -torch.inf)
    return dist, score


def rank_desc(score: Tensor) -> Tensor:
    """Each entry's rank in its row by descending score (0 = best), ties to the lower index: [..., M] long."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    ranks = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, ranks)


def one_hot(index: Tensor, n: int) -> Tensor:
    """[..., n] bool, True at ``index``: ``F.one_hot`` without its range check (which reads values back)."""
    return index[..., None] == torch.arange(n, device=index.device)


__all__ = ["density_peaks", "one_hot", "rank_desc"]
