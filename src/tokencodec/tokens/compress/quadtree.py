"""``quadtree``: complexity-adaptive partition of the token grid (QPID-like), a codec's block partitioning.

HEVC and VVC split a coding tree unit into smaller blocks where the picture is detailed and keep
large blocks where it is flat. Here the token grid is the unit: a quadtree whose leaves become one
token each, the size-weighted mean of the tokens they cover, so flat regions cost one token and
detailed ones keep full resolution. QPID (case study I of arXiv 2601.20742) has no public code;
every choice it leaves open is ours:

- **Density** of a block (``criterion``): ``"sse"`` (default), the squared error of replacing its
  tokens by their mean (Σ‖xᵢ − x̄‖², what merging it costs, the distortion a split saves);
  ``"variance"``, the same per token (SSE / area); ``"uniform"``, the block's area, i.e. a
  quadtree that ignores content (the quadtree-only ablation: it tends to a uniform grid).
- **Splitting**: greedy, the densest leaf first (a max-heap), each side halved (⌈s/2⌉ + ⌊s/2⌋; a side of
  1 is not split, so a block gives 4 or 2 children). A 4-way split that would exceed the budget is
  made a 2-way split along the longer side (adding one token), so the count meets K exactly.
- **Merged token**: size-weighted mean of the block's features; its source is the block, its size
  the block's summed sizes, its position the block's centre patch (top-left of the central 2×2).
  Output in raster order of those positions.
- **Video / crops**: each frame its own tree, K split evenly over the frames.
- **Ablation ``mode="select"``** (density-only selection): no partition; each token scored by its
  squared distance to the mean of its 3×3 neighbourhood, the top K kept, the rest dropped.

Block sums come from 2-D prefix sums (integral images), so each density is O(D).

Host syncs: the greedy tree is grown on the host (a heap, one block at a time), so ``mode="partition"``
reads the features and sizes to the host once per call (one sync); the leaves go back without
blocking. ``mode="select"`` runs on the device: none.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, keep_top_k, register_method
from tokencodec.tokens.transfer import to_device, to_host

Block = tuple[int, int, int, int]     # y0, x0, y1, x1 (half-open)


def _prefix(x: Tensor) -> Tensor:
    """[h+1, w+1, ...] 2-D inclusive prefix sums with a zero border."""
    return F.pad(x.cumsum(0).cumsum(1), (0,) * (2 * (x.dim() - 2)) + (1, 0, 1, 0))


def _block_sum(p: Tensor, b: Block) -> Tensor:
    y0, x0, y1, x1 = b
    return p[y1, x1] - p[y0, x1] - p[y1, x0] + p[y0, x0]


def block_density(sums: tuple[Tensor, Tensor, Tensor], b: Block, criterion: str) -> float:
    """Density of block ``b`` from the prefix sums of (size, size·x, size·‖x‖²)."""
    area = (b[2] - b[0]) * (b[3] - b[1])
    if criterion == "uniform":
        return float(area)
    s, sx, sxx = (_block_sum(p, b) for p in sums)
    sse = float(sxx.sum() - (sx * sx).sum() / s.clamp_min(1e-12))
    return sse if criterion == "sse" else sse / area


def split(b: Block, ways: int) -> list[Block]:
    """The children of ``b``: 4 (both sides halved), or 2 (the longer side), fewer where a side is 1."""
    y0, x0, y1, x1 = b
    ym, xm = y0 + (y1 - y0 + 1) // 2, x0 + (x1 - x0 + 1) // 2
    if ways == 2:
        return [(y0, x0, ym, x1), (ym, x0, y1, x1)] if y1 - y0 >= x1 - x0 else [(y0, x0, y1, xm), (y0, xm, y1, x1)]
    ys = [(y0, ym), (ym, y1)] if y1 - y0 > 1 else [(y0, y1)]
    xs = [(x0, xm), (xm, x1)] if x1 - x0 > 1 else [(x0, x1)]
    return [(a, c, bb, d) for a, bb in ys for c, d in xs]


def partition(features: Tensor, sizes: Tensor, h: int, w: int, k: int, criterion: str = "sse") -> list[Block]:
    """The leaves of the greedy quadtree over one [h·w, D] grid with exactly min(k, h·w) leaves."""
    x = features.double().reshape(h, w, -1)
    s = sizes.double().reshape(h, w, 1)
    sums = (_prefix(s), _prefix(s * x), _prefix(s * x * x))
    heap = [(-block_density(sums, (0, 0, h, w), criterion), (0, 0, h, w))]
    leaves: list[Block] = []
    count = 1
    while heap and count < k:
        _, b = heapq.heappop(heap)
        if (b[2] - b[0]) * (b[3] - b[1]) == 1:
            leaves.append(b)
            continue
        children = split(b, 4)
        if count + len(children) - 1 > k:
            children = split(b, 2)
        count += len(children) - 1
        for c in children:
            heapq.heappush(heap, (-block_density(sums, c, criterion), c))
    return leaves + [b for _, b in heap]


def merge_leaves(batch: TokenBatch, leaves: list[list[tuple[int, Block]]]) -> TokenBatch:
    """One token per (frame, leaf) (size-weighted mean), per image; the same count in every image."""
    (h, w), t = batch.grid, batch.frames
    bsz, k, dev = batch.batch_size, len(leaves[0]), batch.features.device
    members = torch.zeros(bsz, k, t, h, w, dtype=torch.bool)
    rep = torch.zeros(bsz, k, dtype=torch.long)
    for i, image in enumerate(leaves):
        # raster order of the centre patches, frame by frame
        image = sorted(image, key=lambda fb: (fb[0], (fb[1][0] + fb[1][2] - 1) // 2, (fb[1][1] + fb[1][3] - 1) // 2))
        for j, (f, (y0, x0, y1, x1)) in enumerate(image):
            members[i, j, f, y0:y1, x0:x1] = True
            rep[i, j] = f * h * w + ((y0 + y1 - 1) // 2) * w + (x0 + x1 - 1) // 2
    members, rep = to_device(members.reshape(bsz, k, t * h * w), dev), to_device(rep, dev)
    weights = members.to(torch.float32) * batch.sizes.float()[:, None, :]
    weights = weights / weights.sum(-1, keepdim=True)
    return batch.combine(weights, members, rep)


def local_density(batch: TokenBatch) -> Tensor:
    """[B, N] each token's squared distance to the mean of its 3×3 neighbourhood (edges replicated, per frame)."""
    (h, w), t, x = batch.grid, batch.frames, batch.features.float()
    grid = x.reshape(x.shape[0] * t, h, w, -1).permute(0, 3, 1, 2)
    mean = F.avg_pool2d(F.pad(grid, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return (grid - mean).pow(2).sum(1).reshape(x.shape[0], -1)


@dataclass(frozen=True)
class QuadtreeOptions(MethodOptions):
    criterion: Literal["sse", "variance", "uniform"] = "sse"   # what makes a block worth splitting
    mode: Literal["partition", "select"] = "partition"         # select: density-only selection (ablation)


@register_method("quadtree")
class Quadtree(TokenMethod):
    """Greedy quadtree over the token grid, one merged token per leaf, K met exactly (module docstring)."""

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = ()
    needs_cls = False
    cls_fallback = "not needed: the partition reads only the patch features"
    paper = "tokencodec (coding → tokens): HEVC/VVC block partitioning; cf. QPID (arXiv 2601.20742, no public code)"
    Options = QuadtreeOptions

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        if batch.num_tokens != batch.num_original:
            raise ValueError("quadtree needs the full token grid in raster order")
        k = budget.tokens(batch.num_tokens)
        if self.options.mode == "select":
            return keep_top_k(batch, local_density(batch), k)
        (h, w), t = batch.grid, batch.frames
        per_frame = [k // t + (f < k % t) for f in range(t)]      # frames (video, crops) split separately
        if min(per_frame) < 1:
            raise ValueError(f"quadtree keeps at least one token per frame: K={k} for {t} frames")
        n = h * w
        features, sizes = to_host(batch.features, batch.sizes)     # the one read: the tree is grown on the host
        leaves = [[(f, b) for f in range(t) for b in partition(features[i, f * n:(f + 1) * n],
                                                               sizes[i, f * n:(f + 1) * n], h, w,
                                                               per_frame[f], self.options.criterion)]
                  for i in range(batch.batch_size)]
        return merge_leaves(batch, leaves)


__all__ = ["Quadtree", "block_density", "local_density", "merge_leaves", "partition", "split"]
