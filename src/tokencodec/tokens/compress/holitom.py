"""HoliTom: holistic token merging for video LLMs (Shao et al., NeurIPS 2025, arXiv 2505.21334).

Official code: cokeshao/HoliTom @ e9b2972 (``holitom/llava_arch.py``, ``holitom/modeling_qwen2.py``),
written for LLaVA-OneVision / LLaVA-Video (SigLIP, Qwen2). Two stages; ``holitom`` is the first:

**Outer-LLM merging** (``holitom``, pre-LLM, on a video batch of T frames × S tokens: the projected,
2×2-pooled frame features the LLM would receive, 14×14 = 196 per frame on OV):

1. **Segmentation** (``select_static_windows``): sim[f, j] = cosine of token j between frames f and
   f+1. Token j is *static* in a window [s, e] when sim > τ for every consecutive pair in it; the
   window's gain is #static·(e − s). A dynamic programme over frames splits the video into windows
   (length 1, or 2…``max_window``) maximising the total gain (ties: the shortest last window).
2. **Budget re-scaling**: r′ = min(r / ((N − R)/N), 1) with N = T·S and R = the total gain (the tokens
   the static merge removes); r is the official ``RETAIN_RATIO``.
3. **Static tokens** of a window are averaged over its frames (one token per static position; the
   paper's "first occurrence" is only where the token sits), then clustered by DPC-KNN
   (:mod:`~tokencodec.tokens.compress.density`, k = min(7, m)) into m = round(n_static·r′) centres;
   each other static token joins its nearest centre; a centre with members becomes
   β·centre + (1−β)·mean(members) (β = 0.6), one without stays as it is.
4. **Dynamic tokens**, per frame: ⌈n_dyn·r′⌉ tokens; the top round(⌈n_dyn·r′⌉·(1−D)) by attention
   received (signal ``mean_attention``, pooled like the features) are kept; the rest of the count
   (none at the official D = 0) are DPC-KNN centres of the other dynamic tokens, merged as above.
5. **Order** (OV's one-newline layout): per window, [static tokens (raster order of their positions),
   then each frame's dynamic tokens (kept ones in raster order, then its merged ones)]; windows in time
   order. The LLM gets contiguous positions in that order (``positions = "renumber"``, the standard
   LLaVA concatenation). OV's single newline token after the video is the adapter's, not a visual token.

**Inner-LLM merging** (``holitom-llm``, stage "llm", the official ``Qwen2Model_holitom``): before
LLM layer K (18 of Qwen2-7B's 28), keep the top round(L·(1−r)) video tokens by the last prompt
token's attention at layer K−1 (head-averaged, as FastV) and merge every other one into its most
cosine-similar kept token by **sequential pairwise averaging** in index order (h ← (h + x)/2: a token
with q members gets 2^−q of itself and 2^−(q−i+1) of its i-th member, computed in closed form); kept
tokens keep their position ids (gaps). The official code runs it only when ``HOLITOM_k`` and
``HOLITOM_r`` are set: its OV-7B script sets K = 18, r = 0.5 for the headline rows and drops them for
the "w/o M" rows. The full method is the chain ``[("holitom", r), ("holitom-llm", Budget(ratio=1 − 0.5))]``.

**Budget.** ``Budget(ratio=r)`` is ``RETAIN_RATIO`` (``Budget(keep=K)``: r = K/N). The count is the
official one, Σ round(n_static·r′) + Σ ⌈n_dyn·r′⌉ over windows and frames, close to r·N but data
dependent (at most r·N + 1.25·T).

**Host syncs.** Segmentation, clustering and selection are fixed-shape tensor ops over every possible
window (a window is indexed by its first frame; a Python loop runs over the T frames, never over
tensor values). The output length: ``length="count"`` (default) reads the largest count of the batch
once (one host sync per call), so the LLM gets exactly the official count (a batch of one: no
padding); ``length="bound"`` pads every video to the shape-only bound above with ``mask`` set, and
never syncs.

Choices and deviations (see docs/token-methods.md):

- DPC-KNN density ties go to the lower index instead of the official random 1e-6 noise (determinism);
  attention and score ties go to the lower index too (``torch.topk`` leaves them arbitrary).
- Static means, cluster merges and ``holitom-llm``'s averaging are computed in float32 (the official
  code works in the model's dtype, bf16/fp16 on GPU) and cast back.
- ``holitom-llm`` ranks the video span only; the official span also holds OV's newline token (one
  token of L). Its keep count is ``Budget(ratio=1 − r)`` of the tokens it receives.
- The official grid-newline layout (``mm_newline_position="grid"``, LLaVA-Video) sorts static and
  first-frame tokens by position with a newline per row; not implemented (OV uses one newline).
- Bookkeeping: a static token sits at its position in the window's first frame and stands for every
  frame of the window (its source, summed sizes); a merged token sits at its centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import (
    Budget,
    BudgetError,
    LLMSignal,
    MethodOptions,
    OptionAttribute,
    TokenMethod,
    register_method,
)
from tokencodec.tokens.compress.density import density_peaks, one_hot, rank_desc
from tokencodec.tokens.compress.variable_count import combine_kept, order_kept
from tokencodec.tokens.signals import Signal

# -- segmentation --------------------------------------------------------------------------------

def frame_similarity(x: Tensor) -> Tensor:
    """Cosine of every token with itself in the next frame: [B, T, S, D] → [B, T−1, S] (official ops)."""
    xn = F.normalize(x, p=2, dim=-1)
    return F.cosine_similarity(xn[:, :-1], xn[:, 1:], dim=-1)


def static_table(sim: Tensor, tau: float) -> Tensor:
    """same[b, s, e, j]: token j is static over window [s, e] (sim > τ for each pair in it), e ≥ s.

    A window is static at j when no transition s…e−1 breaks it: the count of breaks before e equals
    the count before s.
    """
    b, t1, s = sim.shape
    breaks = torch.cat([sim.new_zeros(b, 1, s), (~(sim > tau)).float().cumsum(1)], 1)    # [B, T, S]
    t = t1 + 1
    later = torch.ones(t, t, dtype=torch.bool, device=sim.device).triu()                 # e ≥ s
    return (breaks[:, :, None] == breaks[:, None, :]) & later[None, :, :, None]


def select_windows(gain: Tensor, max_window: int) -> tuple[Tensor, Tensor, Tensor]:
    """The official DP over frames: (start [B, T], end [B, T] of each frame's window, total gain [B]).

    dp[i] = max(dp[i−1], max over lengths 2…max_window of dp[i−len] + gain[i−len+1, i]); on equal
    totals the shortest last window wins (the official strict ``>`` scanning lengths upward). The DP is
    sequential in frames (a loop over T, five small ops each); the back-tracking is pointer jumping.
    """
    b, t = gain.shape[:2]
    dev = gain.device
    frame = torch.arange(t, device=dev)
    first = frame[:, None] - frame[None, :]                         # [i, ℓ−1]: the first frame of length ℓ
    allowed = (first >= 0) & (frame[None, :] < max(max_window, 1))
    first = first.clamp_min(0)
    # by[b, i, ℓ−1] = gain of the window of length ℓ ending at i (−inf where not allowed)
    by = gain.transpose(1, 2).gather(2, first.expand(b, t, t)).masked_fill(~allowed, -torch.inf)
    dp = gain.new_zeros(b, t + 1)                                   # dp[:, s]: the best total over frames < s
    length = torch.empty(b, t, dtype=torch.long, device=dev)
    for i in range(t):
        total, pick = (dp[:, first[i]] + by[:, i]).max(1)          # first maximum: the shortest window
        dp[:, i + 1] = total
        length[:, i] = pick
    best_start = frame - length                                     # the best last window ending at each i
    start, end = window_of_frames(best_start)
    return start, end, dp[:, t]


def window_of_frames(best_start: Tensor) -> tuple[Tensor, Tensor]:
    """Back-track the DP: from the last frame, each window [best_start[e], e] is preceded by the window
    ending at best_start[e] − 1. Pointer jumping finds every window end in ⌈log₂ T⌉ rounds; each frame's
    window is the first end at or after it. Returns (start [B, T], end [B, T]) per frame."""
    b, t = best_start.shape
    dev = best_start.device
    sink = t                                                        # "before frame 0"
    jump = torch.cat([(best_start - 1).masked_fill(best_start == 0, sink),
                      torch.full((b, 1), sink, dtype=torch.long, device=dev)], 1)    # [B, T+1]
    reach = torch.zeros(b, t + 1, dtype=torch.long, device=dev)
    reach[:, t - 1] = 1
    for _ in range(max(1, (t - 1).bit_length())):
        reach = reach | torch.zeros_like(reach).scatter_add(1, jump, reach).clamp_max(1)
        jump = jump.gather(1, jump)
    frame = torch.arange(t, device=dev)
    ends = torch.where(reach[:, :t] > 0, frame, t)
    end = ends.flip(1).cummin(1).values.flip(1)                     # the first window end ≥ each frame
    return best_start.gather(1, end), end


# -- clustering ----------------------------------------------------------------------------------

def cluster_merge(x: Tensor, valid: Tensor, m: Tensor, k_nn: int, beta: float) -> tuple[Tensor, Tensor]:
    """DPC-KNN merging of each group's valid tokens into m centres (official ``merge_tokens_by_density``).

    x [G, M, D], valid [G, M], m [G] long. Returns (centre [G, M] bool, coeff [G, M, M]: row c = the
    merged token at centre c as weights over the group's tokens, zero rows for non-centres; drawn
    [G, M, M] bool: the tokens each centre stands for, itself and its members, even at weight 0).
    """
    g, n, _ = x.shape
    k = torch.minimum(m, torch.full_like(m, k_nn))
    dist, score = density_peaks(x, k, valid, k_max=k_nn)
    centre = (rank_desc(score) < m[:, None]) & valid
    # every other valid token joins its nearest centre (ties to the lower index: centres in raster order)
    to_centre = dist.masked_fill(~centre[:, None, :], torch.inf).argmin(-1)                  # [G, M]
    member = valid & ~centre
    assign = one_hot(to_centre, n) & member[..., None]                              # [G, i, c]
    members = assign.transpose(1, 2)                                                         # [G, c, i]
    count = members.sum(-1, keepdim=True).float()
    eye = torch.eye(n, device=x.device)
    mean = members.float() / count.clamp_min(1)
    coeff = torch.where(count > 0, beta * eye + (1 - beta) * mean, eye)
    drawn = (members | eye.bool()) & centre[..., None]
    return centre, coeff * centre[..., None], drawn


# -- the outer stage ------------------------------------------------------------------------------

def retain_ratio(budget: Budget, n: int) -> float:
    """HoliTom's ``RETAIN_RATIO`` for a budget: the ratio itself, or K/N."""
    if budget.r is not None:
        raise BudgetError("holitom takes a token budget (keep or ratio), not ToMe's r")
    if budget.keep is not None:
        if budget.keep > n:
            raise BudgetError(f"token budget {budget.keep} is outside the allowed range [1, {n}] for {n} tokens")
        return budget.keep / n
    return budget.ratio


def count_bound(r: float, t: int, s: int) -> int:
    """The most tokens the official counts can give for T frames of S tokens at ratio r (shape only).

    Each window adds at most ½ (round) and each frame at most 1 (ceil) to r·N; at most T/2 windows
    have static tokens.
    """
    n = t * s
    return min(n, int(r * n + t + (t // 2) / 2) + 1)


def holitom_outer(x: Tensor, attention: Tensor, t: int, r: float, *, tau: float, k_nn: int, beta: float,
                  d: float, max_window: int):
    """The outer stage on [B, T·S, D] features and [B, T·S] attention (fp32 inside), as candidates.

    One candidate per (frame, kind, position): kind 0 = the static token of the window that starts at
    that frame, 1 = a kept dynamic token, 2 = a merged dynamic token. Returns (frames [B, 3T, T],
    coeff [B, 3T·S, S], drawn [B, 3T·S, S] (the positions each stands for), keep [B, 3T·S] bool,
    key [B, 3T·S] (the output order), rep [B, 3T·S] (the representative token)); candidate i weighs
    input token (f, j) by frames[i // S, f]·coeff[i, j].
    """
    b, n, dim = x.shape
    s = n // t
    dev = x.device
    xf = x.float().reshape(b, t, s, dim)
    a = attention.float().reshape(b, t, s)
    frame = torch.arange(t, device=dev)
    if t > 1:
        same = static_table(frame_similarity(xf), tau)                                    # [B, T, T, S]
        span = (frame[None, :] - frame[:, None]).clamp_min(0)                               # e − s
        gain = same.sum(-1).float() * span
        start, end, reduced = select_windows(gain.double(), max_window)
    else:
        same = torch.ones(b, 1, 1, s, dtype=torch.bool, device=dev)
        start = end = torch.zeros(b, 1, dtype=torch.long, device=dev)
        reduced = torch.zeros(b, dtype=torch.float64, device=dev)
    r2 = torch.clamp(r / ((n - reduced) / n), max=1.0)                                     # float64, [B]

    # static positions of the window that starts at each frame (none if no window starts there)
    is_start = start == frame
    length = end - start + 1                                                                # per frame
    static = same[torch.arange(b, device=dev)[:, None], frame, end]                        # [B, T, S]
    static &= (is_start & (length > 1))[..., None]
    n_static = static.sum(-1)                                                               # [B, T] by start
    dynamic = ~static.gather(1, start[..., None].expand(b, t, s))                          # [B, T, S] by frame
    n_dyn = dynamic.sum(-1)

    # static: mean over the window's frames, then DPC-KNN merging into round(n·r′) centres
    in_window = (start[:, None, :] == frame[None, :, None]) & static.any(-1)[..., None]    # [B, w, f]
    total = torch.einsum("bwf,bfsd->bwsd", in_window.float(), xf)
    frames_static = in_window.float() / in_window.sum(-1, keepdim=True).clamp_min(1)
    means = total / in_window.sum(-1).clamp_min(1)[..., None, None]
    m_static = torch.round(n_static * r2[:, None]).long()
    centre_s, coeff_s, drawn_s = cluster_merge(means.reshape(b * t, s, dim), static.reshape(b * t, s),
                                      m_static.reshape(-1), k_nn, beta)

    # dynamic, per frame: ⌈n·r′⌉ tokens, round(·(1−D)) by attention, the rest merged by DPC-KNN
    count = torch.ceil(n_dyn * r2[:, None])
    n_dom = torch.round(count * (1 - d)).long()
    n_ctx = count.long() - n_dom
    kept = (rank_desc(a.masked_fill(~dynamic, -torch.inf)) < n_dom[..., None]) & dynamic
    eye = torch.eye(s, device=dev).expand(b * t, s, s)
    if d > 0:
        centre_c, coeff_c, drawn_c = cluster_merge(xf.reshape(b * t, s, dim), (dynamic & ~kept).reshape(b * t, s),
                                          n_ctx.reshape(-1), k_nn, beta)
    else:                                   # the official default: no contextual tokens
        centre_c, coeff_c, drawn_c = torch.zeros_like(centre_s), torch.zeros_like(coeff_s), torch.zeros_like(drawn_s)

    keep = torch.cat([centre_s.reshape(b, t, s), kept, centre_c.reshape(b, t, s)], 1)      # [B, 3T, S]
    kind_key = torch.arange(3, device=dev)[:, None, None] * s + torch.arange(s, device=dev)
    key = (frame[None, :, None] * 3 * s + kind_key).reshape(1, 3 * t * s).expand(b, -1)  # window/frame, kind, j
    single = one_hot(frame, t).float().expand(b, t, t)
    frames = torch.cat([frames_static, single, single], 1)                               # [B, 3T, T]
    coeff = torch.cat([coeff_s.reshape(b, t * s, s), eye.reshape(b, t * s, s), coeff_c.reshape(b, t * s, s)], 1)
    drawn = torch.cat([drawn_s.reshape(b, t * s, s), eye.bool().reshape(b, t * s, s), drawn_c.reshape(b, t * s, s)], 1)
    rep = (frame[:, None] * s + torch.arange(s, device=dev)).reshape(-1).repeat(3).expand(b, -1)
    return frames, coeff, drawn, keep.reshape(b, -1), key, rep


def assemble(batch: TokenBatch, frames: Tensor, coeff: Tensor, drawn: Tensor, keep: Tensor, key: Tensor,
             rep: Tensor, width: int | None) -> TokenBatch:
    """The kept candidates in ``key`` order as a TokenBatch (merged features, sizes, sources); ``width``
    as in :func:`~tokencodec.tokens.compress.variable_count.order_kept`."""
    b = keep.shape[0]
    t, s = frames.shape[-1], coeff.shape[-1]
    order, valid, padded = order_kept(keep, key, width)
    per_frame = frames.gather(1, (order // s)[..., None].expand(-1, -1, t))                  # [B, W, T]
    per_pos = coeff.gather(1, order[..., None].expand(-1, -1, s))                             # [B, W, S]
    weights = (per_frame[..., None] * per_pos[:, :, None, :]).reshape(b, -1, t * s)
    per_drawn = drawn.gather(1, order[..., None].expand(-1, -1, s))
    members = ((per_frame > 0)[..., None] & per_drawn[:, :, None, :]).reshape(b, -1, t * s)
    return combine_kept(batch, weights, members, rep.gather(1, order), valid, padded)


@dataclass(frozen=True)
class HoliTomOptions(MethodOptions):
    tau: float = 0.8                # T: cosine threshold for static tokens (official default; OV-7B at 10 %: 0.65)
    beta: float = 0.6               # BETA: centre weight of a merged token
    d: float = 0.0                  # D: share of each frame's dynamic count merged by DPC-KNN (0: top-k only)
    k: int = 7                      # K: nearest neighbours of DPC-KNN (min(K, centres))
    max_window: int = 1024          # MAX_WINDOW_SIZE: the longest window of the segmentation
    length: Literal["count", "bound"] = "count"   # output length: the count (one host read) or a fixed bound

    def __post_init__(self) -> None:
        if not (-1 <= self.tau <= 1 and 0 <= self.beta <= 1 and 0 <= self.d <= 1):
            raise ValueError(f"tau={self.tau} must be a cosine in [-1, 1], beta={self.beta} and d={self.d} in [0, 1]")
        if self.k < 1 or self.max_window < 1:
            raise ValueError(f"k={self.k} and max_window={self.max_window} must be ≥ 1")


@register_method("holitom")
class HoliTom(TokenMethod):
    """HoliTom's outer-LLM merging of a video (Shao et al., NeurIPS 2025, arXiv 2505.21334); see the module."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    video = True
    needs = (Signal.MEAN_ATTENTION,)
    needs_cls = False
    cls_fallback = "not needed: reads the mean attention each token receives (SigLIP has no CLS)"
    paper = "HoliTom (Shao et al., NeurIPS 2025), arXiv 2505.21334; official code cokeshao/HoliTom @ e9b2972"
    Options = HoliTomOptions
    positions = "renumber"          # official: LLaVA's concatenation, contiguous ids in the method's order
    features = "projected"          # official: the projected, 2×2-pooled frame features

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        if batch.num_tokens != batch.num_original:
            raise ValueError("holitom takes a video batch straight from the encoder (every token of every frame)")
        if "mean_attention" not in batch.signals:
            raise ValueError(f"holitom needs signal 'mean_attention' (the attention each token receives, pooled "
                             f"like the features); the batch has {sorted(batch.signals)}")
        o = self.options
        t, n = batch.frames, batch.num_tokens
        r = retain_ratio(budget, n)
        frames, coeff, drawn, keep, key, rep = holitom_outer(
            batch.features, batch.signals["mean_attention"], t, r, tau=o.tau, k_nn=o.k, beta=o.beta, d=o.d,
            max_window=o.max_window)
        width = None if o.length == "count" else count_bound(r, t, n // t)
        return assemble(batch, frames, coeff, drawn, keep, key, rep, width)


# -- the inner stage ------------------------------------------------------------------------------

def pairwise_average_weights(assign: Tensor, member: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Sequential pairwise averaging as weights: member i (in index order) merged into kept slot ``assign[i]``
    by h ← (h + x)/2. ``member`` [B, N] marks the merged tokens. Returns (weights [B, K, N] of the members,
    weight [B, K] of each kept token on itself).

    A kept token with q members ends as 2^−q·h + Σᵢ 2^−(q−rᵢ+1)·xᵢ, rᵢ = 1…q its members' ranks.
    """
    one = one_hot(assign, k).transpose(1, 2).float() * member[:, None, :].float()        # [B, K, N]
    rank = one.cumsum(-1) * one                                                              # 1…q at members
    q = one.sum(-1, keepdim=True)
    return torch.where(one > 0, torch.exp2(rank - q - 1), torch.zeros_like(one)), torch.exp2(-q)[..., 0]


@dataclass(frozen=True)
class HoliTomLLMOptions(MethodOptions):
    layer: int = 18             # HOLITOM_k: merge before this LLM layer (of Qwen2-7B's 28), score with K−1

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError(f"holitom-llm merges before layer K ≥ 1 (it scores with layer K−1); got {self.layer}")


@register_method("holitom-llm")
class HoliTomLLM(TokenMethod):
    """HoliTom's inner-LLM merging: top tokens by the last prompt token's attention, the others averaged in."""

    stage = "llm"
    guidance = "text"
    knob = "keep"
    needs = (Signal.TEXT_ATTENTION,)
    cls_fallback = "not needed: the score is the prompt's attention to the video span"
    paper = "HoliTom (Shao et al., NeurIPS 2025), inner-LLM merging (Qwen2Model_holitom); cokeshao/HoliTom @ e9b2972"
    Options = HoliTomLLMOptions
    reference_depth = 28        # Qwen2-7B (LLaVA-OneVision-7B), where K = 18 was published
    positions = "original"      # official: position_ids = the kept tokens' indices (gaps)

    layer = OptionAttribute()

    @property
    def llm_signal(self) -> LLMSignal:       # layer K−1's row of the last prompt token, head-averaged
        return LLMSignal(query="last")

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        self.check_signals(batch)
        n = batch.num_tokens
        k = budget.tokens(n)
        score = batch.signals["text_attention"].float()
        b = score.shape[0]
        # official: the top tokens in descending attention order (the argmax below prefers the first)
        top = score.argsort(dim=1, descending=True, stable=True)[:, :k]                        # [B, K]
        kept = torch.zeros(b, n, dtype=torch.bool, device=score.device).scatter(1, top, True)
        h = F.normalize(batch.features.float(), dim=-1)
        sim = h @ h.gather(1, top[..., None].expand(-1, -1, h.shape[-1])).transpose(1, 2)        # [B, N, K]
        assign = sim.argmax(-1)                                  # the most similar kept token
        w, self_w = pairwise_average_weights(assign, ~kept, k)
        weights = w.scatter(2, top[..., None], self_w[..., None])
        members = (one_hot(assign, k).transpose(1, 2) & ~kept[:, None, :]).scatter(2, top[..., None], True)
        order = top.argsort(dim=1)                               # output in index order
        rows = order[..., None].expand(-1, -1, n)
        return batch.combine(weights.gather(1, rows), members.gather(1, rows), top.gather(1, order))

__all__ = ["HoliTom", "HoliTomLLM", "assemble", "cluster_merge", "count_bound", "frame_similarity",
           "holitom_outer", "pairwise_average_weights", "retain_ratio", "select_windows", "static_table",
           "window_of_frames"]
