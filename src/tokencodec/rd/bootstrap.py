"""Seeded bootstrap confidence intervals over items (images, samples), for point means and BD values.

A point's value is a mean over a finite set of items, so it carries sampling noise; a BD value
compares two curves measured on the *same* items, so its interval comes from a **paired**
bootstrap: each resample draws the items with replacement once and recomputes both curves' points
from those items (with the curves' own aggregation: pixel-weighted per-pixel rates, plain means
otherwise; see ``aggregate``), then the BD value with the same fit. The interval is the percentile
interval of the resampled values (95 % by default). A BD interval that contains 0 means the
difference is **within noise** at that level. None of the BD references (the JCT-VC spreadsheet,
``bjontegaard``, CompressAI) reports intervals; this is tokencodec's addition, and it needs the
per-item values a results file keeps in ``per_item`` (files without them get no interval).

Resamples: 1000 for point means (vectorised, cheap); 200 for BD values (each resample refits both
curves), enough to tell a difference from noise, not to quote the interval's third digit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tokencodec.rd.aggregate import item_matrix
from tokencodec.rd.curve import Curve

LEVEL = 0.95
MEAN_RESAMPLES = 1000
BD_RESAMPLES = 200
MAX_FAILED = 0.1          # more resamples than this share without a BD value: no interval (unstable fit)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float = LEVEL
    resamples: int = 0
    method: str = "percentile bootstrap over items"

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_json(self) -> dict:
        return {"low": self.low, "high": self.high, "level": self.level, "resamples": self.resamples,
                "method": self.method}

    def __str__(self) -> str:
        return f"[{self.low:.4g}, {self.high:.4g}]"


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _resampled_means(values: np.ndarray, weights: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """values items × points, weights per item, idx resamples × items → resamples × points (NaN-aware)."""
    v = values[idx]                                    # R × n × P
    w = weights[idx][..., None] * np.isfinite(v)       # missing values weigh nothing
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(v * w, axis=1) / w.sum(axis=1)


def _percentile(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return lo, hi


def point_intervals(curve: Curve, name: str, *, resamples: int = MEAN_RESAMPLES, level: float = LEVEL,
                    seed: int = 0) -> list[Interval | None] | None:
    """The interval of ``name`` at every point of ``curve`` (None at a point with fewer than 2 items), or
    None when the curve has no per-item values of ``name``."""
    found = item_matrix(curve, name)
    if found is None:
        return None
    _, values, weights = found
    counts = np.isfinite(values).sum(axis=0)
    if values.shape[0] < 2:
        return [None] * values.shape[1]
    means = _resampled_means(values, weights, _indices(values.shape[0], resamples, seed))
    lo, hi = _percentile(means, level)
    return [Interval(float(a), float(b), level, resamples) if c >= 2 else None
            for a, b, c in zip(np.atleast_1d(lo), np.atleast_1d(hi), counts, strict=True)]


def bd_interval(anchor: Curve, test: Curve, fit: Callable, rate: str, metric: str, *,
                resamples: int = BD_RESAMPLES, level: float = LEVEL, seed: int = 0, **bd_kwargs) -> Interval | None:
    """Paired-bootstrap interval of a BD value of ``test`` against ``anchor``: ``fit`` is the BD function on
    arrays (``rd.bd.bd_rate_arrays`` or ``bd_quality_arrays``), called with the same options as the value
    (``method``, ``linear_rate``, ``monotonic``, ``higher_is_better``). None when the curves lack per-item
    values of ``rate`` or ``metric`` on at least 2 shared items, or when over 10 % of the resamples give no BD
    value (the fit is unstable there)."""
    shared = [i for i in anchor.per_item if i in (test.per_item or {})]
    mats = [item_matrix(c, m, shared) for c in (anchor, test) for m in (rate, metric)]
    if any(m is None for m in mats) or len({tuple(m[0]) for m in mats}) != 1 or len(mats[0][0]) < 2:
        return None
    idx = _indices(len(mats[0][0]), resamples, seed)
    ar, aq, tr, tq = (_resampled_means(values, weights, idx) for _, values, weights in mats)
    fn = fit
    m = anchor.measures.get(metric)
    kw = {"higher_is_better": m.higher_is_better if m else True, **bd_kwargs}
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")            # a resample's low overlap is expected, not news
        for k in range(resamples):
            try:
                value = fn(ar[k], aq[k], tr[k], tq[k], **kw).value
            except ValueError:               # a resample whose fit is flat or ambiguous
                value = None
            if value is not None:
                found.append(value)
    if len(found) < (1 - MAX_FAILED) * resamples:
        return None
    lo, hi = _percentile(np.array(found), level)
    return Interval(float(lo), float(hi), level, resamples, "paired percentile bootstrap over items")


__all__ = ["BD_RESAMPLES", "Interval", "LEVEL", "MEAN_RESAMPLES", "bd_interval", "point_intervals"]
