"""CDPruner: keep the visual tokens that a conditional DPP finds both relevant to the question and diverse.

Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs", NeurIPS 2025, arXiv 2506.10967; official code Theia-4869/CDPruner @ 9541616
(``llava/model/llava_arch.py::encode_images``, ``multimodal_encoder/clip_encoder.py``), which the
defaults reproduce:

1. Similarity: the **projected** tokens (``features = "projected"``: LLaVA's projector output),
   L2-normalised in the model's dtype, then cast to float32; S = cosine matrix per image view.
2. Relevance: signal ``image_embedding`` [B, N, E] (the feature layer's patches through CLIP's
   ``post_layernorm`` and ``visual_projection``) against context ``text_embedding`` [B, M, E] (CLIP
   text tower, the raw question, one embedding per 77-token chunk), both L2-normalised:
   rᵢ = mean over chunks of **−cos** (the official sign flip: the author reports CLIP patch–text
   similarity comes out inverted; ``relevance="cosine"`` uses +cos, the paper's formula).
3. Min–max: r ← (r − min r + 1e-6)/(max r − min r), min and max over the whole image, i.e. over
   every view of it (``normalize="image"``; the official code takes them over its batch tensor, which
   holds one image's views: the eval loaders assert batch size 1). ``"batch"`` takes them over the
   whole call (the literal expression), ``"view"`` per view.
4. Kernel L = diag(r)·S·diag(r); the official θ-reweighting r ← exp(θ/(2(1−θ))·r) is commented
   out, so ``theta=None`` (default) uses plain r; ``theta`` in (0, 1) turns it on.
5. Greedy MAP inference (Chen et al. 2018, fast-MAP-DPP, incremental Cholesky), exactly K steps,
   no ε stop: j = argmax d² (ties to the lowest index), e = (L[j] − Σₜ cₜ[j]·cₜ)/√d²ⱼ, d² −= e².
6. The picked indices sorted to raster order; the LLM sees them contiguously (official
   ``features[mask]``, so ``positions = "renumber"``). No CLS is sent.

**Views** (LLaVA-NeXT AnyRes): a batch with ``frames = F`` holds one image's F views (base image and
crops, 24×24 each) in one row. The official code keeps T tokens **per view** (README: 32×5 = 160)
with one min–max over all views: ``views="each"`` (default) runs the DPP on each view with K/F
tokens (K must be a multiple of F, or a ratio); ``views="joint"`` runs one DPP over all F·h·w tokens.
The order of the views in the LLM (base first, crops in the stitched grid's raster order, no
unpadding, no newline tokens in the official code) is the adapter's layout, not the method's.

**dtype.** ``compute_dtype="model"`` (default) normalises the projected features in their own dtype
(fp16 on LLaVA) before the float32 similarity, as the official code; ``"float32"`` casts first.
Relevance, kernel and the greedy loop are float32 whatever the input dtype (the official text tower
and ``visual_projection`` run in float32).

Guards where the official code breaks (identical picks otherwise): a full budget returns every token
(the official loop would run to numerical exhaustion); if d² turns non-positive or NaN (a
rank-deficient kernel) the official √ gives NaN and can pick a token twice, so we keep picked tokens
out of the argmax and take √ of max(d², tiny): always K distinct tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.frames import per_frame_budget
from tokencodec.tokens.signals import Signal


def relevance(image_embedding: Tensor, text_embedding: Tensor, text_mask: Tensor | None = None,
              negate: bool = True) -> Tensor:
    """[B, N] mean over text chunks of ∓cos(patch, chunk), in float32 (official: −cos)."""
    img = image_embedding.float()
    img = img / img.norm(dim=-1, keepdim=True)
    txt = text_embedding.float()
    txt = txt / txt.norm(dim=-1, keepdim=True)
    cos = torch.matmul(img, txt.transpose(-1, -2))                       # [B, N, M]
    rel = -cos if negate else cos
    if text_mask is None:
        return rel.mean(dim=-1)
    m = text_mask.to(rel.dtype)[:, None, :]
    return (rel * m).sum(-1) / m.sum(-1)


def min_max(rel: Tensor, dims: tuple[int, ...] | None) -> Tensor:
    """(r − min + 1e-6)/(max − min) over ``dims`` (None: the whole tensor), as the official code."""
    if dims is None:
        lo, hi = rel.min(), rel.max()
    else:
        lo, hi = rel.amin(dim=dims, keepdim=True), rel.amax(dim=dims, keepdim=True)
    return (rel - lo + 1e-6) / (hi - lo)


def cosine_similarity(features: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """[R, n, n] float32 cosines; the L2 normalisation runs in ``dtype`` (None: the features' own)."""
    x = features if dtype is None else features.to(dtype)
    x = (x / x.norm(dim=-1, keepdim=True)).float()
    return torch.matmul(x, x.transpose(1, 2))


def dpp_greedy_map(kernel: Tensor, k: int) -> Tensor:
    """[R, k] indices in the order greedy MAP inference picks them, for R kernels [R, n, n] (float32).

    Fast-MAP-DPP: ``d²`` holds each candidate's conditional gain; every step picks its argmax (the
    first on ties) and updates every gain by the new Cholesky row. One device argmax per step and no
    value read back, so the loop runs K steps without a host sync.
    """
    r, n, _ = kernel.shape
    dev = kernel.device
    rows = torch.arange(r, device=dev)
    cis = kernel.new_zeros(k, r, n)
    di2s = kernel.diagonal(dim1=1, dim2=2).clone()
    taken = torch.zeros(r, n, dtype=torch.bool, device=dev)
    picked = []
    top = torch.finfo(kernel.dtype).max
    tiny = torch.finfo(kernel.dtype).tiny
    for i in range(k):
        # picked tokens are kept out by the mask (the official sets their gain to −inf, which a NaN gain
        # would undo); NaN and −inf gains of the others rank below every real gain
        j = torch.where(taken, -torch.inf, di2s.nan_to_num(nan=-top, neginf=-top)).argmax(dim=-1)
        picked.append(j)
        # the same expression as the official loop, so the float32 arithmetic (and picks) agree
        eis = (kernel[rows, j] - torch.einsum("tb,tbn->bn", cis[:i, rows, j], cis[:i])) \
            / torch.sqrt(di2s[rows, j].clamp_min(tiny)).unsqueeze(-1)
        cis[i] = eis
        di2s = di2s - eis.square()
        taken.scatter_(1, j[:, None], True)
    return torch.stack(picked, dim=1)


def cdpruner_select(features: Tensor, image_embedding: Tensor, text_embedding: Tensor, k: int, views: int = 1,
                    text_mask: Tensor | None = None, negate: bool = True, normalize: str = "image",
                    theta: float | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """Indices [B, views·k] kept per row: k per view (views of n = N/views tokens each), raster order.

    ``normalize``: min–max of the relevance over each row ("image"), each view ("view") or the whole
    call ("batch"). ``dtype``: where the feature normalisation runs (None: the features' dtype).
    """
    b, n_all, _ = features.shape
    n = n_all // views
    rel = relevance(image_embedding, text_embedding, text_mask, negate)          # [B, N]
    dims = {"image": (1, 2), "view": (2,), "batch": None}[normalize]
    rel = min_max(rel.view(b, views, n), dims).reshape(b * views, n)
    if theta is not None:
        rel = torch.exp(theta / (2 * (1 - theta)) * rel)
    if k >= n:
        index = torch.arange(n, device=features.device).expand(b * views, n)
    else:
        sim = cosine_similarity(features.reshape(b * views, n, -1), dtype)
        kernel = rel.unsqueeze(2) * sim * rel.unsqueeze(1)
        index = dpp_greedy_map(kernel, k).sort(dim=1).values
    offset = (torch.arange(views, device=features.device) * n).repeat(b)[:, None]
    return (index + offset).reshape(b, -1)


@dataclass(frozen=True)
class CDPrunerOptions(MethodOptions):
    relevance: Literal["negated", "cosine"] = "negated"       # official −cos; "cosine": the paper's +cos
    theta: float | None = None                                # None: plain r (official); θ: exp(θ/(2(1−θ))·r)
    normalize: Literal["image", "view", "batch"] = "image"    # min–max over the image's views (official)
    views: Literal["each", "joint"] = "each"                  # frames = views: K/F per view (official NeXT)
    compute_dtype: Literal["model", "float32"] = "model"      # feature normalisation in the model's dtype

    def __post_init__(self) -> None:
        if self.theta is not None and not 0 < self.theta < 1:
            raise ValueError(f"theta={self.theta!r} is outside the allowed range (0, 1)")


@register_method("cdpruner")
class CDPruner(TokenMethod):
    """Conditional-DPP token selection (Zhang et al., NeurIPS 2025, arXiv 2506.10967).

    Reads the projected features, signal ``image_embedding`` and context ``text_embedding`` (optional
    ``text_embedding_mask``); see the module docstring for every choice.
    """

    stage = "pre-llm"
    guidance = "text"
    knob = "keep"
    needs = (Signal.IMAGE_EMBEDDING, Signal.TEXT_EMBEDDING)
    needs_cls = False
    cls_fallback = "not needed: CDPruner reads no attention"
    paper = "CDPruner (Zhang et al., NeurIPS 2025), arXiv 2506.10967"
    Options = CDPrunerOptions
    positions = "renumber"      # official LLaVA: features[mask], contiguous ids, raster order
    features = "projected"      # official: similarity of the mm_projector outputs

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        self.check_signals(batch)
        o = self.options
        views = batch.frames if o.views == "each" else 1
        n = batch.num_tokens // views
        k = (per_frame_budget(budget, views, n) if views > 1 else budget).tokens(n)
        text = batch.context[Signal.TEXT_EMBEDDING]
        image = batch.signals[Signal.IMAGE_EMBEDDING]
        if text.dim() != 3 or text.shape[0] not in (1, batch.batch_size) or text.shape[-1] != image.shape[-1]:
            raise ValueError(f"cdpruner: context 'text_embedding' has shape {tuple(text.shape)}, expected "
                             f"[B={batch.batch_size} (or 1), M, E={image.shape[-1]}] (E of 'image_embedding')")
        text = text.expand(batch.batch_size, -1, -1)
        mask = batch.context.get(Signal.TEXT_EMBEDDING_MASK)
        if mask is not None:
            mask = mask.expand(batch.batch_size, -1)
        dtype = None if o.compute_dtype == "model" else torch.float32
        index = cdpruner_select(batch.features, image, text, k, views, mask, o.relevance == "negated",
                                o.normalize, o.theta, dtype)
        return batch.take(index)
