"""``rdo``: rate-distortion-optimised token selection, with rate control, the encoder decision of a codec.

An encoder keeps a coding option when its distortion saving beats λ times its rate,
J = D + λ·R. Here each token i has a value vᵢ (the distortion its removal would add, by proxy) and
a cost cᵢ = 1 token (pre-LLM every token costs the same; an in-LLM placement would weigh it by its
FLOPs share); token i is kept when vᵢ ≥ λ·cᵢ. Proxies (``value``):

- ``"cls-attention"`` (default): the CLS row of the attention at the compression layer (what the
  classifier's CLS reads from each token; encoders without CLS: the mean attention received).
- ``"norm"``: the feature L2 norm (the token-norm baseline's score).

**Rate control** (``rate_control``), as a video encoder's:

- ``"cbr"`` (default): every image gets exactly K = budget tokens. The λ that meets K exactly is any
  value between the K-th and (K+1)-th largest vᵢ (the limit of a bisection on λ); keeping the top-K
  is that decision, so CBR is selection at a per-image constant rate.
- ``"vbr"``: one λ for the whole data set, so each image keeps the tokens worth their cost, a
  flat image few and a busy one many, at a given **average** count. λ per budget comes from
  calibration on a tuning split (:func:`calibrate_lambdas`: the pooled values' quantile that meets
  the average, ``scripts/calibrate_rdo.py``), passed as ``ratios`` and ``lambdas``; the report split
  is then run with those λ. At least one token is always kept.

The kept tokens are returned in raster order; ``batch.context["rdo_lambda"]`` holds the λ used.
A batch of several images under VBR comes back padded (a mask), since counts differ.

Host syncs: none under CBR; under VBR one, the read of the per-image counts that sizes the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.compress.visionzip import guiding_attention
from tokencodec.tokens.signals import Signal
from tokencodec.tokens.transfer import to_host


def token_values(batch: TokenBatch, value: str) -> Tensor:
    """[B, N] the distortion proxy of each token (module docstring)."""
    if value == "norm":
        return batch.features.float().norm(dim=-1)
    return guiding_attention(batch, "rdo")


def cbr_lambda(values: Tensor, k: int) -> Tensor:
    """[B] the λ between the k-th and (k+1)-th largest value of each row: the exact-rate Lagrangian."""
    top = values.sort(dim=1, descending=True).values
    kth = top[:, k - 1]
    return kth if k >= top.shape[1] else (kth + top[:, k]) / 2


def calibrate_lambdas(values: Sequence[Tensor], ratios: Sequence[float]) -> tuple[float, ...]:
    """One λ per average keep ratio over a data set: the pooled values' quantile keeping ratio·ΣNᵢ tokens.

    ``values``: one [N] (or [1, N]) tensor per image of the tuning split.
    """
    pooled = torch.cat([v.reshape(-1).float() for v in values]).sort(descending=True).values
    total = pooled.numel()
    out = []
    for r in ratios:
        if not 0 < r <= 1:
            raise BudgetError(f"keep ratio {r!r} outside the allowed range (0, 1]")
        m = max(1, round(r * total))
        out.append(float(pooled[m - 1]) if m >= total else float((pooled[m - 1] + pooled[m]) / 2))
    return tuple(out)


def keep_above(batch: TokenBatch, values: Tensor, lam: Tensor) -> TokenBatch:
    """Per image the tokens with value ≥ λ (at least the best one), raster order; padded when counts differ."""
    keep = (values >= lam[:, None]).scatter_(1, values.argmax(1, keepdim=True), True)
    return take_kept(batch, keep)


def take_kept(batch: TokenBatch, keep: Tensor, count: int | None = None) -> TokenBatch:
    """The tokens where ``keep`` [B, N] is True, raster order; padded (a mask) when the counts differ.

    ``count``: the number kept in every row, when the caller knows it; otherwise the counts come from the
    data and one read (their smallest and largest) sizes the padding.
    """
    counts = keep.sum(1)
    if count is None:
        lo, hi = to_host(counts.min(), counts.max())
        width, uniform = int(hi), bool(lo == hi)
    else:
        width, uniform = count, True
    # kept slots first in raster order, then the others (masked): a stable sort on "not kept"
    order = (~keep).to(torch.int8).argsort(dim=1, stable=True)[:, :width]
    out = batch.take(order)
    mask = torch.arange(width, device=keep.device)[None] < counts[:, None]
    return replace(out, mask=None if uniform else mask)


@dataclass(frozen=True)
class RDOOptions(MethodOptions):
    value: Literal["cls-attention", "norm"] = "cls-attention"   # the distortion proxy of a token
    rate_control: Literal["cbr", "vbr"] = "cbr"                  # K per image, or one λ for the data set
    ratios: tuple[float, ...] = ()                               # vbr: the average keep ratios calibrated…
    lambdas: tuple[float, ...] = ()                              # …and their λ (calibrate_lambdas)


@register_method("rdo")
class RDO(TokenMethod):
    """Keep a token when its value beats λ times its cost; CBR (exact K per image) or VBR (one λ) rate control."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = (Signal.CLS_ATTENTION,)
    needs_cls = True
    cls_fallback = "reads 'mean_attention' (the attention each token receives) where there is no CLS"
    paper = "tokencodec (coding → tokens): the Lagrangian mode decision and rate control of video encoders"
    Options = RDOOptions

    def __init__(self, seed: int = 0, **options):
        super().__init__(seed, **options)
        o = self.options
        if o.value == "norm":
            self.needs, self.needs_cls = (), False
        if o.rate_control == "vbr" and (not o.ratios or len(o.ratios) != len(o.lambdas)):
            raise ValueError("rdo rate_control='vbr' needs ratios and lambdas of the same length (one λ per "
                             "average keep ratio, from calibrate_lambdas on a tuning split)")

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        values = token_values(batch, self.options.value)
        n = batch.num_tokens
        if self.options.rate_control == "vbr":
            table = {1.0: float("-inf"), **dict(zip(self.options.ratios, self.options.lambdas, strict=True))}
            if budget.ratio is None or budget.ratio not in table:
                known = sorted(table, reverse=True)
                raise BudgetError(f"rdo (vbr) has λ for average keep ratios {known}; got {budget} "
                                  "(calibrate that ratio first)")
            lam = torch.full((batch.batch_size,), table[budget.ratio], device=values.device)
            out = keep_above(batch, values, lam)         # λ = −∞ at ratio 1: every token
        else:
            k = budget.tokens(n)
            lam = cbr_lambda(values, k)
            out = batch.take(values.argsort(dim=1, descending=True, stable=True)[:, :k].sort(dim=1).values)
        return replace(out, context={**out.context, "rdo_lambda": lam})


__all__ = ["RDO", "calibrate_lambdas", "cbr_lambda", "keep_above", "take_kept", "token_values"]
