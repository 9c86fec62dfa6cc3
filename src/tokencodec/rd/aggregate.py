"""How the values of items (images, samples) at one operating point become the point's value.

- Per-pixel rates (``bpp``, ``payload_bpp``) are **pixel-weighted**: total bits ÷ total pixels of the
  items. A plain per-image mean lets one 4×4 image (65 bpp) outweigh a whole folder of photos and
  move every BD value; the per-image mean is reported beside it as ``bpp_mean`` (CompressAI's
  averaging, which equals the weighted value when all images have one size, as on Kodak).
- Every other measure is the mean over the items that have it (an image too small for MS-SSIM is
  left out of that mean only).

A curve stores each item's values in ``per_item[item][measure]`` (one value per point) and its pixel
count in ``per_item[item]["pixels"]``; files without pixel counts weigh items equally, which is how
they were averaged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tokencodec.rd.curve import Curve

PER_PIXEL = frozenset({"bpp", "payload_bpp"})      # pixel-weighted: total bits / total pixels
PIXELS = "pixels"                                  # the per-item key of an item's pixel count
# an image this many times smaller or larger (in pixels) than the folder's median is flagged
SIZE_OUTLIER_FACTOR = 16.0


def weighted(name: str) -> bool:
    return name in PER_PIXEL


def aggregate(name: str, values: Sequence[float], pixels: Sequence[float] | None = None) -> float:
    """The point value of ``name`` from its items' values (NaN/None left out); NaN when no item has it."""
    v = np.array([math.nan if x is None else x for x in values], dtype=float)
    keep = np.isfinite(v)
    if not keep.any():
        return math.nan
    if weighted(name) and pixels is not None:
        w = np.asarray(pixels, dtype=float)[keep]
        return float((v[keep] * w).sum() / w.sum())
    return float(v[keep].mean())


def item_matrix(curve: Curve, name: str, items: Sequence[str] | None = None
                ) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(item ids, values items × points with NaN where missing, weights per item) of ``name`` from the
    curve's per-item values; None when the curve has none for it. Weights are pixel counts for per-pixel
    rates when the file records them, else ones."""
    per_item = curve.per_item or {}
    ids = [i for i in (items if items is not None else per_item) if name in per_item.get(i, {})]
    if not ids:
        return None
    n_points = len(curve.points)
    rows = []
    for i in ids:
        values = per_item[i][name]
        if len(values) != n_points:
            return None                                  # a file edited by hand: no honest matrix
        rows.append([math.nan if x is None else float(x) for x in values])
    weights = np.ones(len(ids))
    if weighted(name) and all(PIXELS in per_item[i] for i in ids):
        weights = np.array([float(per_item[i][PIXELS][0]) for i in ids])
    return ids, np.array(rows, dtype=float), weights


def size_outliers(pixels: dict[str, int], factor: float = SIZE_OUTLIER_FACTOR) -> dict[str, str]:
    """Items whose pixel count is more than ``factor`` times below or above the median, with why."""
    if len(pixels) < 3:
        return {}
    median = float(np.median(list(pixels.values())))
    out = {}
    for item, n in pixels.items():
        if n * factor < median or n > median * factor:
            out[item] = f"{n} pixels, {n / median:.2g}× the median of {median:.0f}"
    return out


__all__ = ["PER_PIXEL", "PIXELS", "SIZE_OUTLIER_FACTOR", "aggregate", "item_matrix", "size_outliers", "weighted"]
