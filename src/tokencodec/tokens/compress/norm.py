"""Token-norm baseline: keep the K tokens whose features have the largest L2 norm ("token-norm").

A common training-free baseline, not one paper's method: ranking tokens by the norm of their
features is the "norm" criterion that token-pruning work compares against. High-norm tokens in
large ViTs are often artefact tokens carrying global information (Darcet et al., "Vision
Transformers Need Registers", ICLR 2024, arXiv 2309.16588), so this is a baseline, not a
recommendation. Kept tokens are in raster order; ties go to the lower index; padded slots rank last.
"""

from __future__ import annotations

from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import ScoreMethod, register_method


@register_method("token-norm")
class TokenNorm(ScoreMethod):
    """Keep the tokens with the largest feature L2 norm (a common baseline)."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    cls_fallback = "not needed: reads only the token features"
    paper = "common baseline (feature L2-norm ranking); on high-norm ViT tokens see arXiv 2309.16588"

    def score(self, batch: TokenBatch) -> Tensor:
        return batch.features.float().norm(dim=-1)
