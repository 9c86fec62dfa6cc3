"""SparseVLM: text-guided pruning with token recycling inside the LLM (Zhang et al., ICML 2025;
arXiv 2410.04417).

The adapter picks the raters once with :func:`select_raters` on the layer-0 input embeddings,
then at each pruning layer supplies signal ``rater_attention`` [B, R, N] (that layer's
head-averaged attention probabilities, rater rows × image columns) or an already averaged
``text_attention`` [B, N]. One call is one pruning stage: keep the best-scored image tokens in
raster order, then recycle part of the deleted ones: the top ⌊0.3n⌋+1 of the n deleted tokens by
score are grouped by DPC-KNN into ⌊m/10⌋+1 clusters, each cluster becomes its plain mean, and
these tokens are appended after the kept ones.

Choices the card leaves open:

- **Schedule.** The v1.5 fixed lists (``RETAIN_TOKN``): the option ``layers=(2, 6, 15)`` and the
  class info ``schedule[192|128|96|64]`` = per-layer keep counts; the adapter passes one count per call. The
  v1 rank-based count is not implemented.
- **Budget and recycled tokens.** ``count_recycled=False`` (default) is the official behaviour: K
  kept by score plus the clusters on top (576 → 309 → 204 → 113 for "192", ≈204 instead of 192
  averaged, SparseVLM issue #33). With ``count_recycled=True`` the budget counts every output token,
  recycled clusters included, so a stage returns exactly K tokens (we keep fewer by score to make
  room). ``recycle=False`` turns recycling off.
- **Layout in the LLM.** Output order [kept tokens in sequence order, recycled clusters in centre
  order (δ·density descending)], as the official code inserts the merged block right after the kept
  visual tokens; with ``positions = "renumber"`` the adapter keeps that order and makes the position
  ids contiguous, as the official prefill does (its ``positions="original"`` sorts the span by
  representative and keeps RoPE gaps instead).
- **Raters.** Text tokens whose mean relevance is strictly above the mean; if none is (all
  equal), every text token rates, where the official code would divide by zero.
- **DPC-KNN ties.** Density ties are broken by index (the lower index counts as denser), not
  by the official random noise, so results are deterministic; centre and top-k ties also go to
  the lower index.
- **Merged tokens.** Features are the plain mean (official); sizes add up and the source is
  the union; position and per-token signals are those of the cluster's DPC centre token (the
  official code renumbers positions contiguously, so it has no such notion).
- **Padding.** Masked batches are refused (recycling needs the same deleted count per image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import (
    Budget,
    LLMSignal,
    LLMStage,
    MethodOptions,
    OptionAttribute,
    TokenMethod,
    register_method,
    scaled_layers,
)
from tokencodec.tokens.signals import Signal


def select_raters(visual_embeds: Tensor, text_embeds: Tensor) -> Tensor:
    """Raters, bool [M]: text tokens whose relevance (softmax_text V·Tᵀ, mean over V) is above average."""
    relevance = (visual_embeds @ text_embeds.T).softmax(dim=-1).mean(dim=0)     # [M], unscaled logits
    raters = relevance > relevance.mean()
    return raters | ~raters.any()       # all rate when none is above the mean (no read on the host)


def rater_slots(embeds: Tensor, start: Tensor, n: int, s_in: int, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Each sample's raters among the real text tokens after its image span, on the device: the layer-0 input
    ``embeds`` [B, S, D] with spans at ``start`` [B] of ``n`` tokens give the W = S − n slots after the span
    [B, W] (clamped into the sequence) and which of them are raters [B, W] (:func:`select_raters` per sample,
    as a masked softmax over each sample's real text tokens; all of them when none is above average)."""
    b, s, d = embeds.shape
    width = max(s_in - n, 1)                               # text slots after the span, at most
    slots = start[:, None].to(embeds.device) + n + torch.arange(width, device=embeds.device)
    text_ok = (slots < s_in) & valid.gather(1, slots.clamp_max(s_in - 1))
    slots = slots.clamp_max(s_in - 1)
    image = embeds.gather(1, (start[:, None].to(embeds.device) + torch.arange(n, device=embeds.device))[..., None]
                          .expand(b, n, d)).float()
    text = embeds.gather(1, slots[..., None].expand(b, width, d)).float()
    logits = (image @ text.transpose(1, 2)).masked_fill(~text_ok[:, None], float("-inf"))   # [B, n, W]
    relevance = logits.softmax(-1).nan_to_num(0.0).mean(1)                                  # [B, W]
    mean = (relevance * text_ok).sum(1, keepdim=True) / text_ok.sum(1, keepdim=True).clamp_min(1)
    raters = (relevance > mean) & text_ok
    return slots, torch.where(raters.any(1, keepdim=True), raters, text_ok)


