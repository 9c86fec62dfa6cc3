"""ToMe: token merging inside the vision encoder (Bolya et al., ICLR 2023; arXiv 2210.09461).

Follows the official code (facebookresearch/ToMe ``merge.py``, ``utils.py``), which matches the
paper: bipartite soft matching between alternating sets A (even positions) and B (odd positions)
on head-averaged keys, the top-r A tokens merge into their best B match by a size-weighted mean,
sizes add up and carry over, and the output order is [unmerged A, all B] (not raster order).

The pure functions below are what a ViT patch calls in every block; the registered class ``tome``
does one merge step on a :class:`TokenBatch` (the adapter calls it once per block with that
block's keys). Proportional attention (``+ log size`` on the attention logits) belongs to the ViT
patch, not here.

Choices the card leaves open:

- ``merge_source`` with ``source=None`` starts from a **bool** identity (the TokenBatch
  convention); a given source keeps its dtype (bool or float).
- Ties in the match scores are broken by a stable sort (lower A index first), so results are
  deterministic; the official ``argsort`` leaves ties unspecified.
- In the class, a CLS kept apart in ``batch.cls`` still shifts the A/B split as in the ViT
  (CLS is A's first member and never merges), so a dummy protected row is put in front of the
  patches; with no CLS (SigLIP) the patches are split from index 0, i.e. ``class_token=False``.
- In the class, a merged token's position and its per-token signals are the B token's; masked
  (padded) batches are refused, since padded slots have no keys to match.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError, TokenMethod, register_method
from tokencodec.tokens.signals import Signal


def _identity(x: Tensor, mode: str = "mean") -> Tensor:
    return x


def _match(metric: Tensor, r: int, class_token: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Indices into A of the unmerged and merged tokens, and the B index each merged one joins."""
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)          # [B, Ta, Tb] cosines
        if class_token:
            scores[:, 0] = -math.inf                                        # the CLS never merges
        best, best_b = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True, stable=True)
        unm, src = order[:, r:], order[:, :r]
        if class_token:
            unm = unm.sort(dim=-1).values                                   # keeps the CLS first
        return unm, src, best_b.gather(1, src)


