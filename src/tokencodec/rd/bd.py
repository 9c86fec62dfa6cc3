"""Bjøntegaard-delta metrics on top of the reference ``bjontegaard`` package.

- BD-rate: the average rate difference at equal quality, in % (rates on a log axis).
- BD-quality: the average quality difference at equal rate (BD-PSNR for PSNR), in the metric's
  unit, test minus anchor.
- ``linear_rate=True``: rates on a linear axis, for rates such as token counts where the log axis
  of bit rates has no footing. BD-rate then reports the mean rate difference over the overlap
  divided by the anchor's mean rate there (in %), and the absolute difference in rate units.

The package returns NaN with a warning when curves do not overlap; here that is an explicit
``status="no-overlap"`` result. The overlap fraction (intersection over union of the integration
axis, as the package defines it) is always reported, with a ``BDOverlapWarning`` below 75 %.
``monotonic=True`` first fits quality as a non-decreasing function of rate (isotonic regression)
for noisy curves, such as token sweeps on small evaluation sets.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import bjontegaard
import numpy as np
from scipy.optimize import isotonic_regression

from tokencodec.rd.curve import Curve

Method = Literal["pchip", "akima"]
METHODS = ("pchip", "akima")
MIN_OVERLAP = 0.75


class BDOverlapWarning(UserWarning):
    pass


@dataclass(frozen=True)
class BDResult:
    kind: Literal["bd-rate", "bd-quality"]
    value: float | None       # None when the curves do not overlap
    unit: str                 # "%" for BD-rate; the metric's unit for BD-quality
    overlap: float            # fraction of the union of both ranges that both curves cover
    status: Literal["ok", "low-overlap", "no-overlap"]
    method: str
    rate: str
    metric: str
    linear_rate: bool
    absolute: float | None = None  # linear BD-rate: mean rate difference in rate units

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.value is None:
            return "no overlap"
        text = f"{self.value:+.2f}{' ' if self.unit not in ('%', '') else ''}{self.unit}"
        return text + (f" (overlap {self.overlap:.0%})" if self.status == "low-overlap" else "")


def _prepare(rate: np.ndarray, quality: np.ndarray, higher_is_better: bool, monotonic: bool,
             linear_rate: bool, label: str) -> tuple[np.ndarray, np.ndarray]:
    rate = np.asarray(rate, dtype=float)
    quality = np.asarray(quality, dtype=float)
    if rate.shape != quality.shape or rate.ndim != 1:
        raise ValueError(f"{label}: rates and qualities must be 1-D and of equal length")
    keep = np.isfinite(rate) & np.isfinite(quality)
    rate, quality = rate[keep], quality[keep]
    if len(rate) < 2:
        raise ValueError(f"{label}: BD metrics need at least 2 finite points, got {len(rate)}")
    if not linear_rate and np.any(rate <= 0):
        raise ValueError(f"{label}: log-rate BD needs positive rates; use linear_rate=True for counts with 0")
    # Points measured at the same rate (e.g. two budgets that round to one token count) are one
    # measurement of that rate: average them rather than leave the curve ambiguous.
    rate, inverse = np.unique(rate, return_inverse=True)
    quality = np.bincount(inverse, weights=quality) / np.bincount(inverse)
    if len(rate) < 2:
        raise ValueError(f"{label}: BD metrics need at least 2 distinct rates")
    if not higher_is_better:
        quality = -quality  # work with "higher is better" throughout; signs are restored at the end
    if monotonic:
        quality = isotonic_regression(quality, increasing=True).x
        # Flat runs carry no rate information at equal quality: keep each run's cheapest point.
        first = np.concatenate([[True], np.diff(quality) > 0])
        rate, quality = rate[first], quality[first]
        if len(rate) < 2:
            raise ValueError(f"{label}: the monotonic fit is flat; BD metrics are undefined")
    return rate, quality


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    return max(hi - lo, 0.0) / union if union > 0 else 0.0


def _strictly_increasing(x: np.ndarray, y: np.ndarray, label: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"{label}: repeated {axis} values make the curve ambiguous; "
                         "pass monotonic=True to fit a monotonic curve first")
    return x, y


def _result(kind, value, unit, overlap, method, rate, metric, linear_rate, absolute=None) -> BDResult:
    status = "no-overlap" if value is None else ("low-overlap" if overlap < MIN_OVERLAP else "ok")
    if status == "low-overlap":
        warnings.warn(f"{kind} of {metric} over {rate}: the curves overlap on only {overlap:.0%} "
                      f"(< {MIN_OVERLAP:.0%}); the value is an extrapolation-prone average",
                      BDOverlapWarning, stacklevel=3)
    return BDResult(kind, value, unit, overlap, status, method, rate, metric, linear_rate, absolute)


def bd_rate_arrays(rate_anchor, quality_anchor, rate_test, quality_test, *, method: Method = "pchip",
                   higher_is_better: bool = True, linear_rate: bool = False, monotonic: bool = False,
                   rate: str = "rate", metric: str = "quality") -> BDResult:
    """BD-rate of test against anchor, in % (negative: the test needs fewer bits/tokens)."""
    _check_method(method)
    ra, qa = _prepare(rate_anchor, quality_anchor, higher_is_better, monotonic, linear_rate, "anchor")
    rt, qt = _prepare(rate_test, quality_test, higher_is_better, monotonic, linear_rate, "test")
    overlap = _overlap(qa, qt)
    if overlap == 0:
        return _result("bd-rate", None, "%", 0.0, method, rate, metric, linear_rate)
    qa, ra = _strictly_increasing(qa, ra, "anchor", "quality")
    qt, rt = _strictly_increasing(qt, rt, "test", "quality")
    if not linear_rate:
        value = bjontegaard.bd_rate(ra, qa, rt, qt, method, require_matching_points=False, min_overlap=0)
        return _result("bd-rate", float(value), "%", overlap, method, rate, metric, False)
    diff, f_anchor, _ = bjontegaard.bd_linear(qa, ra, qt, rt, method, require_matching_points=False,
                                              interpolators=True, min_overlap=0)
    lo, hi = max(qa.min(), qt.min()), min(qa.max(), qt.max())
    anchor_mean = float(f_anchor.integrate(lo, hi)) / (hi - lo)
    return _result("bd-rate", 100.0 * float(diff) / anchor_mean, "%", overlap, method, rate, metric, True,
                   absolute=float(diff))


def bd_quality_arrays(rate_anchor, quality_anchor, rate_test, quality_test, *, method: Method = "pchip",
                      higher_is_better: bool = True, linear_rate: bool = False, monotonic: bool = False,
                      rate: str = "rate", metric: str = "quality", unit: str = "") -> BDResult:
    """BD-quality (BD-PSNR, BD-accuracy…): mean of test − anchor at equal rate, in the metric's unit."""
    _check_method(method)
    ra, qa = _prepare(rate_anchor, quality_anchor, higher_is_better, monotonic, linear_rate, "anchor")
    rt, qt = _prepare(rate_test, quality_test, higher_is_better, monotonic, linear_rate, "test")
    xa, xt = (ra, rt) if linear_rate else (np.log10(ra), np.log10(rt))
    overlap = _overlap(xa, xt)
    if overlap == 0:
        return _result("bd-quality", None, unit, 0.0, method, rate, metric, linear_rate)
    xa, qa = _strictly_increasing(xa, qa, "anchor", "rate")
    xt, qt = _strictly_increasing(xt, qt, "test", "rate")
    value = float(bjontegaard.bd_linear(xa, qa, xt, qt, method, require_matching_points=False, min_overlap=0))
    if not higher_is_better:
        value = -value
    return _result("bd-quality", value, unit, overlap, method, rate, metric, linear_rate)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown interpolation {method!r}; allowed: {', '.join(METHODS)}")


