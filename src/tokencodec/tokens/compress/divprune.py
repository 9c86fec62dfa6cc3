"""DivPrune: keep the most diverse tokens by greedy max–min selection ("divprune").

Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models",
CVPR 2025, arXiv 2503.02175; official code vbdi/divprune (``llava_arch.py``), which we follow:

1. D = 1 − cos over the N tokens' features (the adapter passes the projected embeddings, as the
   official ``LAYER_INDEX=0`` does); K = round(ratio·N) via ``Budget``.
2. First token: the one whose nearest neighbour is farthest, i.e. the argmax over columns of the
   second-smallest entry (the smallest being the token itself).
3. Greedy max–min: repeatedly add the candidate whose minimum distance to the selected set is
   largest. The official code recomputes that minimum over all selected rows each step (O(K²N));
   we keep a running minimum (O(KN)), which gives the same picks.
4. Kept indices are sorted to raster order; the positions keep the original raster indices. The
   official code makes the LLM's position ids contiguous: ``positions = "renumber"`` tells the
   adapter to do the same (its ``positions="original"`` keeps RoPE gaps instead).

Choices the code leaves implicit: ties go to the lowest index (``argmax``), as in the official code.
We set the diagonal of D to exactly 0 and give already-selected tokens −inf instead of relying on
their ≈0 score, so identical tokens can never be picked twice (the official code could re-pick one
when every remaining distance is 0); this fix is kept in both dtypes.

**dtype.** ``compute_dtype="model"`` (default, official) computes the distances and runs the greedy
loop in the features' dtype (fp16 on LLaVA-1.5, as the official code does on ``new_input_embeds``),
so near-ties resolve as there; ``compute_dtype="float32"`` (the older default) computes in float32
whatever the feature dtype.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method


def cosine_distance(features: Tensor, dtype: torch.dtype | None = torch.float32) -> Tensor:
    """[B, N, N] pairwise 1 − cos in ``dtype`` (None: the features' own), with an exact zero diagonal."""
    x = F.normalize(features if dtype is None else features.to(dtype), dim=-1)
    d = 1 - x @ x.transpose(1, 2)
    d.diagonal(dim1=1, dim2=2).zero_()
    return d


def divprune_select(features: Tensor, k: int, dtype: torch.dtype | None = torch.float32) -> Tensor:
    """Indices [B, k] of the max–min diverse subset of each image's tokens, in raster order.

    ``dtype``: what the distances and the greedy loop run in (None: the features' dtype)."""
    b, n, _ = features.shape
    if k >= n:  # every token is picked: the greedy loop would only reorder them into raster order
        return torch.arange(n, device=features.device).expand(b, n).clone()
    d = cosine_distance(features, dtype)
    if n == 1:
        first = torch.zeros(b, 1, dtype=torch.long, device=features.device)
    else:
        first = d.kthvalue(2, dim=1).values.argmax(1, keepdim=True)
    # the greedy loop stays on the device: k small launches, no value read on the host (scatter_, not
    # `taken[rows, i] = True`, whose Python scalar torch would copy to the device and wait for)
    picked = [first]
    taken = torch.zeros(b, n, dtype=torch.bool, device=features.device).scatter_(1, first, True)
    nearest = d.gather(1, first[..., None].expand(-1, -1, n))[:, 0]  # each token's distance to the selected set
    for _ in range(1, k):
        nxt = nearest.masked_fill(taken, float("-inf")).argmax(1, keepdim=True)
        picked.append(nxt)
        taken.scatter_(1, nxt, True)
        nearest = torch.minimum(nearest, d.gather(1, nxt[..., None].expand(-1, -1, n))[:, 0])
    return torch.cat(picked, 1).sort(1).values


@dataclass(frozen=True)
class DivPruneOptions(MethodOptions):
    compute_dtype: Literal["model", "float32"] = "model"   # "model": the features' dtype (official fp16)


@register_method("divprune")
class DivPrune(TokenMethod):
    """Max–min diversity pruning on features (Alvar et al., CVPR 2025, arXiv 2503.02175).

    Reads only the token features; see the module docstring for every choice.
    """

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = ()
    needs_cls = False
    cls_fallback = "not needed: DivPrune reads only the token features"
    paper = "DivPrune (Alvar et al., CVPR 2025), arXiv 2503.02175"
    Options = DivPruneOptions
    positions = "renumber"      # official LLaVA: contiguous ids (the kept tokens are in raster order)
    features = "projected"      # official LAYER_INDEX=0: the projector's output embeddings
    crops = "joint"             # official LLaVA-1.6: one pool over the packed span, newline tokens included

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        k = budget.tokens(batch.num_tokens)
        dtype = None if self.options.compute_dtype == "model" else torch.float32
        return batch.take(divprune_select(batch.features, k, dtype))