def visual_scores(rater_attention: Tensor) -> Tensor:
    """Image-token scores [B, N] from the raters' attention [B, R, N]: the mean over raters."""
    return rater_attention.mean(dim=1)


def recycle_counts(n_deleted: int) -> tuple[int, int]:
    """(tokens recycled, clusters) for n deleted tokens: ⌊0.3n⌋+1 and ⌊m/10⌋+1, or (0, 0) for none."""
    if n_deleted <= 0:
        return 0, 0
    m = n_deleted * 3 // 10 + 1
    return m, m // 10 + 1


def kept_count(n: int, budget: int) -> int:
    """How many tokens to keep by score so that they plus their recycled clusters make ``budget``."""
    fits = [k for k in range(n + 1) if k + recycle_counts(n - k)[1] == budget]   # over counts, not tokens
    if not fits:
        raise ValueError(f"no kept count gives {budget} tokens out of {n} with recycling")
    return max(fits)


def sparsevlm_keeps(budget: Budget, n: int, schedule: dict[int, Sequence[int]], stages: int,
                    exact: bool = True, n_ref: int = 576) -> tuple[int, ...]:
    """Per-stage counts from SparseVLM's v1.5 lists (class ``schedule``, presets p of ``n_ref`` tokens).

    With ρ = K/n, take the preset nearest in log scale and keep n·(l_s/n_ref)^(ln ρ / ln(p/n_ref)) at
    stage s: the official list exactly at ρ = p/n_ref, n (no pruning) at ρ = 1, monotone in between.
    Counts are rounded and clamped to [recycled clusters (``exact``) or 1, previous count].
    """
    rho = budget.tokens(n) / n
    preset = min(schedule, key=lambda p: (abs(math.log(p / n_ref) - math.log(rho)), p))
    keeps = list(schedule[preset])
    if stages > len(keeps):
        raise ValueError(f"SparseVLM's schedule has {len(keeps)} stages; {stages} layers were given")
    power = math.log(rho) / math.log(preset / n_ref)
    out, cur = [], n
    for keep in keeps[:stages]:
        lo = recycle_counts(cur)[1] if exact else 1
        cur = min(cur, max(lo, round(n * (keep / n_ref) ** power)))
        out.append(cur)
    return tuple(out)


def dpc_knn(x: Tensor, num_clusters: int, k: int | None = None) -> tuple[Tensor, Tensor]:
    """Cluster x [B, m, C] by density peaks with k nearest neighbours (k defaults to num_clusters).

    Returns (labels [B, m] in [0, num_clusters), centres [B, num_clusters] as indices into m).
    """
    b, m, c = x.shape
    k = num_clusters if k is None else k
    # float32 whatever the model's dtype: cdist has no bf16 kernel on CUDA, and density ties need the precision
    dist = torch.cdist(x.float(), x.float()) / c ** 0.5                      # [B, m, m]
    knn = dist.topk(k, dim=-1, largest=False).values
    density = (-(knn ** 2).mean(dim=-1)).exp()                               # [B, m]
    # j is "denser" than i if its density is higher, or equal with a lower index
    index = torch.arange(m, device=x.device)
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (index[None, :] < index[:, None]))
    far = dist.flatten(1).max(dim=-1).values[:, None, None]
    delta = torch.where(denser, dist, far).min(dim=-1).values               # distance to a denser token
    centres = (delta * density).argsort(dim=-1, descending=True, stable=True)[:, :num_clusters]
    labels = dist.gather(1, centres[..., None].expand(-1, -1, m)).argmin(dim=1)
    # a centre belongs to its own cluster even when another centre is as close
    labels = labels.scatter(1, centres, torch.arange(num_clusters, device=x.device).expand(b, -1))
    return labels, centres


