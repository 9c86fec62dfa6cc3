"""Bjøntegaard-delta metrics on top of the reference ``bjontegaard`` package.

- BD-rate: the average rate difference at equal quality, in % (rates on a log axis).
- BD-quality: the average quality difference at equal rate (BD-PSNR for PSNR), in the metric's
  unit, test minus anchor.
- ``linear_rate=True``: rates on a linear axis, for rates such as token counts where the log axis
  of bit rates has no footing. BD-rate then reports the mean rate difference over the overlap
  divided by the anchor's mean rate there (in %), and the absolute difference in rate units.

The package returns NaN with a warning when curves do not overlap; here that is an explicit
``status="no-overlap"`` result. The overlap fraction (intersection over union of the integration
axis, as the package defines it) is always reported, with a ``BDOverlapWarning`` below 75 %, and
``bd_status`` is the one rule (API, ``bd`` command, reports) that prints a value as a number only at 75 %
or more. ``interval=True`` adds a paired-bootstrap interval over items (``rd.bootstrap``).
``monotonic=True`` first fits quality as a non-decreasing function of rate (isotonic regression)
for noisy curves, such as token sweeps on small evaluation sets.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, replace
from typing import Literal

import bjontegaard
import numpy as np
from scipy.optimize import isotonic_regression

from tokencodec.rd.bootstrap import Interval, bd_interval
from tokencodec.rd.curve import Curve

Method = Literal["pchip", "akima"]
METHODS = ("pchip", "akima")
MIN_OVERLAP = 0.75


class BDOverlapWarning(UserWarning):
    pass


def bd_status(value: float | None, overlap: float) -> Literal["ok", "low-overlap", "no-overlap"]:
    """The one status rule that the API, the ``bd`` command (its text and exit code) and reports share:
    ``no-overlap`` when there is no value, ``low-overlap`` below ``MIN_OVERLAP``, else ``ok``. Only an
    ``ok`` value is ever printed as a number."""
    if value is None or overlap <= 0:
        return "no-overlap"
    return "low-overlap" if overlap < MIN_OVERLAP else "ok"


@dataclass(frozen=True)
class BDResult:
    kind: Literal["bd-rate", "bd-quality"]
    value: float | None       # None when the curves do not overlap; kept below MIN_OVERLAP, but never printed
    unit: str                 # "%" for BD-rate; the metric's unit for BD-quality
    overlap: float            # fraction of the union of both ranges that both curves cover
    status: Literal["ok", "low-overlap", "no-overlap"]
    method: str
    rate: str
    metric: str
    linear_rate: bool
    absolute: float | None = None  # linear BD-rate: mean rate difference in rate units
    interval: Interval | None = None   # paired bootstrap over items (``with_interval``), when per-item values exist

    @property
    def shown(self) -> bool:
        """Whether the value may be printed as a number (status ``ok``)."""
        return self.status == "ok"

    @property
    def within_noise(self) -> bool | None:
        """True when the interval contains 0 (no difference at its level); None without an interval."""
        return None if self.interval is None or not self.shown else self.interval.contains(0.0)

    def number(self, x: float) -> str:
        if self.unit in ("%", "dB") or abs(x) >= 10:
            digits = 2
        else:
            digits = 4 if abs(x) < 0.1 else 3
        return f"{x:+.{digits}f}"

    def to_json(self) -> dict:
        out = asdict(self)
        out["value"] = self.value if self.shown else None      # withheld below the overlap threshold
        out["interval"] = self.interval.to_json() if self.interval and self.shown else None
        out["within_noise"] = self.within_noise
        return out

    def __str__(self) -> str:
        if self.status == "no-overlap":
            return "no overlap"
        if not self.shown:
            return f"withheld: overlap {self.overlap:.0%} < {MIN_OVERLAP:.0%}"
        space = " " if self.unit not in ("%", "") else ""
        text = f"{self.number(self.value)}{space}{self.unit}"
        if self.interval is not None:
            text += (f" [{self.number(self.interval.low)}, {self.number(self.interval.high)}]"
                     + (" within noise" if self.within_noise else ""))
        return text


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
    status = bd_status(value, overlap)
    if status == "low-overlap":
        warnings.warn(f"{kind} of {metric} over {rate}: the curves overlap on only {overlap:.0%} "
                      f"(< {MIN_OVERLAP:.0%}); the value is an extrapolation-prone average and is not printed",
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


def _with_interval(result: BDResult, anchor: Curve, test: Curve, interval: bool | int, seed: int,
                   kwargs: dict) -> BDResult:
    if not interval or not result.shown:
        return result
    fit = {k: kwargs[k] for k in ("method", "linear_rate", "monotonic", "higher_is_better") if k in kwargs}
    resamples = {} if interval is True else {"resamples": int(interval)}
    arrays = bd_rate_arrays if result.kind == "bd-rate" else bd_quality_arrays
    found = bd_interval(anchor, test, arrays, result.rate, result.metric, seed=seed, **resamples, **fit)
    return replace(result, interval=found)


def bd_rate(anchor: Curve, test: Curve, rate: str = "bpp", metric: str = "psnr-rgb", *, interval: bool | int = False,
            seed: int = 0, **kwargs) -> BDResult:
    """BD-rate of two curves. ``interval=True`` (or a number of resamples) adds a paired-bootstrap interval
    over the items both curves share (see ``rd.bootstrap``); files without per-item values get none."""
    m = anchor.measures[metric] if metric in anchor.measures else None
    kwargs.setdefault("higher_is_better", m.higher_is_better if m else True)
    result = bd_rate_arrays(*_columns(anchor, test, rate, metric), rate=rate, metric=metric, **kwargs)
    return _with_interval(result, anchor, test, interval, seed, kwargs)


def bd_quality(anchor: Curve, test: Curve, rate: str = "bpp", metric: str = "psnr-rgb", *,
               interval: bool | int = False, seed: int = 0, **kwargs) -> BDResult:
    """BD-quality of two curves; ``interval`` as for ``bd_rate``."""
    m = anchor.measures[metric] if metric in anchor.measures else None
    kwargs.setdefault("higher_is_better", m.higher_is_better if m else True)
    result = bd_quality_arrays(*_columns(anchor, test, rate, metric), rate=rate, metric=metric,
                               unit=m.unit if m else "", **kwargs)
    return _with_interval(result, anchor, test, interval, seed, kwargs)


__all__ = ["BDResult", "BDOverlapWarning", "bd_rate", "bd_quality", "bd_rate_arrays", "bd_quality_arrays",
           "bd_status", "METHODS", "MIN_OVERLAP"]
