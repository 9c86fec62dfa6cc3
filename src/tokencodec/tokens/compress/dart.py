"""DART: keep the image tokens least duplicated by a few pivots, inside the LLM (Wen et al., "Stop
Looking for Important Tokens in Multimodal Language Models: Duplication Matters More", EMNLP
2025; arXiv 2502.11494).

Before LLM layer K=2, pivots are the top-P image tokens by the L1 norm of their layer-K−1 keys
(signal ``keys`` [B, N, Dk], heads concatenated) plus, when the adapter supplies them, the top-P
text tokens after the image (signals ``text_keys`` [B, M, Dk] and ``text_features`` [B, M, D]).
Each pivot in turn claims the remaining image tokens with the **lowest** cosine similarity to it;
the image pivots and every claimed token are kept, in raster order, with original positions.

Guidance is "vision": no attention to the text ranks the tokens, but text tokens can serve as
pivots (their keys and features, not their attention).

Choices the card leaves open:

- **Features.** Duplication is measured on layer K−1's output after the LLM's final RMSNorm. We
  read signal ``normed_features`` [B, N, D] when present, else ``batch.features`` (so the
  adapter either normalises the hidden states it puts there or supplies both);
  ``text_features`` must be normalised the same way.
- **Text pivots are optional.** Without ``text_keys`` and ``text_features`` only the image
  pivots are used (the official code always has the text ones).
- **Pivot order.** All pivots, image and text together, are visited by descending key L1 norm
  (ties: image first, then lower index). The official code iterates a Python ``set``, whose
  order is hash-determined; we deviate for determinism.
- **Exact budget.** The official count is P_img + 2P·⌊M/2P⌋ (132 for "128"), off by the image
  pivots. We keep exactly K: min(P, K) image pivots, and the K − P_img picks are split evenly
  over the pivots, the first (K − P_img) mod (#pivots) pivots in visiting order taking one more.
- **Ties** in cosine go to the lower index. Masked (padded) batches are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import (
    Budget,
    LLMSignal,
    MethodOptions,
    OptionAttribute,
    TokenMethod,
    register_method,
)
from tokencodec.tokens.signals import Signal


def _top_by_l1(keys: Tensor, p: int) -> tuple[Tensor, Tensor]:
    """Indices [B, p] of the p keys with the largest L1 norm, and those norms."""
    norms = keys.abs().sum(dim=-1)
    idx = norms.argsort(dim=1, descending=True, stable=True)[:, :p]
    return idx, norms.gather(1, idx)


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    return x.gather(1, idx[..., None].expand(-1, -1, x.shape[-1]))


def dart_select(features: Tensor, keys: Tensor, k: int, pivots: int = 4,
                text_keys: Tensor | None = None, text_features: Tensor | None = None) -> Tensor:
    """Indices [B, k] (raster order) of the image pivots and the tokens least similar to the pivots."""
    b, n, _ = features.shape
    img_idx, img_norm = _top_by_l1(keys, min(pivots, k))
    piv_feat, piv_norm = _gather(features, img_idx), img_norm
    if text_keys is not None and text_features is not None:
        txt_idx, txt_norm = _top_by_l1(text_keys, min(pivots, text_keys.shape[1]))
        piv_feat = torch.cat([piv_feat, _gather(text_features, txt_idx)], dim=1)
        piv_norm = torch.cat([piv_norm, txt_norm], dim=1)
    visit = piv_norm.argsort(dim=1, descending=True, stable=True)
    piv_feat = _gather(piv_feat, visit)
    cos = F.normalize(piv_feat, dim=-1) @ F.normalize(features, dim=-1).transpose(1, 2)   # [B, P, N]

    n_piv = piv_feat.shape[1]
    picks, extra = divmod(k - img_idx.shape[1], n_piv)
    taken = torch.zeros(b, n, dtype=torch.bool, device=features.device).scatter(1, img_idx, True)
    for j in range(n_piv):                  # a handful of pivots; each excludes what earlier ones took
        count = picks + (j < extra)
        if count:
            free = cos[:, j].masked_fill(taken, torch.inf)
            taken.scatter_(1, free.argsort(dim=1, stable=True)[:, :count], True)
    # exactly k taken per row: a stable sort puts them first, in raster order (a boolean index would read
    # the mask on the host)
    return (~taken).to(torch.uint8).argsort(dim=1, stable=True)[:, :k]


@dataclass(frozen=True)
class DARTOptions(MethodOptions):
    layer: int = 2      # K: prune before this LLM layer
    pivots: int = 4     # pivots per side (image, text)

    def __post_init__(self) -> None:
        if self.pivots < 1:
            raise ValueError(f"DART needs at least one pivot per side; got {self.pivots}")


@register_method("dart")
class DART(TokenMethod):
    """Duplication-aware pruning before LLM layer ``layer`` from key-norm pivots."""

    stage = "llm"
    guidance = "vision"
    needs = (Signal.KEYS,)                # optional: "normed_features", "text_keys", "text_features"
    cls_fallback = "not needed: pivots come from key norms"
    paper = ("Wen et al., Stop Looking for Important Tokens in Multimodal Language Models: "
             "Duplication Matters More, EMNLP 2025, arXiv 2502.11494")

    Options = DARTOptions
    layer = OptionAttribute()
    pivots = OptionAttribute()
    positions = "original"      # official: position_ids = keep_indexs
    # layer K−1's post-RoPE keys and final-norm features, for the image span and the text after it
    llm_signal = LLMSignal(query=None, keys=True, normed=True, text=True)

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_signals(batch)
        self.check_unpadded(batch)
        k = budget.tokens(batch.num_tokens)
        s, c = batch.signals, batch.context
        index = dart_select(s.get("normed_features", batch.features), s["keys"], k, self.pivots,
                            c.get("text_keys"), c.get("text_features"))
        return batch.take(index)
