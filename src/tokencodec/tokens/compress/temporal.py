"""``temporal``: I/P tokens for video, the inter prediction of a video codec applied to visual tokens.

A video codec sends a key frame (I) whole and, for the frames after it (P), only what its
prediction from the reference frame gets wrong. Here a video batch holds T frames of h×w tokens
(``TokenBatch.frames``). Frame f is a key frame when f is a multiple of ``gop``; every other frame
is predicted from the **receiver's reconstruction** of the frame before it (closed loop, as in a
codec: the last token sent at each grid cell, so slow drift cannot accumulate unseen). A P token
is sent when its residual against its prediction exceeds a threshold τ; a skipped token is **not
repeated** to the model: the receiver already holds its prediction (an earlier frame's token).

- **Residual**: ‖x − p‖ / ‖x‖, the prediction error relative to the token's norm (scale-free, so
  one τ fits every layer and model).
- **Prediction**: the co-located reference token (``search=0``, default) or, with ``search=r``, the
  best of the reference tokens within ±r grid cells (a token-domain motion search; the receiver's
  reconstruction of a skipped token is then the matched token). For a receiver that reads the
  tokens as a sequence (an MLLM) motion search can hide motion: a moved object matches its old
  self one cell away, is skipped, and the model never sees it move. It helps a receiver that
  rebuilds every frame's grid (``context["temporal_reconstruction"]``), e.g. a per-frame classifier
  under camera motion. The study shows both.
- **Key frames** (``intra``): ``"all"`` (default) sends every key-frame token, as a codec sends an I
  frame; budgets below the key-frame tokens are refused. ``"residual"`` lets key-frame tokens compete
  too, by their residual against the frame's mean token (the DC intra prediction), so any budget works.
- **Rate control** (``rate_control``), as a video encoder's:

  - ``"cbr"`` (default): τ is bisected per video so that exactly K tokens are sent (after the
    bisection, ties at τ are completed by the largest residuals).
  - ``"vbr"``: one τ for the whole data set per average keep ratio, calibrated on a tuning split
    (:func:`calibrate_thresholds`, ``scripts/calibrate_temporal.py``) and passed as ``ratios`` and
    ``thresholds``: a static video costs its key frame, a busy one more, at a given **average**.

  ``threshold=τ`` fixes τ directly (every video sends what exceeds it, at most K).

Host syncs: none under CBR (exactly K per video, known in advance); with ``threshold`` or VBR one,
the read of the per-video counts that sizes the padding. The bisection runs on the device.

The sent tokens come back in raster order (frame, row, column) at their original positions; sizes 1,
each its own patch. ``context``: ``temporal_threshold`` [B] (τ used), ``temporal_reconstruction``
[B, N, D] (what a reconstructing receiver holds per grid cell and frame).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.compress.rdo import take_kept

BISECTION_STEPS = 40


def relative_residual(x: Tensor, prediction: Tensor) -> Tensor:
    """‖x − p‖ / ‖x‖ per token ([..., D] → [...])."""
    return (x - prediction).norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)


def neighbours(grid_tokens: Tensor, search: int) -> Tensor:
    """[B, h, w, D] → [B, h·w, (2r+1)², D]: each cell's reference candidates within ±r cells
    (out-of-grid candidates are NaN, so they never win)."""
    b, h, w, d = grid_tokens.shape
    r = search
    padded = F.pad(grid_tokens.permute(0, 3, 1, 2), (r, r, r, r), value=float("nan"))   # B, D, h+2r, w+2r
    windows = padded.unfold(2, 2 * r + 1, 1).unfold(3, 2 * r + 1, 1)                     # B, D, h, w, k, k
    return windows.permute(0, 2, 3, 4, 5, 1).reshape(b, h * w, (2 * r + 1) ** 2, d)


def predict(frame: Tensor, reference: Tensor, grid: tuple[int, int], search: int) -> tuple[Tensor, Tensor]:
    """(residual [B, hw], prediction [B, hw, D]) of a frame's tokens from the reference grid."""
    if search == 0:
        return relative_residual(frame, reference), reference
    cand = neighbours(reference.reshape(reference.shape[0], *grid, -1), search)         # B, hw, C, D
    res = relative_residual(frame[:, :, None], cand)
    best = torch.nan_to_num(res, nan=float("inf")).argmin(-1)                           # B, hw
    pred = cand.gather(2, best[..., None, None].expand(-1, -1, 1, cand.shape[-1]))[:, :, 0]
    return res.gather(2, best[..., None])[..., 0], pred


