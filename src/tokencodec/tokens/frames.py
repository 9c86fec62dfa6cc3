"""Video token batches: split a batch of T-frame videos into frames and join per-frame results back.

A video batch holds B videos of T frames, N = T·h·w tokens in raster order (frame, row, column).
A spatial method knows nothing of frames; to run it on every frame (the usual video baseline:
each frame compressed alone at K/T tokens) the batch is split into B·T one-frame batches, the
method runs once on all of them, and the results are joined: positions and sources move to their
frame's slots, so a joined batch's bookkeeping is the same as a temporal method's.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError


def split_frames(batch: TokenBatch) -> TokenBatch:
    """B videos of T frames → B·T one-frame batches (per-token signals follow; the CLS, if any, per frame)."""
    b, t = batch.batch_size, batch.frames
    if batch.mask is not None or batch.num_tokens != batch.num_original:
        raise ValueError("split_frames takes a video batch straight from the encoder (every token, no padding)")

    def per_frame(x):
        return x.reshape(b * t, x.shape[1] // t, *x.shape[2:])

    cls = batch.cls
    if cls is not None and cls.shape[0] != b * t:
        cls = None          # one CLS per video does not describe a single frame
    signals = {k: per_frame(v) for k, v in batch.signals.items()}
    return TokenBatch.from_grid(per_frame(batch.features), batch.grid, cls_token=cls, context=batch.context, **signals)


def stack_frames(features, grid: tuple[int, int], frames: int, signals: dict | None = None) -> TokenBatch:
    """An encoder's B·T frame images ([B·T, N, D] tokens and per-token signals) → B videos of T·N tokens,
    frame after frame (the inverse of :func:`split_frames`; no CLS: one per frame does not describe a video)."""
    bt, n = features.shape[:2]
    if bt % frames:
        raise ValueError(f"{bt} images are not whole videos of {frames} frames")

    def per_video(x):
        return x.reshape(bt // frames, frames * n, *x.shape[2:])

    return TokenBatch.from_grid(per_video(features), grid, frames=frames,
                                **{k: per_video(v) for k, v in (signals or {}).items()})


def per_frame_budget(budget: Budget, frames: int, n_frame: int) -> Budget:
    """A video budget spread evenly over its frames: a ratio stays, a count K becomes K/T per frame."""
    if budget.keep is None:
        return budget
    if budget.keep % frames:
        raise BudgetError(f"keep={budget.keep} over {frames} frames: per-frame compression needs a multiple of "
                          f"{frames} (or a ratio)")
    k = budget.keep // frames
    if k > n_frame:
        raise BudgetError(f"keep={budget.keep} is outside the allowed range [1, {frames * n_frame}] "
                          f"({frames} frames of {n_frame} tokens)")
    return Budget(keep=k)


def join_frames(out: TokenBatch, videos: int, frames: int) -> TokenBatch:
    """Per-frame results (B·T batches over one frame each) → B video batches over T frames."""
    n_frame = out.num_original
    bt, k = out.features.shape[:2]
    if bt != videos * frames:
        raise ValueError(f"{bt} frame results for {videos} videos of {frames} frames")
    rows = torch.arange(bt, device=out.features.device)      # on the device: a host index would be copied
    offset = (rows % frames) * n_frame                                            # each frame's first slot
    positions = torch.where(out.positions >= 0, out.positions + offset[:, None], -1)
    # block-diagonal sources: frame f's tokens draw on the f-th block of original patches
    source = out.source.new_zeros(bt, k, frames, n_frame)
    source[rows, :, rows % frames] = out.source
    source = source.reshape(videos, frames * k, frames * n_frame)

    def per_video(x):
        return x.reshape(videos, frames * k, *x.shape[2:])

    mask = None if out.mask is None else per_video(out.mask)
    return replace(TokenBatch(features=per_video(out.features), grid=out.grid, frames=frames,
                              sizes=per_video(out.sizes), source=source, positions=per_video(positions), mask=mask),
                   context=out.context)


def compress_per_frame(method, batch: TokenBatch, budget: Budget) -> TokenBatch:
    """``method`` on every frame alone at the per-frame share of ``budget``; results joined per video."""
    out = method(split_frames(batch), per_frame_budget(budget, batch.frames, batch.grid[0] * batch.grid[1]))
    return join_frames(out, batch.batch_size, batch.frames)


__all__ = ["compress_per_frame", "join_frames", "per_frame_budget", "split_frames", "stack_frames"]
