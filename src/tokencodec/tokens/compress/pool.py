"""Pooling baselines: 2-D average pooling ("pool-avg") and bilinear resizing ("pool-resize") of the grid.

Baselines as in UniPruneBench (arXiv 2511.02650, ``pool_pre_llm``: adaptive average pooling of the
H×W token grid) and VTC-Bench (arXiv 2510.07143, "downsampling": resizing the image by a factor f so
that about N/f² tokens remain). We follow neither repository's code literally (there is no LLaVA path
in either); the choices the cards leave open:

- **Budget → grid.** K tokens map to an output grid h'×w' that keeps the aspect ratio of the h×w grid:
  the candidates are (a, round(a·w/h)) for a = 1…h and (round(b·h/w), b) for b = 1…w, clamped to the
  grid; we take the one whose h'·w' is nearest K (ties toward fewer tokens), or with ``at_most=True``
  the largest one with h'·w' ≤ K. The kept count is h'·w' (times the frames), so it equals K only
  when K fits such a grid: 24×24 gives 64 → 8×8, 144 → 12×12, 128 → 11×11 = 121, 192 → 14×14 = 196.
  UniPruneBench allows only 4/16/25 outputs; we allow any grid.
- **Windows.** ``pool-avg`` uses PyTorch's adaptive average pooling windows
  [⌊i·h/h'⌋, ⌈(i+1)·h/h'⌉), the operator UniPruneBench calls. When h' does not divide h neighbouring
  windows overlap, so a patch may feed two tokens and the sizes then sum to more than N.
- **Bookkeeping.** Every output token is a linear combination of input tokens, given as a weight
  matrix. Its source map is every patch with a non-zero weight (for ``pool-avg``, the pooled window),
  its size is the summed size of those patches (patches pooled), and its position is the patch at the
  weight centroid (for even windows, the top-left patch of the central 2×2). Per-token signals follow
  that centre patch.
- **Resize.** ``pool-resize`` is bilinear interpolation of the feature grid (half-pixel centres,
  ``align_corners=False``). By default it anti-aliases (triangle filter widened by the scale factor, as
  PIL's image resize does, which VTC-Bench uses), so every patch contributes; ``antialias=False`` gives
  plain bilinear sampling, whose tokens read only the 2×2 patches around each sample point. Its source
  map is the support of the interpolation weights, i.e. the patches that actually feed each token.
- **Video.** Each frame is pooled separately to the same h'×w' grid, chosen for K/t tokens per frame.
- **No host sync.** The operator depends only on the shapes: it is built on the host and cached on the
  device (:func:`pool_plan`), so a call copies nothing after the first one per shape.

The input must be the full grid in raster order (N = t·h·w tokens, no padding mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.transfer import on_device


def target_grid(h: int, w: int, k: float, at_most: bool = False) -> tuple[int, int]:
    """The aspect-preserving grid h'×w' whose size is nearest k (or the largest ≤ k)."""
    cands = {(a, min(w, max(1, round(a * w / h)))) for a in range(1, h + 1)}
    cands |= {(min(h, max(1, round(b * h / w))), b) for b in range(1, w + 1)}
    if at_most:
        fits = [c for c in cands if c[0] * c[1] <= k] or [min(cands, key=lambda c: c[0] * c[1])]
        return max(fits, key=lambda c: (c[0] * c[1], -abs(c[0] / c[1] - h / w)))
    return min(cands, key=lambda c: (abs(c[0] * c[1] - k), c[0] * c[1], abs(c[0] / c[1] - h / w)))


def axis_operator(n: int, m: int, mode: str, antialias: bool = True) -> Tensor:
    """The [m, n] matrix resampling one axis from n to m, read off by resampling the identity basis.

    The other axis is a dummy of width 2 left unchanged: PyTorch's antialiased bilinear
    interpolation mis-weights any axis when the other output axis has size 1 (torch 2.13).
    """
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1).repeat(1, 1, 1, 2)
    if mode == "avg":
        y = F.adaptive_avg_pool2d(basis, (m, 2))
    elif mode == "bilinear":
        y = F.interpolate(basis, size=(m, 2), mode="bilinear", align_corners=False, antialias=antialias)
    else:
        raise ValueError(f"unknown pooling mode {mode!r}; use 'avg' or 'bilinear'")
    return y[:, 0, :, 0].T.contiguous()


def grid_operator(h: int, w: int, out: tuple[int, int], mode: str, antialias: bool = True) -> Tensor:
    """The [h'·w', h·w] matrix of a separable 2-D resampling of a raster-order grid."""
    return torch.kron(axis_operator(h, out[0], mode, antialias), axis_operator(w, out[1], mode, antialias))


def centre_patches(op: Tensor, w: int) -> Tensor:
    """For each row of a grid operator, the raster index of the patch nearest its weight centroid."""
    idx = torch.arange(op.shape[1], dtype=op.dtype)
    wt = op.clamp_min(0)
    wt = wt / wt.sum(1, keepdim=True)
    # round half down so even windows pick the top-left of their central 2×2
    row = torch.ceil(wt @ torch.div(idx, w, rounding_mode="floor") - 0.5 - 1e-9)
    col = torch.ceil(wt @ (idx % w) - 0.5 - 1e-9)
    return (row * w + col).long()


@on_device
def pool_plan(h: int, w: int, t: int, out: tuple[int, int], mode: str, antialias: bool) -> tuple[Tensor, Tensor]:
    """(weights [K, N], representatives [K]) of pooling t frames of h×w to ``out`` each; built on the host once
    per shape and kept on the device (``pool_plan(device, ...)``)."""
    op = grid_operator(h, w, out, mode, antialias)
    rep = centre_patches(op, w)
    # frames are pooled separately: a block-diagonal operator over the t frames
    return torch.block_diag(*[op] * t), torch.cat([rep + f * h * w for f in range(t)])


def pool_grid(batch: TokenBatch, k: int, mode: str, at_most: bool = False,
              antialias: bool = True) -> TokenBatch:
    if batch.mask is not None or batch.num_tokens != batch.num_original:
        raise ValueError("pooling needs the full token grid in raster order (no padding, nothing dropped)")
    (h, w), t = batch.grid, batch.frames
    op, rep = pool_plan(batch.features.device, h, w, t, target_grid(h, w, k / t, at_most), mode, antialias)
    b = batch.batch_size
    weights = op.expand(b, -1, -1)
    return batch.combine(weights, weights > 0, rep.expand(b, -1))


@dataclass(frozen=True)
class PoolAvgOptions(MethodOptions):
    at_most: bool = False       # the largest grid with at most K tokens, not the nearest


@dataclass(frozen=True)
class PoolResizeOptions(MethodOptions):
    antialias: bool = True      # PIL-like resize; False = plain bilinear sampling
    at_most: bool = False


@register_method("pool-avg")
class PoolAvg(TokenMethod):
    """2-D adaptive average pooling of the token grid (UniPruneBench, arXiv 2511.02650).

    Options: ``at_most`` (bool, default False) picks the largest aspect-preserving grid with at most K
    tokens instead of the nearest one. See the module docstring for every choice.
    """

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = ()
    needs_cls = False
    cls_fallback = "not needed: pooling reads only the patch grid"
    paper = "UniPruneBench pool_pre_llm baseline, arXiv 2511.02650"
    Options = PoolAvgOptions

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        k = budget.tokens(batch.num_original)
        return pool_grid(batch, k, "avg", at_most=self.options.at_most)


@register_method("pool-resize")
class PoolResize(TokenMethod):
    """Bilinear resize of the token grid (the VTC-Bench downsampling baseline, arXiv 2510.07143).

    Options: ``antialias`` (default True, PIL-like resize; False = plain bilinear sampling) and
    ``at_most`` as for pool-avg. Unlike VTC-Bench it resizes the token grid, not the image, so no
    JPEG re-encode and the count is exact. See the module docstring for every choice.
    """

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = ()
    needs_cls = False
    cls_fallback = "not needed: resizing reads only the patch grid"
    paper = "VTC-Bench downsampling baseline, arXiv 2510.07143"
    Options = PoolResizeOptions

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        k = budget.tokens(batch.num_original)
        return pool_grid(batch, k, "bilinear", at_most=self.options.at_most, antialias=self.options.antialias)
