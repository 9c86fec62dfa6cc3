"""``scalable``: an embedded token order, as a scalable bitstream: every prefix is a valid compressed set.

A scalable (embedded) codec writes its bitstream so that any prefix decodes to a coarser picture:
JPEG 2000's quality layers, SPIHT's bit planes, SVC's layers. Here one encode ranks all N tokens
once (:func:`embedded_order`); the compressed set at any budget K is the first K of that order
(:func:`prefix`), returned in raster order, so K can be chosen after encoding, per receiver, at no
extra cost. Orders (``order``):

- ``"coarse-to-fine"`` (default): the tokens of a dyadic lattice first (stride 2ᴸ, then the new
  points of stride 2ᴸ⁻¹, … down to 1: SPIHT-like spatial refinement), each level ranked by
  attention (CLS attention; mean attention received without CLS), so a short prefix covers the
  whole image and a longer one adds the important detail.
- ``"priority"``: by attention alone (the RD priority of each token, like a quality-layer order);
  its prefixes equal attention top-K.

``coarse_levels`` sets how many lattice levels come before the attention order takes over
(default: every level).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.compress.visionzip import guiding_attention
from tokencodec.tokens.signals import Signal
from tokencodec.tokens.transfer import on_device


def lattice_level(h: int, w: int, levels: int | None = None) -> Tensor:
    """[h·w] the refinement level of each patch: 0 for the coarsest dyadic lattice, then 1, 2, …

    A patch (y, x) is on the lattice of stride s when s divides both; its level is L − log2 of the
    largest such s ≤ 2ᴸ, with 2ᴸ the largest power of two ≤ max(h, w)/2 (so level 0 has ≥ 2 points
    per axis where the grid allows). ``levels`` caps the count (deeper levels merge into the last).
    """
    top = max(0, (max(h, w) // 2).bit_length() - 1)
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    level = torch.full((h, w), top, dtype=torch.long)
    for j in range(top, -1, -1):                        # strides 1, 2, 4, …: coarser strides overwrite
        s = 2 ** (top - j)
        on = (y % s == 0) & (x % s == 0)
        level[on] = j
    level = level.reshape(-1)
    return level if levels is None else level.clamp_max(levels - 1)


@on_device
def lattice_levels_on(h: int, w: int, frames: int, levels: int | None) -> Tensor:
    """Every frame's :func:`lattice_level`, [frames·h·w], cached on the device (shapes only: no copy per call)."""
    return lattice_level(h, w, levels).repeat(frames)


def embedded_order(batch: TokenBatch, order: str = "coarse-to-fine", coarse_levels: int | None = None) -> Tensor:
    """[B, N] every token ranked once: the scalable encode."""
    score = guiding_attention(batch, "scalable")
    if order == "priority":
        return score.argsort(dim=1, descending=True, stable=True)
    (h, w), t = batch.grid, batch.frames
    level = lattice_levels_on(score.device, h, w, t, coarse_levels)
    # level first, attention within a level: a key that sorts by (level, −score)
    rank_in_level = score.argsort(dim=1, descending=True, stable=True).argsort(dim=1)
    key = level[None] * score.shape[1] + rank_in_level
    return key.argsort(dim=1, stable=True)


def prefix(batch: TokenBatch, order: Tensor, k: int) -> TokenBatch:
    """The first ``k`` tokens of an embedded order, in raster order."""
    return batch.take(order[:, :k].sort(dim=1).values)


@dataclass(frozen=True)
class ScalableOptions(MethodOptions):
    order: Literal["coarse-to-fine", "priority"] = "coarse-to-fine"
    coarse_levels: int | None = None        # lattice levels before attention alone ranks (None: all)


@register_method("scalable")
class Scalable(TokenMethod):
    """One embedded order per image; any budget is a prefix of it (module docstring)."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = (Signal.CLS_ATTENTION,)
    needs_cls = True
    cls_fallback = "reads 'mean_attention' (the attention each token receives) where there is no CLS"
    paper = "tokencodec (coding → tokens): embedded / scalable coding (SPIHT, JPEG 2000 layers) for tokens"
    Options = ScalableOptions

    def encode(self, batch: TokenBatch) -> Tensor:
        """The scalable encode: [B, N] order, computed once for every budget."""
        self.check_unpadded(batch)
        if batch.num_tokens != batch.num_original:
            raise ValueError("scalable needs the full token grid in raster order")
        return embedded_order(batch, self.options.order, self.options.coarse_levels)

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        return prefix(batch, self.encode(batch), budget.tokens(batch.num_tokens))


__all__ = ["Scalable", "embedded_order", "lattice_level", "prefix"]
