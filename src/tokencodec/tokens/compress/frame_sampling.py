"""``uniform-frames``: uniform frame sampling, the video-LLM baseline (keep m evenly spaced frames whole).

Video LLMs commonly cut tokens by sampling frames: m of the T frames, evenly spaced (frame
⌊i·T/m⌋ for i = 0..m−1, so the first frame is always kept), every token of a kept frame sent at
its original position. With K tokens and h×w tokens per frame, m = K / (h·w): budgets that are not
a whole number of frames are refused, so the count is exact.
"""

from __future__ import annotations

import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError, TokenMethod, register_method


def sampled_frames(frames: int, m: int) -> list[int]:
    """m evenly spaced frame indices out of ``frames``, starting at 0."""
    return [i * frames // m for i in range(m)]


@register_method("uniform-frames")
class UniformFrames(TokenMethod):
    """Keep K/(h·w) evenly spaced frames whole (uniform frame sampling)."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    video = True
    whole_frames = True
    needs = ()
    needs_cls = False
    cls_fallback = "not needed: reads nothing"
    paper = "uniform frame sampling, the standard video-LLM input (e.g. Video-LLaVA's 8 frames)"

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        t, n = batch.frames, batch.num_tokens
        hw = n // t
        k = budget.tokens(n)
        if k % hw:
            allowed = ", ".join(str(hw * m) for m in range(1, t + 1))
            raise BudgetError(f"uniform-frames keeps whole frames of {hw} tokens: K must be one of {allowed}; got {k}")
        m, dev = k // hw, batch.features.device
        frames = torch.arange(m, device=dev) * t // m                 # sampled_frames(t, m), on the device
        index = (frames[:, None] * hw + torch.arange(hw, device=dev)).reshape(-1)
        return batch.take(index.expand(batch.batch_size, -1))


__all__ = ["UniformFrames", "sampled_frames"]
