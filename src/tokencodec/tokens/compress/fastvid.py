"""FastVID: dynamic density pruning for video LLMs (Shen et al., NeurIPS 2025, arXiv 2503.11187).

Official code: LunarShen/FastVID @ a40a109, LLaVA-OneVision copy
(``fastvid_llavaonevision/.../language_model/modeling_qwen2.py``, the "FastVID" block of
``Qwen2Model.forward``, which runs on the layer-0 input embeddings before any decoder layer: a pre-LLM
method). A video batch holds T frames × S tokens (the projected, 2×2-pooled frame features: 196 per
frame on OV). Steps, with the official defaults:

1. **DySeg.** gₜ = the frame's global feature (context ``frame_features``: SigLIP's attention-pooling
   head output), normalised; sₜ = ⟨gₜ, gₜ₊₁⟩. A segment ends after each of the c − 1 = 7 least
   similar transitions **and** after every transition with sₜ < τ = 0.9.
2. **Per-frame budget.** n = int(S·ρ) (ρ = ``fastvid_retention_ratio``); salient nₛ = n − int(n·d)
   with d = 0.4; contextual n_c = n − nₛ (ρ = 0.10 on OV: 19 = 12 + 7).
3. **ATS.** Each frame keeps its top-nₛ tokens by saliency (signal ``pooler_attention``: the pooling
   head's attention over the patches, head-averaged, pooled like the features).
4. **Density.** On each frame's other tokens, DPC-KNN with k = 4 (:mod:`~tokencodec.tokens.compress.density`):
   score = δ·density.
5. **Anchors.** A segment of L frames has ⌈L/p⌉ anchor frames (p = 4): its last frame and every p-th
   frame before it; each gets (n_c·L) // ⌈L/p⌉ contextual tokens, the other frames none.
6. **DTM.** An anchor's contextual tokens are its top tokens by density score; every non-salient token
   of the segment (of the frame alone when the anchor's count is n_c, e.g. a one-frame segment) joins
   the most cosine-similar of them, separately for each anchor; a target becomes w·target +
   (1 − w)·mean(assigned), w = max(1/(count + 1), β), β = 0.6 (the target is assigned to itself, so
   w = 0.6 in practice).
7. **Order and positions.** Kept and merged tokens sorted by their original index; each keeps its
   original position id (RoPE gaps): ``positions = "original"``. OV's newline token after the video
   stays as text.

**Budget.** ``Budget(ratio=ρ)`` is ``fastvid_retention_ratio``: n = int(S·ρ) per frame;
``Budget(keep=K)``: n = K // T. The official count is T·nₛ + Σ anchors' counts ≤ T·n, with equality
unless a segment's contextual budget n_c·L does not split evenly over its anchors (data dependent).
Even ρ = 1 is not the identity when a segment is longer than one frame (anchors absorb the other
frames' contextual tokens), as in the official code.

**Host syncs.** Segmentation, anchors and merging are fixed-shape tensor ops (every frame is a
potential anchor, every slot up to the largest anchor count is masked). ``length="count"`` (default)
reads the batch's largest count once per call so the LLM gets exactly the official count;
``length="bound"`` pads every video to T·n with ``mask`` set and never syncs.

Choices and deviations (see docs/token-methods.md):

- Density ties go to the lower index instead of the official random 1e-6 noise (determinism); saliency
  and density-score ties go to the lower index (``torch.topk`` leaves them arbitrary).
- With fewer than c transitions (T ≤ c) every transition is cut (the official ``topk`` raises); an
  anchor's count is capped at the frame's S − nₛ non-salient tokens (the official ``topk`` raises,
  e.g. at ρ = 0.5 with 4-frame segments).
- Merges are computed in float32 (the official code sums in the model's dtype; bf16 counts above 256
  are rounded there).
- ``frame_feature="mean"`` (the frame-mean of its tokens, the official Qwen2.5-VL variant) and
  ``saliency="cls"`` (CLS attention, or mean attention received without a CLS) let it run on towers
  without SigLIP's pooling head (CLIP); they are named options, not the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.compress.density import density_peaks, one_hot, rank_desc
from tokencodec.tokens.compress.variable_count import combine_kept, order_kept
from tokencodec.tokens.compress.visionzip import guiding_attention
from tokencodec.tokens.signals import Signal


def segment_ids(global_features: Tensor, c: int, tau: float) -> Tensor:
    """DySeg: [B, T, D'] frame features → [B, T] segment index of each frame (0, 1, …)."""
    g = global_features.float()
    g = g / g.norm(dim=-1, keepdim=True)
    sim = (g[:, :-1] * g[:, 1:]).sum(-1)                                     # [B, T−1]
    lowest = rank_desc(-sim) < min(c - 1, sim.shape[1])                      # the c−1 least similar
    cut = lowest | (sim < tau)
    return torch.cat([torch.zeros_like(sim[:, :1], dtype=torch.long), cut.long().cumsum(1)], 1)


def anchor_counts(seg: Tensor, n_c: int, p: int) -> Tensor:
    """Contextual tokens per frame [B, T]: (n_c·L) // ⌈L/p⌉ on every p-th frame counted back from a
    segment's last frame, 0 elsewhere."""
    t = seg.shape[1]
    same = seg[:, :, None] == seg[:, None, :]                                # [B, f, f']
    length = same.sum(-1)
    later = torch.ones(t, t, dtype=torch.bool, device=seg.device).triu(1)    # f' > f
    from_end = (same & later).sum(-1)
    anchor = from_end % p == 0
    share = (n_c * length) // ((length + p - 1) // p)
    return torch.where(anchor, share, torch.zeros_like(share))


def frame_budget(budget: Budget, frames: int, s: int, d: float) -> tuple[int, int]:
    """(salient, contextual) tokens per frame: n = int(S·ρ) or K // T; nₛ = n − int(n·d)."""
    if budget.r is not None:
        raise BudgetError("fastvid takes a token budget (keep or ratio), not ToMe's r")
    n = budget.keep // frames if budget.keep is not None else int(s * budget.ratio)
    if not 1 <= n <= s:
        raise BudgetError(f"fastvid keeps n = {n} tokens per frame; the allowed range is [1, {s}] per frame, "
                          f"i.e. a budget in [{frames}, {frames * s}] tokens or a ratio ≥ {1 / s:.4g}")
    n_s = n - int(n * d)
    return n_s, n - n_s


def fastvid_plan(x: Tensor, saliency: Tensor, global_features: Tensor, t: int, n_s: int, n_c: int, *,
                 c: int, tau: float, p: int, beta: float):
    """Every kept token as weights over the input tokens.

    Returns (keep [B, N] bool: salient or an anchor's target, weights [B, N, …] of the targets as a pair
    (slot [B, N] long: the target slot of each kept token, −1 for salient ones; target_weights
    [B, T·c_max, N]; target_members [B, T·c_max, N])).
    """
    b, n, dim = x.shape
    s = n // t
    m = s - n_s                                                              # non-salient tokens per frame
    dev = x.device
    xf = x.float().reshape(b, t, s, dim)
    salient = rank_desc(saliency.float().reshape(b, t, s)) < n_s             # ATS
    keep = salient.reshape(b, n)
    c_max = min(n_c * p, m)
    if c_max == 0:
        return keep, torch.full((b, n), -1, dtype=torch.long, device=dev), None, None
    seg = segment_ids(global_features, c, tau)
    count = anchor_counts(seg, n_c, p).clamp(max=m)                          # [B, T]

    # the non-salient tokens of each frame, in raster order, and their density scores
    rest = salient.to(torch.uint8).argsort(dim=-1, stable=True)[..., :m]     # [B, T, m]
    tokens = xf.gather(2, rest[..., None].expand(-1, -1, -1, dim))           # [B, T, m, D]
    _, score = density_peaks(tokens.reshape(b * t, m, dim), 4)
    target = score.reshape(b, t, m).argsort(dim=-1, descending=True, stable=True)[..., :c_max]  # [B, T, c]
    slot_ok = torch.arange(c_max, device=dev) < count[..., None]             # [B, T, c]

    # each non-salient token of an anchor's pool joins the anchor's most similar target
    unit = tokens / tokens.norm(dim=-1, keepdim=True)
    targets = unit.gather(2, target[..., None].expand(-1, -1, -1, dim))      # [B, T, c, D]
    sim = unit.reshape(b, t * m, dim) @ targets.reshape(b, t * c_max, dim).transpose(1, 2)
    sim = sim.reshape(b, t * m, t, c_max).masked_fill(~slot_ok[:, None], -torch.inf)
    choice = sim.argmax(-1)                                                  # [B, T·m, T(anchor)]
    frame = torch.arange(t, device=dev)
    alone = count == n_c                                                     # the frame is its own pool
    pool = torch.where(alone[:, None, :], frame[:, None] == frame[None, :], seg[:, :, None] == seg[:, None, :])
    pool = pool.repeat_interleave(m, dim=1)                                  # [B, T·m (token), T (anchor)]
    assigned = one_hot(choice, c_max) & pool[..., None] & slot_ok[:, None]  # [B, T·m, T, c]
    assigned = assigned.permute(0, 2, 3, 1).reshape(b, t * c_max, t * m)     # [B, anchor slot, token]
    total = assigned.sum(-1, keepdim=True).float()
    w = (1 / (total + 1)).clamp(min=beta)
    own = one_hot((frame[:, None] * m + target).reshape(b, t * c_max), t * m)
    coeff = (1 - w) * assigned.float() / total.clamp_min(1) + w * own.float()
    raster = (frame[:, None] * s + rest).reshape(b, t * m)                   # list index → token index
    weights = x.new_zeros(b, t * c_max, n, dtype=torch.float32).scatter(2, raster[:, None].expand_as(coeff), coeff)
    members = torch.zeros(b, t * c_max, n, dtype=torch.bool, device=dev).scatter(
        2, raster[:, None].expand_as(coeff), assigned | own)
    ok = slot_ok.reshape(b, t * c_max)
    weights, members = weights * ok[..., None], members & ok[..., None]
    # the target tokens join the kept ones, each remembering its slot
    where = raster.gather(1, (frame[:, None] * m + target).reshape(b, t * c_max))
    slot = torch.full((b, n + 1), -1, dtype=torch.long, device=dev).scatter(
        1, torch.where(ok, where, n), torch.arange(t * c_max, device=dev).expand(b, -1))[:, :n]
    return keep | (slot >= 0), slot, weights, members


def fastvid_select(batch: TokenBatch, keep: Tensor, slot: Tensor, target_weights, target_members,
                   width: int | None) -> TokenBatch:
    """The kept tokens in original order as a TokenBatch: salient ones as they are, targets merged."""
    n = batch.num_tokens
    index = torch.arange(n, device=keep.device).expand_as(keep)
    order, valid, padded = order_kept(keep, index, width)
    own = one_hot(order, n)
    s = slot.gather(1, order)
    if target_weights is None:
        weights, members = own.float(), own
    else:
        rows = s.clamp_min(0)[..., None].expand(-1, -1, n)
        merged = s[..., None] >= 0
        weights = torch.where(merged, target_weights.gather(1, rows), own.float())
        members = torch.where(merged, target_members.gather(1, rows), own)
    return combine_kept(batch, weights, members, order, valid, padded)


@dataclass(frozen=True)
class FastVIDOptions(MethodOptions):
    c: int = 8                  # DySeg_c: at least c segments (cut after the c−1 least similar transitions)
    tau: float = 0.9            # DySeg_tau: also cut where consecutive frames' cosine < τ
    d: float = 0.4              # STPrune_d: contextual share of each frame's n
    p: int = 4                  # DTM_p: anchor stride within a segment
    beta: float = 0.6           # DTM_beta: the smallest weight of a target in its merge
    frame_feature: Literal["pooler", "mean"] = "pooler"    # DySeg's frame feature: SigLIP head, or token mean
    saliency: Literal["pooler", "cls"] = "pooler"          # ATS: SigLIP head attention, or CLS / mean attention
    length: Literal["count", "bound"] = "count"           # output length: the count (one host read) or T·n

    def __post_init__(self) -> None:
        if self.c < 1 or self.p < 1:
            raise ValueError(f"c={self.c} and p={self.p} must be ≥ 1")
        if not (0 <= self.d < 1 and 0 <= self.beta <= 1):
            raise ValueError(f"d={self.d} must be in [0, 1) and beta={self.beta} in [0, 1]")


@register_method("fastvid")
class FastVID(TokenMethod):
    """FastVID's DySeg + STPrune (ATS and DTM) on a video (Shen et al., NeurIPS 2025, arXiv 2503.11187)."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    video = True
    needs = (Signal.POOLER_ATTENTION, Signal.FRAME_FEATURES)     # the official signals (see the options)
    needs_cls = False
    cls_fallback = "saliency='cls' ranks by 'mean_attention' (mean attention received) on towers without a CLS"
    paper = "FastVID (Shen et al., NeurIPS 2025), arXiv 2503.11187; official code LunarShen/FastVID @ a40a109"
    Options = FastVIDOptions
    positions = "original"          # official: sorted by original index, original position ids
    features = "projected"          # official: the LLM's input embeddings of the video

    def __init__(self, seed: int = 0, **options):
        super().__init__(seed, **options)
        o = self.options
        self.needs = ((Signal.POOLER_ATTENTION if o.saliency == "pooler" else Signal.CLS_ATTENTION,)
                      + ((Signal.FRAME_FEATURES,) if o.frame_feature == "pooler" else ()))

    def _signals(self, batch: TokenBatch) -> tuple[Tensor, Tensor]:
        o = self.options
        if o.saliency == "pooler":
            if "pooler_attention" not in batch.signals:
                raise ValueError(f"fastvid needs signal 'pooler_attention' (saliency='pooler'); the batch has "
                                 f"{sorted(batch.signals)} (saliency='cls' uses CLS or mean attention)")
            saliency = batch.signals["pooler_attention"]
        else:
            saliency = guiding_attention(batch, "fastvid (saliency='cls')")
        t = batch.frames
        if o.frame_feature == "pooler":
            g = batch.context.get("frame_features")
            if g is None or g.dim() != 3 or g.shape[:2] != (batch.batch_size, t):
                got = None if g is None else tuple(g.shape)
                raise ValueError(f"fastvid needs context 'frame_features' [B={batch.batch_size}, T={t}, D'] "
                                 f"(frame_feature='pooler'); got {got} (frame_feature='mean' uses the token mean)")
        else:
            g = batch.features.float().reshape(batch.batch_size, t, -1, batch.features.shape[-1]).mean(2)
        return saliency, g

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        if batch.num_tokens != batch.num_original:
            raise ValueError("fastvid takes a video batch straight from the encoder (every token of every frame)")
        o = self.options
        t, s = batch.frames, batch.grid[0] * batch.grid[1]
        n_s, n_c = frame_budget(budget, t, s, o.d)
        saliency, g = self._signals(batch)
        keep, slot, weights, members = fastvid_plan(batch.features, saliency, g, t, n_s, n_c, c=o.c, tau=o.tau,
                                                    p=o.p, beta=o.beta)
        width = None if o.length == "count" else t * (n_s + n_c)
        return fastvid_select(batch, keep, slot, weights, members, width)


__all__ = ["FastVID", "anchor_counts", "fastvid_plan", "fastvid_select", "frame_budget", "segment_ids"]