@dataclass(frozen=True)
class SparseVLMOptions(MethodOptions):
    recycle: bool = True                    # merge part of the deleted tokens into appended clusters
    count_recycled: bool = False            # the budget counts the clusters (official: it does not)
    layers: tuple[int, ...] = (2, 6, 15)    # the LLM layers the adapter prunes after (v1.5)


@register_method("sparsevlm")
class SparseVLM(TokenMethod):
    """One SparseVLM pruning stage with token recycling, scored by the raters' attention."""

    stage = "llm"
    guidance = "text"
    needs = (Signal.RATER_ATTENTION,)   # or an already averaged "text_attention" [B, N]
    choose_raters = staticmethod(rater_slots)   # the adapter asks for raters once per prefill
    cls_fallback = "not needed: the score is the raters' attention to the image span"
    paper = ("Zhang et al., SparseVLM: Visual Token Sparsification for Efficient Vision-Language "
             "Model Inference, ICML 2025, arXiv 2410.04417")
    Options = SparseVLMOptions
    recycle = OptionAttribute()
    count_recycled = OptionAttribute()
    layers = OptionAttribute()
    schedule: ClassVar[dict[int, tuple[int, ...]]] = {192: (300, 200, 110), 128: (303, 110, 36),
                                                      96: (238, 48, 26), 64: (66, 30, 17)}
    positions = "renumber"      # official: contiguous ids, [kept, recycled block] as emitted
    llm_signal = LLMSignal(query="raters")   # the raters' rows of the pruning layer's attention

    def layers_for(self, depth: int) -> tuple[int, ...]:
        """Scale the pruning layers (j+1), not the scoring ones, then give back the option (scoring layers)."""
        return tuple(k - 1 for k in scaled_layers([j + 1 for j in self.layers], depth, self.reference_depth))

    def plan(self, budget: Budget, n: int, depth: int, layers: tuple[int, ...] | None = None) -> tuple[LLMStage, ...]:
        """Layer j runs on all tokens and its output is pruned: a stage before j+1, scored with layer j."""
        layers = tuple(layers or self.layers)
        keeps = sparsevlm_keeps(budget, n, self.schedule, len(layers), self.recycle and self.count_recycled)
        return tuple(LLMStage(j + 1, j, k) for j, k in zip(layers, keeps, strict=True))

    def scores(self, batch: TokenBatch) -> Tensor:
        if "rater_attention" not in batch.context and "text_attention" in batch.signals:
            return batch.signals["text_attention"]
        self.check_signals(batch)
        return visual_scores(batch.context["rater_attention"])

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        scores = self.scores(batch)
        self.check_unpadded(batch)
        n = batch.num_tokens
        exact = self.recycle and self.count_recycled
        # the smallest exact budget is all clusters and nothing kept by score
        k = budget.tokens(n, minimum=recycle_counts(n)[1] if exact else 1)
        keep = kept_count(n, k) if exact else k
        order = scores.argsort(dim=1, descending=True, stable=True)
        kept = order[:, :keep].sort(dim=1).values
        m, clusters = recycle_counts(n - keep)
        if not self.recycle or m == 0:
            return batch.take(kept)
        pool = order[:, keep:keep + m]                                   # best-scored deleted tokens
        x = batch.features.gather(1, pool[..., None].expand(-1, -1, batch.features.shape[-1]))
        labels, centres = dpc_knn(x, clusters)
        # [B, clusters, m]; a comparison, not F.one_hot, whose range check reads the labels on the host (CPU)
        member = labels[:, None, :] == torch.arange(clusters, device=labels.device)[:, None]
        merged = (member.float() @ x.float() / member.sum(dim=-1, keepdim=True)).to(x.dtype)
        sizes = (member.to(batch.sizes.dtype) @ batch.sizes.gather(1, pool)[..., None])[..., 0]
        pool_source = batch.source.gather(1, pool[..., None].expand(-1, -1, batch.source.shape[-1]))
        source = (member.float() @ pool_source.float()) > 0
        out = batch.take(torch.cat([kept, pool.gather(1, centres)], dim=1))
        return replace(out, features=torch.cat([out.features[:, :keep], merged], 1),
                       sizes=torch.cat([out.sizes[:, :keep], sizes], 1),
                       source=torch.cat([out.source[:, :keep], source.to(out.source.dtype)], 1))
