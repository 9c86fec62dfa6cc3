"""PyramidDrop: drop image tokens stage by stage inside the LLM (Xing et al., CVPR 2025;
arXiv 2410.17247).

One call is one stage: keep the top-K current image tokens by signal ``text_attention`` [B, N],
sorted back to raster order. The adapter computes that signal as the official ``pdrop_rank_drop``
does: the last instruction token's query against all keys, both from the **next** layer's
q_proj/k_proj on its ``input_layernorm`` output, with RoPE and the causal mask, softmax over all
keys, mean over heads, then the image-span columns.

Choices the card leaves open:

- **Layers.** ``layers=(8, 16, 24)`` are 0-indexed: the stage runs before layer 8 (after the
  eighth layer counting from 1) and scores with layer 8's projections, as the official
  ``layer_list`` does. ``ratios=(0.5, 0.25, 0.125)`` are relative to the original image count;
  :func:`stage_budgets` turns them into counts with ``int()`` as the code does (576 → 288/144/72).
  The LLaVA adapter derives the stage ratios from the budget (λ, λ², λ³ with λ = K/N; λ = 0.5 is the
  default above) unless it is given explicit counts (``stage_keep``).
- **Positions.** The official code resets ``position_ids`` to 0…len−1; kept tokens here carry
  their original raster positions, and ``positions="renumber"`` (default, the code) or
  ``"original"`` tells the adapter which position ids to feed the LLM.
- **Ties.** Broken toward the lower index (stable sort).
- **Padding.** As in FastV: padded slots rank last.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import (
    Budget,
    BudgetError,
    LLMStage,
    MethodOptions,
    OptionAttribute,
    ScoreMethod,
    register_method,
)
from tokencodec.tokens.signals import Signal


def stage_budgets(n: int, ratios: Sequence[float]) -> list[int]:
    """Image tokens kept after each stage, ⌊n·λ⌋ per ratio (relative to the original count n), and at
    least one: on short token sequences a late stage's ⌊n·λ⌋ would otherwise reach 0."""
    if any(not 0 < lam <= 1 for lam in ratios) or list(ratios) != sorted(ratios, reverse=True):
        raise BudgetError(f"stage ratios {tuple(ratios)} must be non-increasing and in the allowed range (0, 1]")
    return [max(1, int(n * lam)) for lam in ratios]


def pyramiddrop_keeps(budget: Budget, n: int, stages: int) -> tuple[int, ...]:
    """Stage s (from 0) keeps ⌊n·λ^(s+1)⌋ with λ = K/n (λ = 0.5 reproduces the official 0.5/0.25/0.125),
    and at least one token: on short token sequences at small λ the geometric schedule would reach 0."""
    lam = budget.tokens(n) / n
    return tuple(stage_budgets(n, [lam ** (s + 1) for s in range(stages)]))


@dataclass(frozen=True)
class PyramidDropOptions(MethodOptions):
    layers: tuple[int, ...] = (8, 16, 24)                        # 0-indexed: prune before these layers
    ratios: tuple[float, ...] = (0.5, 0.25, 0.125)               # kept share of the original count
    positions: Literal["renumber", "original"] = "renumber"      # position ids the adapter feeds the LLM

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.ratios):
            raise ValueError(f"PyramidDrop needs one ratio per layer; got {len(self.layers)} layers "
                             f"and {len(self.ratios)} ratios")


@register_method("pyramiddrop")
class PyramidDrop(ScoreMethod):
    """One PyramidDrop stage: keep the top-K image tokens by ``text_attention`` [B, N]."""

    stage = "llm"
    guidance = "text"
    needs = (Signal.TEXT_ATTENTION,)
    cls_fallback = "not needed: the score is the last instruction token's attention"
    paper = ("Xing et al., PyramidDrop: Accelerating Your Large Vision-Language Models via "
             "Pyramid Visual Redundancy Reduction, CVPR 2025, arXiv 2410.17247")
    Options = PyramidDropOptions

    # the official defaults on the class; an instance reads its options
    layers = OptionAttribute()
    ratios = OptionAttribute()
    positions = OptionAttribute()

    def plan(self, budget: Budget, n: int, depth: int, layers: tuple[int, ...] | None = None) -> tuple[LLMStage, ...]:
        """Prune before each layer l, scored with layer l's own q/k (the official "next layer")."""
        layers = tuple(layers or self.layers)
        return tuple(LLMStage(j, j, k) for j, k in zip(layers, pyramiddrop_keeps(budget, n, len(layers)), strict=True))

    def score(self, batch: TokenBatch) -> Tensor:
        self.check_signals(batch)
        return batch.signals["text_attention"]