def code_video(x: Tensor, grid: tuple[int, int], frames: int, gop: int, search: int, intra: str, *,
               tau: Tensor | None = None, sent: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-loop I/P coding of [B, T·hw, D] tokens: send what exceeds τ [B], or the given ``sent`` mask.

    Returns (sent [B, N] bool, residual [B, N] (+inf for key-frame tokens under intra='all'),
    reconstruction [B, N, D]: the receiver's token per grid cell and frame)."""
    b, n, _ = x.shape
    hw = n // frames
    sends, residuals, recon = [], [], []
    reference = None
    for f in range(frames):
        cur = x[:, f * hw:(f + 1) * hw]
        if f % gop == 0:
            if intra == "all":
                res, pred = torch.full((b, hw), float("inf"), device=x.device), cur
            else:                                    # DC intra prediction: the frame's mean token
                pred = cur.mean(1, keepdim=True).expand_as(cur)
                res = relative_residual(cur, pred)
        else:
            res, pred = predict(cur, reference, grid, search)
        send = res > tau[:, None] if sent is None else sent[:, f * hw:(f + 1) * hw]
        reference = torch.where(send[..., None], cur, pred)
        sends.append(send)
        residuals.append(res)
        recon.append(reference)
    return torch.cat(sends, 1), torch.cat(residuals, 1), torch.cat(recon, 1)


@dataclass(frozen=True)
class TemporalOptions(MethodOptions):
    gop: int = 0                                    # frames per group of pictures (0: one key frame, the first)
    search: int = 0                                 # motion search radius in grid cells (0: co-located)
    intra: Literal["all", "residual"] = "all"       # key frames sent whole, or their tokens compete by residual
    threshold: float | None = None                  # a fixed τ (at most K sent); None: rate control decides
    rate_control: Literal["cbr", "vbr"] = "cbr"     # τ per video for exactly K, or one τ per average ratio
    ratios: tuple[float, ...] = ()                  # vbr: the average keep ratios calibrated…
    thresholds: tuple[float, ...] = ()              # …and their τ (calibrate_thresholds)


@register_method("temporal")
class Temporal(TokenMethod):
    """I/P tokens: key frames whole, predicted frames only the tokens their prediction gets wrong."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    video = True
    rebuilds_frames = True
    needs = ()
    needs_cls = False
    cls_fallback = "not needed: reads only the tokens"
    paper = "tokencodec (coding → tokens): I/P frames and closed-loop inter prediction of video codecs"
    Options = TemporalOptions

    def __init__(self, seed: int = 0, **options):
        super().__init__(seed, **options)
        o = self.options
        if o.gop < 0 or o.search < 0:
            raise ValueError(f"temporal gop={o.gop}, search={o.search}: both must be ≥ 0 (gop 0 = one key frame)")
        if o.threshold is not None and o.threshold < 0:
            raise ValueError(f"temporal threshold={o.threshold}: a residual threshold is ≥ 0")
        if o.rate_control == "vbr" and (not o.ratios or len(o.ratios) != len(o.thresholds)):
            raise ValueError("temporal rate_control='vbr' needs ratios and thresholds of the same length (one τ "
                             "per average keep ratio, from calibrate_thresholds on a tuning split)")

    def key_tokens(self, frames: int, hw: int) -> int:
        """Tokens the key frames must send (intra='all'), per video."""
        if self.options.intra != "all":
            return 0
        gop = self.options.gop or frames
        return len(range(0, frames, gop)) * hw

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        t, n = batch.frames, batch.num_tokens
        if t < 2:
            raise ValueError(f"temporal codes video: the batch has frames={t}; pass a video batch (frames ≥ 2)")
        k = budget.tokens(n)
        key = self.key_tokens(t, n // t)
        if k < key:
            raise BudgetError(f"temporal sends every key-frame token: K ≥ {key} for {t} frames with GOP "
                              f"{self.options.gop or t}; got K={k} (use intra='residual' for smaller budgets)")
        o = self.options
        x = batch.features.float()
        gop = o.gop or t
        b = batch.batch_size
        fixed = o.threshold
        if o.rate_control == "vbr":
            table = dict(zip(o.ratios, o.thresholds, strict=True))
            if budget.ratio is None or budget.ratio not in table:
                raise BudgetError(f"temporal (vbr) has τ for average keep ratios {sorted(table, reverse=True)}; "
                                  f"got {budget} (calibrate that ratio first)")
            fixed, k = table[budget.ratio], n                 # no cap: the count follows the content
        if fixed is not None:
            tau = torch.full((b,), float(fixed), device=x.device)
            coded = dict(grid=batch.grid, frames=t, gop=gop, search=o.search, intra=o.intra)
            sent, residual, _ = code_video(x, tau=tau, **coded)
            # the receiver's frames follow what is finally sent (the same frames when the cap took nothing)
            sent = cap(sent, residual, k)
            recon = code_video(x, sent=sent, **coded)[2]
            count = None                            # the content sets each video's count: one read
        else:
            tau, sent, recon = exact_rate(x, batch.grid, t, gop, k, o.search, o.intra)
            count = k                               # CBR: exactly k per video, known without a read
        out = take_kept(batch, sent, count)
        return replace(out, context={**out.context, "temporal_threshold": tau,
                                     "temporal_reconstruction": recon.to(batch.features.dtype)})


def cap(sent: Tensor, residual: Tensor, k: int) -> Tensor:
    """At most k sent per row: the largest residuals win (stable: earlier tokens first on ties)."""
    over = sent.sum(1) > k
    score = torch.where(sent, residual, torch.full_like(residual, float("-inf")))
    top = score.argsort(dim=1, descending=True, stable=True)[:, :k]
    capped = torch.zeros_like(sent).scatter_(1, top, True) & sent
    return torch.where(over[:, None], capped, sent)


def exact_rate(x: Tensor, grid, frames: int, gop: int, k: int, search: int, intra: str):
    """Bisection on τ per video (the smallest τ found sending ≤ k tokens), then completed to exactly k.

    The count is non-increasing in τ for co-located prediction; closed-loop prediction can break
    monotonicity slightly, so the decision is always completed (largest residuals first) or capped to k,
    and the receiver's reconstruction recomputed for the final mask.
    """
    coded = dict(grid=grid, frames=frames, gop=gop, search=search, intra=intra)
    b = x.shape[0]
    _, residual, _ = code_video(x, tau=torch.zeros(b, device=x.device), **coded)
    finite = torch.nan_to_num(residual, posinf=0.0)
    lo = torch.zeros(b, device=x.device)                   # sends more than k
    hi = 2 * finite.amax(1) + 1                            # sends no predicted token
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        too_many = code_video(x, tau=mid, **coded)[0].sum(1) > k
        lo = torch.where(too_many, mid, lo)
        hi = torch.where(too_many, hi, mid)
    sent, residual, _ = code_video(x, tau=hi, **coded)
    short = k - sent.sum(1)
    # complete with the largest residuals not yet sent (ties at τ); a row that is not short gains nothing
    score = torch.where(sent, torch.full_like(residual, float("-inf")), residual)
    order = score.argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(order.shape[1], device=x.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, ranks)
    sent = sent | (rank < short[:, None])
    sent = cap(sent, residual, k)
    return hi, sent, code_video(x, sent=sent, **coded)[2]


def calibrate_thresholds(videos: Tensor, grid: tuple[int, int], frames: int, ratios, *, gop: int = 0,
                         search: int = 0, intra: str = "all") -> tuple[float, ...]:
    """One τ per average keep ratio over a tuning set of videos [V, T·hw, D] (same shape each): the τ whose
    closed-loop coding sends ratio·N tokens per video on average (bisection; the count falls with τ)."""
    x = videos.float()
    v, n = x.shape[:2]
    coded = dict(grid=grid, frames=frames, gop=gop or frames, search=search, intra=intra)
    residual = code_video(x, tau=torch.zeros(v), **coded)[1]
    top = float(2 * torch.nan_to_num(residual, posinf=0.0).max() + 1)
    out = []
    for r in ratios:
        if not 0 < r <= 1:
            raise BudgetError(f"keep ratio {r!r} outside the allowed range (0, 1]")
        lo, hi = 0.0, top
        for _ in range(BISECTION_STEPS):
            mid = (lo + hi) / 2
            sent = code_video(x, tau=torch.full((v,), mid), **coded)[0].sum(1).float().mean()
            lo, hi = (mid, hi) if sent > r * n else (lo, mid)
        out.append(hi)
    return tuple(out)


__all__ = ["Temporal", "calibrate_thresholds", "cap", "code_video", "exact_rate", "neighbours", "predict",
           "relative_residual"]
