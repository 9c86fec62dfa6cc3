"""LLaVA-PruMerge ("prumerge") and PruMerge+ ("prumerge+"): outlier tokens plus key-similarity merging.

Shang et al., "LLaVA-PruMerge: Adaptive Token Reduction for Efficient Large Multimodal Models",
ICCV 2025, arXiv 2403.15388; official code 42Shawn/LLaVA-PruMerge (``clip_encoder.py``). Steps, as in
the official code:

0. Signals. The official attention is ONE full-width head of the last CLIP layer,
   softmax(q·kᵀ/√D) with D = 1024, CLS row over the patches, not renormalised (it sums to
   1 − a_CLS,CLS): signal ``cls_attention_single_head`` (``attention="single-head"``, default). The
   neighbours are found with that layer's full-width keys, signal ``keys_full`` [B, N, D]
   (``keys="full"``, default). The adapter reads both from the last layer (``signal_layer = -1``)
   and merges the layer −2 features.
1. Selection. PruMerge keeps the outliers of the CLS attention by the IQR rule, a > Q3 + 1.5·IQR
   (linear-interpolated quartiles, as ``np.percentile``), in attention-descending order. PruMerge+
   adds 1-D raster samples by the official HEAD rule (42Shawn/LLaVA-PruMerge 5632f5a,
   ``clip_encoder.py:209-214``) ``arange(0, N, max(1, ⌊step/3⌋))`` with step = ⌊N/k⌋, skipping kept
   ones, appended after them in raster order.
2. Merge. Each kept token i takes its 32 most key-similar other tokens j (cosine of L2-normalised
   keys; kept and pruned alike; never itself) and becomes x_i + Σ_j a_j·x_j with the
   attentions a unnormalised, as in the official code (its division is commented out;
   ``normalize_merge=True`` divides by Σ_j a_j).
3. Extra token: Σ over pruned tokens of a_j·x_j, appended after the kept tokens.

Choices the card leaves open, and deviations:

- **Budget.** By default the budget is a fixed count, as fixed-budget benchmarks run PruMerge: K
  tokens in all, the extra token included, so K−1 are selected by top-K−1 attention. PruMerge+
  then takes round((K−1)/4) (at least 1) by attention, the 1:3 split the official stride ⌊step/3⌋
  implies, and fills the rest with samples evenly spaced over the remaining patches in raster order
  (the official 1-D stride, fitted to an exact count). With ``adaptive=True`` the IQR rule sets the
  count per image (at least 1) and the budget only caps it: at most K tokens, extra included
  (``Budget(ratio=1.0)`` gives the pure paper rule; PruMerge+ samples past the cap are dropped from
  the raster end). Images then keep different counts: the batch is padded and ``mask`` set. The
  official code (HEAD) runs PruMerge+ adaptive: ``adaptive=True``.
- **Official pitfalls fixed (explicit).** The IQR count is used directly (not ⌊N·count/N⌋ in
  floating point; the two agree for every count on N = 576). The PruMerge+ stride is at least 1:
  the official stride is 0 when the ratio exceeds 1/3, where ``torch.arange`` raises, so this only
  covers cases the official code cannot run. Samples run to N−1 inclusive, where the official
  ``arange(0, 575, s)`` stops at 574: the two differ only when s divides N−1 (on N = 576, s ∈ {1, 5,
  23, 25, 115}, e.g. s = 5 for 34–38 outliers), by one extra sample, the last patch.
- **Order.** ``order="attention"`` (default, official): kept tokens in attention-descending order,
  then the PruMerge+ samples in raster order, then the extra token. ``order="raster"`` sorts the kept
  tokens by patch instead (the extra token stays last). The adapter keeps this order in the LLM
  (``positions = "renumber"``: contiguous position ids, as the official LLaVA code).
- **Attention scale.** ``normalize_attention=False`` (default, official) merges with the raw
  single-head weights; ``True`` rescales each image's patch attentions to sum to 1 (the older
  default, which makes the merge weights independent of the head convention). ``attention="head-sum"``
  reads ``cls_attention`` (16 per-head softmaxes with 1/√d_head, summed) and ``keys="head-mean"``
  the head-averaged keys ``keys`` [B, N, D/H]: the older defaults. The IQR rule does not depend on scale.
- **Bookkeeping.** A merged token's source is itself plus its 32 neighbours; the extra token's is
  every pruned patch. Neighbourhoods overlap, so a patch may feed several tokens and sizes (the summed
  size of each token's sources) add up to at least N when the extra token is kept. The extra token's
  position and per-token signals are those of the pruned patch with the largest attention.
- **No CLS.** There is no official fallback; like VisionZip we then read ``mean_attention``.
- **Full budget.** ``Budget(ratio=1.0)`` is not the identity: N−1 tokens are kept, each still merging
  its 32 key-nearest neighbours, and the one pruned patch makes the extra token. The official code
  at reduction ratio 1 merges too (and appends an all-zero extra token); PruMerge+'s official stride is
  0 there, which ``torch.arange`` refuses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.compress.visionzip import gather_rows, guiding_attention, top_indices
from tokencodec.tokens.signals import Signal
from tokencodec.tokens.transfer import to_host


def iqr_outliers(attention: Tensor) -> Tensor:
    """Per image, how many attentions exceed Q3 + 1.5·IQR, [B] long."""
    quartiles = torch.linspace(0.25, 0.75, 2, device=attention.device)     # built on the device: no copy
    q1, q3 = torch.quantile(attention.float(), quartiles, dim=1)
    return (attention > (q3 + 1.5 * (q3 - q1))[:, None]).sum(1)


def stride_samples(n: int, k: int) -> Tensor:
    """PruMerge+'s 1-D spatial samples for k outliers out of n: the official HEAD rule
    ``arange(0, n−1, ⌊step/3⌋)``, step = ⌊n/k⌋, with the stride at least 1 and n−1 included."""
    step = n // k
    return torch.arange(0, n, max(1, step // 3))


def fixed_selection(attention: Tensor, s: int, plus: bool) -> Tensor:
    """[B, s] kept indices for a fixed count: top attention, or PruMerge+'s top quarter plus samples."""
    n_top = max(1, round(s / 4)) if plus else s
    top = top_indices(attention, n_top)
    if n_top == s:
        return top
    b, n = attention.shape
    is_top = torch.zeros(b, n, dtype=torch.bool, device=attention.device).scatter(1, top, True)
    rest = is_top.to(torch.uint8).argsort(dim=1, stable=True)[:, : n - n_top]  # raster order
    m, r = s - n_top, n - n_top
    spots = ((torch.arange(m, device=attention.device) + 0.5) * r / m).long()  # evenly spaced
    return torch.cat([top, rest[:, spots]], 1)


