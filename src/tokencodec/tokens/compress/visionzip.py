"""VisionZip: dominant tokens by CLS attention plus contextual tokens merged by key similarity.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025,
arXiv 2412.04467; official code dvlab-research/VisionZip (``visionzip/utils.py``), which we follow:

1. Dominant: the top-D patches by the CLS row of layer 22's attention summed over heads (signal
   ``cls_attention`` [B, N]), kept in raster order. Ties go to the lower index (stable sort).
2. Contextual: the other R = N − D patches in raster order; targets are the patches at slots
   0, s, 2s, … with s = max(1, ⌊R/C⌋), the first C of them. Every other patch is assigned to the
   target with the highest cosine between L2-normalised keys (signal ``keys`` [B, N, Dk]).
3. Each contextual token = target feature + mean of its assignees' features (the official code adds
   the target on top; the paper's "merge" wording suggests an average: ``merge="mean"`` gives the
   size-weighted mean of target and assignees instead). A target with no assignee stays as it is.
4. Output order: [dominant (raster), contextual (raster order of their targets)], as the official
   code emits after the CLS.

Choices the card leaves open:

- **Budget split.** K tokens = D dominant + C contextual with C = round(K·10/64) (``contextual_ratio``):
  64 = 54+10, 128 = 108+20, 192 = 162+30, the paper's LLaVA-1.5 presets.
- **CLS.** The official LLaVA-1.5 code sends the layer-22 CLS into the LLM as the first of the D
  dominant tokens (64 = CLS + 53 + 10). ``count_cls=True`` (default) reproduces that: with
  ``batch.cls`` present, D−1 dominant patches are kept and the method declares ``sends_cls``, so the
  LLaVA adapter projects ``batch.cls`` and puts it first in the image span (the returned batch holds
  the K−1 patch tokens; the CLS stays in ``batch.cls``). ``count_cls=False`` gives K patch tokens and
  no CLS (LightCompress's LLaVA-HF behaviour: 54+10 gives 64 patch tokens). Without a CLS (SigLIP)
  both are the same.
- **Layout in the LLM.** Officially the shortened sequence gets contiguous position ids and the
  order [CLS, dominant (raster), contextual]: ``positions = "renumber"`` (the adapter's
  ``positions="original"`` gives the older layout: representative-sorted span, RoPE gaps).
- **Bookkeeping.** A contextual token's source is its target plus all assignees, its size their summed
  size, and its position and per-token signals are its target's.
- **No CLS.** Without ``cls_attention`` we rank by ``mean_attention`` (the mean attention each token
  receives, as EffiVLM-Bench does for SigLIP); with neither signal we raise.
- **Full budget.** ``Budget(ratio=1.0)`` is not the identity: K = N tokens are the CLS, D−1 dominant
  patches and C contextual tokens (LLaVA-1.5: 1 + 485 + 90, one of the 91 other patches merged into its
  target), sent in the official order. The official code at dominant + contextual = N does the same, and
  has no setting that sends the N patches unchanged (contextual = 0 divides by zero).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.signals import Signal


def guiding_attention(batch: TokenBatch, method: str, signal: str = "cls_attention") -> Tensor:
    """CLS attention [B, N] (signal ``signal``), or the mean attention each token receives when there is no CLS."""
    for name in (signal, "mean_attention"):
        if name in batch.signals:
            return batch.signals[name].float()
    raise ValueError(f"{method} needs signal {signal!r} (or 'mean_attention' for encoders without "
                     f"a CLS token); the batch has {sorted(batch.signals)}")


def top_indices(score: Tensor, k: int) -> Tensor:
    """The k highest-scoring indices per row, highest first, ties to the lower index."""
    return score.argsort(dim=1, descending=True, stable=True)[:, :k]


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[b, index[b, j]] for [B, N, C] x and [B, M] index."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def visionzip_plan(attention: Tensor, keys: Tensor, n_dominant: int, n_contextual: int):
    """Dominant [B, D] (raster), targets [B, C], the other patches [B, M] and their target slot [B, M]."""
    b, n = attention.shape
    dominant = top_indices(attention, n_dominant).sort(1).values
    is_dom = torch.zeros(b, n, dtype=torch.bool, device=attention.device).scatter(1, dominant, True)
    rest = is_dom.to(torch.uint8).argsort(dim=1, stable=True)[:, : n - n_dominant]  # raster order
    r = n - n_dominant
    slots = torch.arange(r, device=attention.device)
    stride = max(1, r // max(n_contextual, 1))
    is_target = (slots % stride == 0) & (slots // stride < n_contextual)
    # the slots split by position alone, so the counts are known on the host: a stable sort puts the other
    # slots first, then the targets, each in raster order (a boolean index would read the mask on the host)
    n_targets = min(n_contextual, -(-r // stride))
    split = is_target.to(torch.uint8).argsort(stable=True)
    targets, others = rest[:, split[r - n_targets:]], rest[:, split[: r - n_targets]]
    if n_contextual == 0:  # nothing to merge into: the other patches are dropped
        return dominant, targets, others[:, :0], others[:, :0]
    k = F.normalize(keys.float(), dim=-1)
    assign = (gather_rows(k, others) @ gather_rows(k, targets).transpose(1, 2)).argmax(-1)
    return dominant, targets, others, assign


def visionzip_weights(n: int, dominant: Tensor, targets: Tensor, others: Tensor, assign: Tensor,
                      sizes: Tensor, merge: str = "add") -> Tensor:
    """[B, D+C, N] weights: dominant rows copy their patch; contextual rows merge target and assignees."""
    b, n_dom, n_ctx = dominant.shape[0], dominant.shape[1], targets.shape[1]
    dev = dominant.device
    weights = torch.zeros(b, n_dom + n_ctx, n, device=dev)
    weights[:, :n_dom].scatter_(2, dominant[..., None], 1.0)
    if merge == "add":  # official: target + mean of its assignees
        weights[:, n_dom:].scatter_(2, targets[..., None], 1.0)
        count = torch.zeros(b, n_ctx, device=dev).scatter_add_(1, assign, torch.ones(assign.shape, device=dev))
        w_other = 1 / count.gather(1, assign)
    else:  # size-weighted mean of the target and its assignees
        s_other, s_target = sizes.gather(1, others), sizes.gather(1, targets)
        total = s_target.scatter_add(1, assign, s_other)
        weights[:, n_dom:].scatter_(2, targets[..., None], (s_target / total)[..., None])
        w_other = s_other / total.gather(1, assign)
    # each assignee lands in its target's row: flat index row·N + column
    weights.view(b, -1).scatter_add_(1, (n_dom + assign) * n + others, w_other)
    return weights


def split_budget(k: int, contextual_ratio: float = 10 / 64, cls_counted: bool = False) -> tuple[int, int]:
    """(dominant patches, contextual tokens) for a budget of k."""
    c = round(k * contextual_ratio)
    return k - c - int(cls_counted), c


@dataclass(frozen=True)
class VisionZipOptions(MethodOptions):
    contextual_ratio: float = 10 / 64       # contextual share of the budget (the paper's 10 of 64)
    count_cls: bool = True                  # K counts the CLS the official LLaVA code sends to the LLM
    merge: Literal["add", "mean"] = "add"   # "add": official target + mean; "mean": size-weighted mean


@register_method("visionzip")
class VisionZip(TokenMethod):
    """Dominant + contextual tokens (Yang et al., CVPR 2025, arXiv 2412.04467).

    Options: ``contextual_ratio`` (10/64), ``count_cls`` (True, official), ``merge`` ("add" official, or
    "mean"). See the module docstring for every choice.
    """

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = (Signal.CLS_ATTENTION, Signal.KEYS)
    needs_cls = True
    cls_fallback = ("ranks dominant tokens by signal 'mean_attention' (mean attention each token receives, "
                    "as EffiVLM-Bench does for SigLIP) instead of 'cls_attention'")
    paper = "VisionZip (Yang et al., CVPR 2025), arXiv 2412.04467"
    Options = VisionZipOptions
    positions = "renumber"          # official LLaVA: contiguous ids, [CLS, dominant, contextual] as emitted

    @property
    def sends_cls(self) -> bool:    # the adapter sends batch.cls (projected) first when there is one
        return self.options.count_cls

    def grid_tokens(self, budget: Budget, n: int, cls: bool) -> int:
        """Official LLaVA-NeXT (``restore_image_features_sorted``): a crop's dominant patches go back onto the
        stitched grid; its CLS and contextual tokens are appended after every crop's dominant ones."""
        cls_counted = self.options.count_cls and cls
        return split_budget(budget.tokens(n, minimum=1 + int(cls_counted)), self.options.contextual_ratio,
                            cls_counted)[0]

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        attention = guiding_attention(batch, "visionzip")
        if "keys" not in batch.signals:
            raise ValueError(f"visionzip needs signal 'keys'; the batch has {sorted(batch.signals)}")
        cls_counted = self.options.count_cls and batch.cls is not None
        n = batch.num_tokens
        k = budget.tokens(n, minimum=1 + int(cls_counted))
        n_dom, n_ctx = split_budget(k, self.options.contextual_ratio, cls_counted)
        dominant, targets, others, assign = visionzip_plan(attention, batch.signals["keys"], n_dom, n_ctx)
        weights = visionzip_weights(n, dominant, targets, others, assign, batch.sizes.float(), self.options.merge)
        rep = torch.cat([dominant, targets], 1)  # contextual tokens sit at their targets
        return batch.combine(weights, weights > 0, rep)
