"""``dct``: transform before reduction, the first stage of a visual codec applied to the token grid.

A codec decorrelates pixels with a 2-D DCT and spends its rate on the low frequencies. Here the
token grid (h×w, per feature channel) goes through an orthonormal 2-D DCT-II, keeps the h'×w'
lowest-frequency coefficients and comes back with an h'×w' inverse DCT: spectral (ideal low-pass)
resampling to a smaller grid, so the K = h'·w' output tokens stay in the model's feature space and
carry the grid's smooth content with no aliasing of what is kept. Separable and linear: one
[h'w', hw] operator per grid (:func:`dct_operator`), cached by shape.

Pooling is its box-filter special case: average pooling multiplies the spectrum by the box
window's sinc and keeps the aliases of the discarded frequencies; the DCT low-pass keeps the
first h'×w' coefficients exactly (scaled by √(h'w'/hw), so a constant grid stays constant) and
drops the rest. Both read only the grid, no attention signal.

Choices left open, and ours:

- **Zone** (``zone``). ``"rect"`` (default): the aspect-preserving h'×w' of the pooling baselines
  (:func:`~tokencodec.tokens.compress.pool.target_grid`: 24×24 with K = 64 → 8×8). ``"energy"``:
  per image, the h'×w' with h'·w' ≤ K whose low-pass block holds the most DCT energy (summed over
  channels; the DC term included), the smallest such block when several hold it to 10⁻⁶: content
  that varies along one axis gets a band, and fewer than K tokens when the rest would carry no
  energy. Images of one batch may then keep different counts: the batch is padded and masked.
- **Bookkeeping.** The output token (i, j) stands for the adaptive-pooling window (i, j) of the
  input grid (its source, size and representative position are that window's, as for
  ``pool-avg``): the DCT weights themselves are global, so "every patch" would be true but useless.
- **Video.** Each frame separately, K/t tokens per frame (as pooling).
- **Host syncs.** ``zone="rect"``: none (the operator depends on shapes only and is cached on the
  device). ``zone="energy"``: one, the read of the DCT energies [B, h, w] that pick each image's grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, MethodOptions, TokenMethod, register_method
from tokencodec.tokens.compress.pool import centre_patches, grid_operator, target_grid
from tokencodec.tokens.transfer import on_device, to_device, to_host


def dct_matrix(n: int) -> Tensor:
    """The orthonormal DCT-II [n, n] (float64): row k is frequency k; its transpose is the inverse."""
    i = torch.arange(n, dtype=torch.float64)
    c = torch.cos(math.pi * (2 * i[None, :] + 1) * i[:, None] / (2 * n)) * math.sqrt(2 / n)
    c[0] /= math.sqrt(2)
    return c


def lowpass_axis(n: int, m: int) -> Tensor:
    """[m, n]: keep the m lowest DCT frequencies of a length-n signal, inverse at length m, mean kept."""
    return dct_matrix(m).T @ dct_matrix(n)[:m] * math.sqrt(m / n)


@lru_cache(maxsize=64)
def dct_operator(h: int, w: int, h2: int, w2: int) -> Tensor:
    """[h2·w2, h·w] separable 2-D low-pass resampling of a raster-order grid (float64)."""
    return torch.kron(lowpass_axis(h, h2), lowpass_axis(w, w2))


@on_device
def dct_matrices(h: int, w: int) -> tuple[Tensor, Tensor]:
    """The DCT-II of both grid axes, cached on the device (``dct_matrices(device, h, w)``)."""
    return dct_matrix(h), dct_matrix(w)


def block_energy(features: Tensor, h: int, w: int) -> Tensor:
    """[B, h, w]: energy of each 2-D DCT coefficient of a [B, h·w, D] grid, summed over channels."""
    x = features.double().reshape(features.shape[0], h, w, -1)
    ch, cw = dct_matrices(x.device, h, w)
    coeffs = torch.einsum("ph,bhwd,qw->bpqd", ch, x, cw)
    return coeffs.pow(2).sum(-1)


def energy_grid(energy: Tensor, k: float, tolerance: float = 1e-6) -> tuple[int, int]:
    """The h'×w' (h'·w' ≤ k) whose low-frequency block of ``energy`` [h, w] holds the most energy.

    Blocks within ``tolerance`` (relative) of the best count as holding it (float noise), and of those
    the one with the fewest tokens wins: a token that would carry no energy is not sent.
    """
    h, w = energy.shape
    cum = energy.cumsum(0).cumsum(1)                      # cum[a−1, b−1] = energy of the a×b block
    grids = [(a, b) for a in range(1, h + 1) for b in range(1, min(w, int(k // a)) + 1)]
    held = {g: float(cum[g[0] - 1, g[1] - 1]) for g in grids}
    best = max(held.values())
    return min((g for g in grids if held[g] >= best * (1 - tolerance)), key=lambda g: (g[0] * g[1], g))


def lowpass_plan(h: int, w: int, t: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """(weights [K, N], members [K, N], representatives [K]) of the low-pass to ``grid``, frame by frame, on
    the host; ``lowpass_plan_on(device, ...)`` is the same, cached on a device."""
    window = grid_operator(h, w, grid, "avg")
    op = torch.block_diag(*[dct_operator(h, w, *grid)] * t)
    members = torch.block_diag(*[window] * t) > 0
    rep = centre_patches(window, w)
    return op, members, torch.cat([rep + f * h * w for f in range(t)])


lowpass_plan_on = on_device(lowpass_plan)


def dct_reduce(batch: TokenBatch, k: int, zone: str = "rect", at_most: bool = False) -> TokenBatch:
    """The DCT low-pass of the grid to about ``k`` tokens (see the module docstring)."""
    if batch.mask is not None or batch.num_tokens != batch.num_original:
        raise ValueError("dct needs the full token grid in raster order (no padding, nothing dropped)")
    (h, w), t = batch.grid, batch.frames
    b, dev = batch.batch_size, batch.features.device
    if zone == "rect":
        op, members, rep = lowpass_plan_on(dev, h, w, t, target_grid(h, w, k / t, at_most))
        return batch.combine(op.expand(b, -1, -1), members.expand(b, -1, -1), rep.expand(b, -1))
    if t != 1:
        raise ValueError("dct zone='energy' takes single images; use zone='rect' for video")
    energy, = to_host(block_energy(batch.features, h, w))     # the one read: each image's grid comes from it
    plans = [lowpass_plan_on(dev, h, w, 1, energy_grid(energy[i], k)) for i in range(b)]
    counts = [len(r) for _, _, r in plans]
    width = max(counts)
    # one combine for the batch: each image's rows padded with zero weights to the widest, then masked
    op = torch.zeros(b, width, h * w, dtype=torch.float64, device=dev)
    members = torch.zeros(b, width, h * w, dtype=torch.bool, device=dev)
    rep = torch.zeros(b, width, dtype=torch.long, device=dev)
    for i, (o, m, r) in enumerate(plans):
        op[i, :len(r)], members[i, :len(r)], rep[i, :len(r)] = o, m, r
    out = batch.combine(op, members, rep)
    if min(counts) == width:
        return out
    return replace(out, mask=torch.arange(width, device=dev) < to_device(torch.tensor(counts), dev)[:, None])


@dataclass(frozen=True)
class DCTOptions(MethodOptions):
    zone: Literal["rect", "energy"] = "rect"   # the kept low-frequency block: aspect-preserving, or by energy
    at_most: bool = False                      # rect: the largest grid with at most K tokens, not the nearest


@register_method("dct")
class DCT(TokenMethod):
    """2-D DCT-II of the token grid, low-pass to h'×w', inverse DCT: spectral resampling (module docstring).

    Options: ``zone`` ("rect" aspect-preserving, default; "energy" per-image block with the most
    energy), ``at_most`` (rect: never more than K tokens).
    """

    stage = "pre-llm"
    guidance = "vision"
    knob = "keep"
    needs = ()
    needs_cls = False
    cls_fallback = "not needed: the transform reads only the patch grid"
    paper = "tokencodec (coding → tokens): the DCT of JPEG/H.26x applied to the token grid; cf. Fourier-VLM"
    Options = DCTOptions

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        k = budget.tokens(batch.num_original)
        return dct_reduce(batch, k, self.options.zone, self.options.at_most)


__all__ = ["DCT", "block_energy", "dct_matrix", "dct_operator", "dct_reduce", "energy_grid", "lowpass_axis",
           "lowpass_plan"]