def bipartite_soft_matching(metric: Tensor, r: int, class_token: bool = False) -> tuple[Callable, Callable]:
    """Plan one ToMe merge of ``r`` tokens from ``metric`` [B, T, C]; returns ``(merge, unmerge)``.

    ``merge(x, mode="mean")`` maps [B, T, C] to [B, T − r, C] (unmerged A tokens, then B tokens,
    with ``mode`` any ``scatter_reduce`` reduction); ``unmerge`` maps back, copying each merged
    value to every token that went into it. r is capped at (T − protected)//2.
    """
    r = min(r, (metric.shape[1] - int(class_token)) // 2)
    if r <= 0:
        return _identity, _identity
    unm_idx, src_idx, dst_idx = _match(metric, r, class_token)

    def merge(x: Tensor, mode: str = "mean") -> Tensor:
        a, b = x[:, ::2], x[:, 1::2]
        c = x.shape[-1]
        unm = a.gather(1, unm_idx[..., None].expand(-1, -1, c))
        src = a.gather(1, src_idx[..., None].expand(-1, -1, c))
        b = b.scatter_reduce(1, dst_idx[..., None].expand(-1, -1, c), src, reduce=mode)
        return torch.cat([unm, b], dim=1)

    def unmerge(x: Tensor) -> Tensor:
        n_unm, c = unm_idx.shape[1], x.shape[-1]
        unm, b = x[:, :n_unm], x[:, n_unm:]
        src = b.gather(1, dst_idx[..., None].expand(-1, -1, c))
        out = x.new_zeros(x.shape[0], metric.shape[1], c)
        out[:, 1::2] = b
        a = out[:, ::2]                                                     # a view into out
        a.scatter_(1, unm_idx[..., None].expand(-1, -1, c), unm)
        a.scatter_(1, src_idx[..., None].expand(-1, -1, c), src)
        return out

    return merge, unmerge


def merge_wavg(merge: Callable, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Size-weighted average merge of ``x`` [B, T, C]; returns ``(x, size)`` with size [B, T', 1]."""
    if size is None:
        size = torch.ones_like(x[..., :1])
    x = merge(x * size, mode="sum")
    size = merge(size, mode="sum")
    return x / size, size


def merge_source(merge: Callable, x: Tensor, source: Tensor | None = None) -> Tensor:
    """Carry the source map [B, T, N0] (which original patches feed each token) through a merge."""
    if source is None:
        b, t = x.shape[:2]
        source = torch.eye(t, dtype=torch.bool, device=x.device).expand(b, t, t)
    # scatter_reduce has no bool kernel; amax over 0/1 is the union
    return merge(source.float(), mode="amax").to(source.dtype)


def parse_r(num_layers: int, r) -> list[int]:
    """Per-layer r from an int (constant), an ``(r, inflection)`` pair or an explicit list.

    The pair gives a linear schedule from ⌊r(1 − inflection)⌋ to 2r minus that, so the total
    stays about r·num_layers; a short list is padded with zeros.
    """
    if isinstance(r, list):
        if len(r) > num_layers:
            raise ValueError(f"r lists {len(r)} layers but the model has {num_layers}")
        return [int(v) for v in r] + [0] * (num_layers - len(r))
    r, inflection = r if isinstance(r, tuple) else (r, 0.0)
    lo = int(r * (1.0 - inflection))
    hi = 2 * r - lo
    step = (hi - lo) / max(num_layers - 1, 1)
    return [int(lo + step * i) for i in range(num_layers)]


def keep_schedule(n: int, keep: int, layers: int) -> list[int]:
    """Per-layer r merging ``n`` patch tokens down to ``keep`` over ``layers`` layers, as evenly as ToMe's
    r ≤ t/2 allows (more in early layers when the later ones could not reach it; the floor is ⌈n/2^layers⌉).

    ToMe's knob is r; this is how a keep budget (``Budget(keep=...)`` or ``ratio``) becomes one, for the
    adapters that accept both."""
    def reachable(t: int, m: int) -> int:          # fewest tokens m more layers can leave from t
        for _ in range(m):
            t -= t // 2
        return t

    out, t = [], n
    for i in range(layers):
        r = min(math.ceil(max(t - keep, 0) / (layers - i)), t // 2)
        while r < t // 2 and reachable(t - r, layers - i - 1) > keep:
            r += 1
        out.append(r)
        t -= r
    return out


@register_method("tome")
class ToMe(TokenMethod):
    """One ToMe merge step on the patch tokens, driven by signal ``keys`` [B, N, Dk]."""

    stage = "vision-encoder"
    guidance = "vision"
    knob = "r"
    needs = (Signal.KEYS,)
    cls_fallback = "no CLS: the A/B split starts at the first patch (class_token=False)"
    paper = "Bolya et al., Token Merging: Your ViT But Faster, ICLR 2023, arXiv 2210.09461"

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)
        n = batch.num_tokens
        if budget.r is None or not 0 <= budget.r <= n // 2:
            given = budget.r if budget.r is not None else budget
            raise BudgetError(f"ToMe takes Budget(r=...) with r in the allowed range [0, {n // 2}] "
                              f"for {n} tokens; got {given}")
        self.check_unpadded(batch)
        if budget.r == 0:
            return batch
        merge, rep = self.plan(batch.signals["keys"], budget.r, has_cls=batch.cls is not None)
        # the size-weighted average in float32 whatever the features' dtype (sizes beyond 256 are not exact in bf16)
        x, size = merge_wavg(merge, batch.features.float(), batch.sizes.float()[..., None])
        out = batch.take(rep)
        return replace(out, features=x.to(batch.features.dtype), sizes=size[..., 0].to(batch.sizes.dtype),
                       source=merge_source(merge, x, batch.source))

    @staticmethod
    def plan(keys: Tensor, r: int, has_cls: bool) -> tuple[Callable, Tensor]:
        """The merge over the patches and, per output token, the patch it sits at [B, N − r]."""
        b, n = keys.shape[:2]
        if has_cls:
            # a dummy protected row in front reproduces the ViT's split with the CLS at index 0
            lead = torch.ones_like(keys[:, :1])
            merge_all, _ = bipartite_soft_matching(torch.cat([lead, keys], 1), r, class_token=True)

            def merge(x: Tensor, mode: str = "mean") -> Tensor:
                return merge_all(torch.cat([torch.zeros_like(x[:, :1]), x], 1), mode)[:, 1:]
        else:
            merge, _ = bipartite_soft_matching(keys, r)
        # A tokens are shifted below zero, so under amax each B token keeps its own index
        index = torch.arange(n, device=keys.device)
        in_a = (index + int(has_cls)) % 2 == 0
        shifted = torch.where(in_a, index - n, index).to(keys.dtype).expand(b, n)[..., None]
        kept = merge(shifted, mode="amax")[..., 0].long()
        return merge, torch.where(kept < 0, kept + n, kept)