def adaptive_selection(attention: Tensor, cap: int, plus: bool) -> tuple[Tensor, Tensor, bool]:
    """Per-image IQR selections, padded: indices [B, S], validity [B, S], and whether every image kept
    the same count. The counts come from the data: reading their widest (one host sync) sizes the padding.

    Each image keeps k = clamp(outliers, 1, cap) tokens by attention (descending) and, for PruMerge+, then
    the stride samples (official: ``arange(0, n, max(1, ⌊⌊n/k⌋/3⌋))``) it did not keep, in raster order,
    at most ``cap`` in all. All images are ranked at once by a sort key: attention rank for the top k,
    n + patch for a sample, 3n for the rest.
    """
    b, n = attention.shape
    dev = attention.device
    k = iqr_outliers(attention).clamp(1, cap)                                  # [B]
    rank = top_indices(attention, n).argsort(dim=1)                            # each patch's attention rank
    is_top = rank < k[:, None]
    key = torch.where(is_top, rank, 3 * n)
    if plus:
        stride = ((n // k) // 3).clamp_min(1)                                  # [B]
        patch = torch.arange(n, device=dev)
        sample = (patch % stride[:, None] == 0) & ~is_top
        key = torch.where(sample, n + patch, key)
    count = (key < 3 * n).sum(1).clamp_max(cap)
    lo, hi = to_host(count.min(), count.max())                                  # the one read
    width = int(hi)
    index = key.argsort(dim=1, stable=True)[:, :width]
    valid = torch.arange(width, device=dev) < count[:, None]
    return torch.where(valid, index, 0), valid, bool(lo == hi)


def merge_plan(attention: Tensor, keys: Tensor, kept: Tensor, valid: Tensor, neighbours: int = 32,
               normalize: bool = False, extra: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Weights [B, R, N], members [B, R, N], representative [B, R] and validity [B, R] of the output.

    Rows are the kept tokens (each plus its key-nearest neighbours) and, with ``extra``, the
    attention-weighted sum of the pruned tokens; each image's real rows come first.
    """
    b, n = attention.shape
    k = F.normalize(keys.float(), dim=-1)
    sim = gather_rows(k, kept) @ k.transpose(1, 2)
    sim.scatter_(2, kept[..., None], float("-inf"))  # a token is not its own neighbour
    nbr = sim.argsort(dim=2, descending=True, stable=True)[..., : min(neighbours, n - 1)]
    w = attention.gather(1, nbr.flatten(1)).view(nbr.shape)
    if normalize:
        w = w / w.sum(-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    own = kept[..., None]
    weights = torch.zeros(*kept.shape, n, device=kept.device).scatter_(2, nbr, w).scatter_(2, own, 1.0)
    members = torch.zeros_like(weights, dtype=torch.bool).scatter_(2, nbr, True).scatter_(2, own, True)
    weights, members = weights * valid[..., None], members & valid[..., None]
    rep = kept
    if extra:
        is_kept = torch.zeros(b, n + 1, dtype=torch.bool, device=kept.device)
        pruned = ~is_kept.scatter_(1, torch.where(valid, kept, n), True)[:, :n]
        weights = torch.cat([weights, (attention * pruned)[:, None]], 1)
        members = torch.cat([members, pruned[:, None]], 1)
        rep = torch.cat([rep, attention.masked_fill(~pruned, float("-inf")).argmax(1, keepdim=True)], 1)
        valid = torch.cat([valid, pruned.any(1, keepdim=True)], 1)
        # move each image's extra row right after its real rows, padding last
        order = (~valid).to(torch.uint8).argsort(dim=1, stable=True)
        weights, members = gather_rows(weights, order), gather_rows(members, order)
        rep, valid = rep.gather(1, order), valid.gather(1, order)
    return weights, members, rep, valid


@dataclass(frozen=True)
class PruMergeOptions(MethodOptions):
    adaptive: bool = False                          # the IQR rule sets the count (official); the budget caps it
    order: Literal["raster", "attention"] = "attention"  # "attention": the official output order
    neighbours: int = 32                            # key-nearest tokens merged into each kept one
    extra_token: bool = True                        # append the attention-weighted sum of the pruned
    normalize_merge: bool = False                   # divide merge weights by their sum (official: no)
    normalize_attention: bool = False               # rescale attentions to sum to 1 per image (official: no)
    attention: Literal["single-head", "head-sum"] = "single-head"  # official: one full-width head
    keys: Literal["full", "head-mean"] = "full"     # neighbours by full-width keys (official) or head-mean


@register_method("prumerge")
class PruMerge(TokenMethod):
    """IQR outlier tokens plus key-similarity merging (Shang et al., ICCV 2025, arXiv 2403.15388).

    Options: ``adaptive`` (False), ``order`` ("attention" or "raster"), ``neighbours`` (32),
    ``extra_token`` (True), ``normalize_merge`` (False), ``normalize_attention`` (False),
    ``attention`` ("single-head" or "head-sum"), ``keys`` ("full" or "head-mean"). See the module
    docstring for every choice.
    """

    plus: ClassVar[bool] = False
    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = (Signal.CLS_ATTENTION_SINGLE_HEAD, Signal.KEYS_FULL)   # the defaults; an instance reads its options
    needs_cls = True
    cls_fallback = ("no official fallback; reads signal 'mean_attention' (mean attention each token "
                    "receives) instead of the CLS attention, as VisionZip's and VisPruner's authors advise")
    paper = "LLaVA-PruMerge (Shang et al., ICCV 2025), arXiv 2403.15388"
    Options = PruMergeOptions
    positions = "renumber"      # official LLaVA: contiguous ids, the method's output order
    signal_layer = -1           # official: q/k of the last CLIP layer (features from layer −2)

    def grid_tokens(self, budget: Budget, n: int, cls: bool) -> int:
        # no official LLaVA-NeXT code: each crop keeps its LLaVA-1.5 layout (the method's order), crop after crop
        return 0

    def __init__(self, seed: int = 0, **options):
        super().__init__(seed, **options)
        attention = {"single-head": Signal.CLS_ATTENTION_SINGLE_HEAD, "head-sum": Signal.CLS_ATTENTION}
        keys = Signal.KEYS_FULL if self.options.keys == "full" else Signal.KEYS
        self.needs = (attention[self.options.attention], keys)

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        attention = guiding_attention(batch, self.name, self.needs[0])
        key_signal = self.needs[1]
        if key_signal not in batch.signals:
            raise ValueError(f"{self.name} needs signal {key_signal!r}; the batch has {sorted(batch.signals)}")
        opt = self.options
        extra = opt.extra_token
        n = batch.num_tokens
        cap = budget.tokens(n, minimum=1 + extra) - extra
        if opt.adaptive:
            kept, valid, uniform = adaptive_selection(attention, cap, self.plus)
        else:
            kept = fixed_selection(attention, cap, self.plus)
            valid, uniform = torch.ones_like(kept, dtype=torch.bool), True
        if opt.order == "raster":
            kept = torch.where(valid, kept, n).sort(1).values.clamp_max(n - 1)  # padding stays last

        if opt.normalize_attention:
            attention = attention / attention.sum(1, keepdim=True).clamp_min(1e-30)
        weights, members, rep, valid = merge_plan(attention, batch.signals[key_signal], kept, valid,
                                                  opt.neighbours, opt.normalize_merge, extra)
        out = batch.combine(weights, members, rep)
        # every row is real when all images kept one count: the extra token always has a pruned patch, since
        # the budget keeps at most N − 1 with it (so no read of ``valid`` is needed)
        if uniform:
            return out
        # adaptive counts: padded slots carry nothing (see TokenBatch's docstring)
        signals = {name: value.masked_fill(~valid.reshape(*valid.shape, *[1] * (value.dim() - 2)), 0)
                   if out.is_per_token(name) else value for name, value in out.signals.items()}
        return replace(out, positions=out.positions.masked_fill(~valid, -1), mask=valid, signals=signals)


@register_method("prumerge+")
class PruMergePlus(PruMerge):
    """PruMerge+: PruMerge's outliers plus 1-D raster samples, then the same merge (arXiv 2403.15388)."""

    plus = True
    paper = "LLaVA-PruMerge+ (Shang et al., ICCV 2025), arXiv 2403.15388"