def _columns(anchor: Curve, test: Curve, rate: str, metric: str):
    for curve in (anchor, test):
        for name in (rate, metric):
            if name not in curve.measures:
                raise KeyError(f"curve {curve.name!r} has no measure {name!r}; it has {sorted(curve.measures)}")
    return anchor.column(rate), anchor.column(metric), test.column(rate), test.column(metric)


def bd_rate(anchor: Curve, test: Curve, rate: str = "bpp", metric: str = "psnr-rgb", **kwargs) -> BDResult:
    m = anchor.measures[metric] if metric in anchor.measures else None
    hib = kwargs.pop("higher_is_better", m.higher_is_better if m else True)
    return bd_rate_arrays(*_columns(anchor, test, rate, metric), higher_is_better=hib, rate=rate,
                          metric=metric, **kwargs)


def bd_quality(anchor: Curve, test: Curve, rate: str = "bpp", metric: str = "psnr-rgb", **kwargs) -> BDResult:
    m = anchor.measures[metric] if metric in anchor.measures else None
    hib = kwargs.pop("higher_is_better", m.higher_is_better if m else True)
    return bd_quality_arrays(*_columns(anchor, test, rate, metric), higher_is_better=hib, rate=rate,
                             metric=metric, unit=m.unit if m else "", **kwargs)


__all__ = ["BDResult", "BDOverlapWarning", "bd_rate", "bd_quality", "bd_rate_arrays", "bd_quality_arrays",
           "METHODS", "MIN_OVERLAP"]
