"""VisPruner: important tokens by the encoder's CLS attention, then diverse ones by removing duplicates.

Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs", ICCV 2025, arXiv 2412.01818 v2; official code Theia-4869/VisPruner @ aefa01a
(``llava/model/llava_arch.py::encode_images``, after the loop fix of d7da3a3), which the defaults
reproduce:

1. Counts: K_imp = ⌊K·ρ⌋ important and K_div = K − K_imp diverse tokens (``important_ratio`` ρ,
   the official argparse default 0.5; the README's 64-token example uses 0.75 = 48 + 16).
2. Important: the K_imp highest patches of the CLS row of layer 22's attention over the patches
   (signal ``cls_attention``: summed over heads here, averaged officially: the same ranking).
   The rest stays in attention-descending order (the residual list).
3. Duplicates, while the residual list R is longer than K_div: r = min(8, |R| − K_div); split R into
   a = R[0::2] and b = R[1::2]; each a-token's score is its highest cosine to any b-token (features:
   layer 22's patch states, pre-projector, L2-normalised); the r a-tokens with the highest score are
   dropped; R ← [surviving a in descending score order, then every b]. The loop runs a fixed number
   of times for given N and K (48/56/64 for K = 192/128/64 at ρ = 0.5/0.5/0.75), so it never reads
   a value back.
4. The K kept indices sorted to raster order; the projector runs on all tokens and the LLM sees the
   kept ones contiguously (official ``features[mask]``: ``positions = "renumber"``). No CLS is sent.

Choices the card leaves open:

- **Ties** (attention or duplicate scores) go to the lower index / earlier list slot (stable sorts);
  the official ``argsort`` leaves them unspecified (CUDA's order).
- **Similarities** are computed once for all N tokens and gathered per iteration (the official code
  recomputes a @ bᵀ each iteration; the values are the same dot products, and the 50-odd matmuls
  would cost more than 1 % of the CLIP forward). ``compute_dtype="model"`` (default) normalises and
  rounds them in the features' dtype (fp16 on LLaVA, as the official fp16 matmul); ``"float32"``
  keeps float32.
- **Attention precision.** The adapter computes the CLS row in float32 from q/k; the official code
  reads CLIP's eager fp16 attention map, so near-ties can rank differently.
- **Views** (LLaVA-NeXT AnyRes, ``frames = F`` views in one row): the official code keeps K per view
  (README: 32×5 = 160), ``views="each"`` (default) does so with K/F per view; ``views="joint"``
  selects over all F·h·w tokens at once.
- **No CLS** (SigLIP): ``mean_attention`` (the attention each patch receives) replaces the CLS row.
  The official SigLIP branch averages the **last** layer's map over query rows, then heads; the
  adapter's ``signal_layer`` chooses the layer (default: the feature layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.compress.visionzip import guiding_attention
from tokencodec.tokens.frames import per_frame_budget
from tokencodec.tokens.signals import Signal

MAX_REMOVED = 8   # duplicates dropped per iteration, hard-coded in the official loop


def split_counts(k: int, important_ratio: float) -> tuple[int, int]:
    """(important, diverse) for a budget of k: ⌊k·ρ⌋ and the rest, as the official int()."""
    n_important = int(k * important_ratio)
    return n_important, k - n_important


def pairwise_cosines(features: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """[B, N, N] cosines, normalised and rounded in ``dtype`` (None: the features' own), accumulated in float32."""
    x = features if dtype is None else features.to(dtype)
    x = x / x.norm(dim=-1, keepdim=True)
    xf = x.float()
    return torch.matmul(xf, xf.transpose(1, 2)).to(x.dtype)


def remove_duplicates(similarity: Tensor, residual: Tensor, n_diverse: int) -> Tensor:
    """The official dedup loop on the residual list [B, R] (attention-descending): [B, n_diverse] survivors."""
    b, n = similarity.shape[:2]
    while n_diverse > 0:
        size = residual.shape[1]
        r = min(MAX_REMOVED, size - n_diverse)
        if r <= 0:
            break
        a, bb = residual[:, ::2], residual[:, 1::2]
        rows = similarity.gather(1, a[..., None].expand(-1, -1, n))                # [B, |a|, N]
        scores = rows.gather(2, bb[:, None, :].expand(-1, a.shape[1], -1)).amax(dim=-1)   # [B, |a|]
        distinct = scores.argsort(dim=-1, descending=True, stable=True)[:, r:]
        residual = torch.cat([a.gather(1, distinct), bb], dim=-1)
    return residual


def vispruner_select(attention: Tensor, features: Tensor, n_important: int, n_diverse: int,
                     dtype: torch.dtype | None = None) -> Tensor:
    """Indices [B, n_important + n_diverse] of the kept tokens, in raster order."""
    order = attention.float().argsort(dim=-1, descending=True, stable=True)
    important, residual = order[:, :n_important], order[:, n_important:]
    if n_diverse == 0:
        return important.sort(dim=1).values
    residual = remove_duplicates(pairwise_cosines(features, dtype), residual, n_diverse)
    return torch.cat([important, residual], dim=-1).sort(dim=1).values


@dataclass(frozen=True)
class VisPrunerOptions(MethodOptions):
    important_ratio: float = 0.5                              # official argparse default (README's 64: 0.75)
    views: Literal["each", "joint"] = "each"                  # frames = views: K/F per view (official NeXT)
    compute_dtype: Literal["model", "float32"] = "model"      # similarities in the features' dtype (official)

    def __post_init__(self) -> None:
        if not 0 <= self.important_ratio <= 1:
            raise ValueError(f"important_ratio={self.important_ratio!r} is outside the allowed range [0, 1]")


@register_method("vispruner")
class VisPruner(TokenMethod):
    """Important + diverse tokens from visual cues (Zhang et al., ICCV 2025, arXiv 2412.01818).

    Reads signal ``cls_attention`` (or ``mean_attention`` without a CLS) and the pre-projector
    features; see the module docstring for every choice.
    """

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = (Signal.CLS_ATTENTION,)
    needs_cls = True
    cls_fallback = ("ranks important tokens by signal 'mean_attention' (the attention each patch receives, "
                    "as the official SigLIP branch) instead of 'cls_attention'")
    paper = "VisPruner (Zhang et al., ICCV 2025), arXiv 2412.01818"
    Options = VisPrunerOptions
    positions = "renumber"      # official LLaVA: features[mask], contiguous ids, raster order
    features = "vision"         # official: layer-22 patch states, before the projector

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        attention = guiding_attention(batch, "vispruner")
        o = self.options
        views = batch.frames if o.views == "each" else 1
        b, n = batch.batch_size, batch.num_tokens // views
        k = (per_frame_budget(budget, views, n) if views > 1 else budget).tokens(n)
        n_important, n_diverse = split_counts(k, o.important_ratio)
        dtype = None if o.compute_dtype == "model" else torch.float32
        index = vispruner_select(attention.reshape(b * views, n), batch.features.reshape(b * views, n, -1),
                                 n_important, n_diverse, dtype)
        offset = (torch.arange(views, device=index.device) * n).repeat(b)[:, None]
        return batch.take((index + offset).reshape(b, -1))
