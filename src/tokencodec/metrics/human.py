"""Human-observer metrics on 8-bit RGB images.

Conventions follow CompressAI's evaluation: PSNR is computed over all R, G, B samples of one
image and then averaged over images (not computed from the mean MSE); SSIM and MS-SSIM come from
``pytorch_msssim`` with data range 255, a Gaussian window of 11 and σ = 1.5, the five standard
MS-SSIM scales and weights.
"""

from __future__ import annotations

import numpy as np
import torch
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


def ms_ssim(reference: np.ndarray, distorted: np.ndarray, band_pixels: int = 1 << 21) -> float:
    """MS-SSIM of one image; images smaller than 161 px on a side are refused (5 scales).

    The value is pytorch_msssim's (same window, weights, constants, average pooling with its padding
    rule), computed so that a 48-Mpx image fits in memory: one channel at a time (pytorch_msssim
    averages per-channel values, so this is exact), and at each scale the SSIM and contrast maps are
    formed in horizontal bands of about ``band_pixels`` pixels with a 10-row halo (the valid 11-tap
    window), their means combined weighted by each band's valid rows. See benchmarks/large_image.py.
    """
    _check_pair(reference, distorted)
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs both sides >= {MS_SSIM_MIN_SIDE} px, got {reference.shape[:2]}")
    return float(np.mean([_ms_ssim_channel(reference[..., c], distorted[..., c], band_pixels) for c in range(3)]))


_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _banded_ssim(x: torch.Tensor, y: torch.Tensor, win: torch.Tensor, band_pixels: int) -> tuple[float, float]:
    """(mean SSIM, mean contrast-structure) over the valid map of one [1, 1, H, W] scale, in row bands."""
    from pytorch_msssim.ssim import _ssim as ssim_means  # (per-channel SSIM, CS) means of the valid maps

    h, w = x.shape[-2:]
    halo = win.shape[-1] - 1
    valid_h = h - halo
    rows = max(1, band_pixels // max(w, 1))
    ssim_sum = cs_sum = 0.0
    for start in range(0, valid_h, rows):
        stop = min(valid_h, start + rows)
        s, c = ssim_means(x[..., start:stop + halo, :], y[..., start:stop + halo, :], data_range=MAX_VALUE, win=win,
                     size_average=False)
        ssim_sum += float(s) * (stop - start)
        cs_sum += float(c) * (stop - start)
    return ssim_sum / valid_h, cs_sum / valid_h


def _ms_ssim_channel(ref: np.ndarray, dist: np.ndarray, band_pixels: int) -> float:
    import torch.nn.functional as F
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    x = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(dist, dtype=np.float32))[None, None]
    win = _fspecial_gauss_1d(11, 1.5).repeat([1, 1, 1, 1])  # [C=1, 1, 1, 11], as pytorch_msssim builds it
    mcs = []
    for level in range(len(_WEIGHTS)):
        s, cs = _banded_ssim(x, y, win, band_pixels)
        if level < len(_WEIGHTS) - 1:
            mcs.append(max(cs, 0.0))
            padding = [d % 2 for d in x.shape[2:]]
            x, y = F.avg_pool2d(x, kernel_size=2, padding=padding), F.avg_pool2d(y, kernel_size=2, padding=padding)
    values = [*mcs, max(s, 0.0)]
    return float(np.prod([v ** wt for v, wt in zip(values, _WEIGHTS, strict=True)]))


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
