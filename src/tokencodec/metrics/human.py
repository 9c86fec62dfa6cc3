"""Human-observer metrics on 8-bit RGB images.

Conventions follow CompressAI's evaluation: PSNR is computed over all R, G, B samples of one
image and then averaged over images (not computed from the mean MSE); SSIM and MS-SSIM come from
``pytorch_msssim`` with data range 255, a Gaussian window of 11 and σ = 1.5, the five standard
MS-SSIM scales and weights.
"""

from __future__ import annotations

import numpy as np
import torch
from pytorch_msssim import ms_ssim as _ms_ssim
from pytorch_msssim import ssim as _ssim

MAX_VALUE = 255.0
# MS-SSIM downsamples 4 times and needs the 11-tap window to fit at the coarsest scale.
MS_SSIM_MIN_SIDE = (11 - 1) * 2**4 + 1


def _check_pair(reference: np.ndarray, distorted: np.ndarray) -> None:
    if reference.shape != distorted.shape:
        raise ValueError(f"image shapes differ: reference {reference.shape} vs distorted {distorted.shape}")
    if reference.ndim != 3 or reference.shape[2] != 3:
        raise ValueError(f"expected H×W×3 RGB arrays, got shape {reference.shape}")


def psnr(reference: np.ndarray, distorted: np.ndarray) -> float:
    """PSNR in dB over all RGB samples of one image; ∞ for identical images."""
    _check_pair(reference, distorted)
    # Row bands, so a 48-Mpx image never holds float64 copies of itself; the sum stays exact (int64).
    total, step = 0, max(1, (1 << 22) // max(1, reference.shape[1] * 3))
    for y in range(0, reference.shape[0], step):
        d = reference[y:y + step].astype(np.int32) - distorted[y:y + step].astype(np.int32)
        total += int(np.dot(d.ravel().astype(np.int64), d.ravel().astype(np.int64)))
    mse = total / reference.size
    return float("inf") if mse == 0 else float(10 * np.log10(MAX_VALUE**2 / mse))


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    # float32: 10x faster than float64 on CPU, and within 1e-6 of it for 8-bit images.
    return torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None]


def ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    _check_pair(reference, distorted)
    return float(_ssim(_to_tensor(reference), _to_tensor(distorted), data_range=MAX_VALUE, size_average=True))


def ms_ssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """MS-SSIM of one image; images smaller than 161 px on a side are refused (5 scales).

    pytorch_msssim computes MS-SSIM per channel and then averages the channels, so running it one
    channel at a time gives the same value with a third of the memory (48 Mpx: see
    benchmarks/large_image.py).
    """
    _check_pair(reference, distorted)
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs both sides >= {MS_SSIM_MIN_SIDE} px, got {reference.shape[:2]}")
    values = [float(_ms_ssim(_to_tensor(reference[..., c:c + 1]), _to_tensor(distorted[..., c:c + 1]),
                             data_range=MAX_VALUE, size_average=True)) for c in range(3)]
    return float(np.mean(values))


def unavailable(reference: np.ndarray) -> dict[str, str]:
    """The human metrics this image cannot have, each with the reason (a per-image status)."""
    h, w = reference.shape[:2]
    if min(h, w) < MS_SSIM_MIN_SIDE:
        return {"ms-ssim-rgb": f"a {w}×{h} image is smaller than the {MS_SSIM_MIN_SIDE} px per side that "
                               "MS-SSIM's 5 scales need"}
    return {}


def human_metrics(reference: np.ndarray, distorted: np.ndarray) -> dict[str, float]:
    """The RD-core measures of one decoded image: psnr-rgb and ms-ssim-rgb. A metric the image cannot
    have (see :func:`unavailable`) is left out, never returned as NaN, so no mean averages it silently."""
    out = {"psnr-rgb": psnr(reference, distorted)}
    if "ms-ssim-rgb" not in unavailable(reference):
        out["ms-ssim-rgb"] = ms_ssim(reference, distorted)
    return out
