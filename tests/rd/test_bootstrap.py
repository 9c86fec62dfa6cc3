"""Honest aggregates: pixel-weighted rates, bootstrap intervals of means and of BD values, one BD status rule."""

import math
import warnings

import numpy as np
import pytest

from tokencodec.rd import Curve, OperatingPoint, bd_quality, bd_rate, bd_status
from tokencodec.rd.aggregate import PIXELS, aggregate, size_outliers
from tokencodec.rd.bd import MIN_OVERLAP
from tokencodec.rd.bootstrap import bd_interval, point_intervals


def test_per_pixel_rates_are_total_bits_over_total_pixels():
    # 27 photos of 512×768 at 0.5 bpp and one 4×4 image at 65 bpp (its header alone): the per-image mean
    # says 2.8 bpp, the folder really costs 0.5 bpp
    pixels = [512 * 768] * 27 + [16]
    bpp = [0.5] * 27 + [65.0]
    assert aggregate("bpp", bpp, pixels) == pytest.approx((0.5 * 27 * 512 * 768 + 65 * 16) / sum(pixels))
    assert aggregate("bpp", bpp, pixels) < 0.51
    assert aggregate("bpp_mean", bpp) == pytest.approx(np.mean(bpp)) and aggregate("bpp_mean", bpp) > 2.8
    assert aggregate("psnr-rgb", [30.0, math.nan, 40.0], [1, 1, 100]) == 35.0       # others: a plain mean
    assert math.isnan(aggregate("bpp", [None, None], [1, 1]))
    assert size_outliers({f"p{i}": 512 * 768 for i in range(27)} | {"tiny.png": 16}).keys() == {"tiny.png"}
    assert size_outliers({"a": 100, "b": 120, "c": 90}) == {}


def _curve(name, rates, per_item_quality, pixels=None, rate="bpp", metric="psnr-rgb"):
    """A curve whose points are the means of its items (rates equal for every item)."""
    q = np.asarray(per_item_quality, dtype=float)      # items × points
    per_item = {f"i{k}": {rate: list(map(float, rates)), metric: q[k].tolist()} for k in range(len(q))}
    if pixels is not None:
        for k, item in enumerate(per_item.values()):
            item[PIXELS] = [float(pixels[k])] * len(rates)
    points = [OperatingPoint({rate: float(r), metric: float(q[:, j].mean())}) for j, r in enumerate(rates)]
    return Curve(name, points, per_item=per_item)


def test_point_intervals_are_seeded_contain_the_mean_and_shrink_with_more_items():
    rng = np.random.default_rng(1)
    small = _curve("s", [1, 2], rng.normal(30, 2, (20, 2)))
    large = _curve("l", [1, 2], rng.normal(30, 2, (500, 2)))
    a, b = point_intervals(small, "psnr-rgb"), point_intervals(small, "psnr-rgb")
    assert a == b                                                         # seeded: the same interval twice
    assert point_intervals(small, "psnr-rgb", seed=1) != a
    for iv, p in zip(a, small.points, strict=True):
        assert iv.low < p["psnr-rgb"] < iv.high
    wide = a[0].high - a[0].low
    narrow = point_intervals(large, "psnr-rgb")[0]
    assert narrow.high - narrow.low < wide / 3                            # ~ 1/sqrt(n)
    assert wide == pytest.approx(2 * 1.96 * 2 / np.sqrt(20), rel=0.5)     # the normal-theory width, roughly
    assert point_intervals(Curve("x", small.points), "psnr-rgb") is None  # no per-item values: no interval


def test_a_bd_difference_on_every_item_is_beyond_noise_and_noise_alone_is_within_it():
    rng = np.random.default_rng(0)
    rates = [0.25, 0.5, 1.0, 2.0]
    base = 30 + 4 * np.log2(np.array(rates))[None, :] + rng.normal(0, 1.5, (40, 1))   # items differ in difficulty
    anchor = _curve("anchor", rates, base)
    better = _curve("better", rates, base + 0.5 + rng.normal(0, 0.05, base.shape))    # +0.5 dB on every item
    e = rng.normal(0, 0.6, (20, 4))
    noisy = _curve("noisy", rates, base + np.concatenate([e, -e]))                     # noise, no difference
    q = bd_quality(anchor, better, interval=True)
    assert q.value == pytest.approx(0.5, abs=0.05) and q.interval.low > 0 and q.within_noise is False
    assert "within noise" not in str(q) and str(q).startswith("+0.5") and "[" in str(q)
    n = bd_quality(anchor, noisy, interval=True)
    assert n.interval.contains(0.0) and n.within_noise and str(n).endswith("within noise")
    r = bd_rate(anchor, better, interval=True)
    assert r.value < 0 and r.interval.high < 0                                      # fewer bits, beyond noise
    # paired: the items' shared difficulty cancels; an unpaired view of the same curves would be far wider
    assert q.interval.high - q.interval.low < 0.2
    from tokencodec.rd.bd import bd_quality_arrays

    assert bd_interval(anchor, Curve("no items", better.points), bd_quality_arrays, "bpp", "psnr-rgb") is None


def test_one_status_rule_for_the_api_print_and_reports():
    from tokencodec.bench.report.tables import bd_cells, bd_row

    rates = np.array([0.25, 0.5, 1.0, 2.0])
    anchor = Curve.from_columns("a", {"bpp": rates, "psnr-rgb": 30 + 4 * np.log2(rates)})
    cases = {"ok": 1.0, "low-overlap": 3.0, "no-overlap": 1000.0}       # the test's rates, × this factor
    for expected, factor in cases.items():
        test = Curve.from_columns("t", {"bpp": rates * factor, "psnr-rgb": 30 + 4 * np.log2(rates)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = bd_quality(anchor, test)
        row = bd_row(anchor, test, "psnr-rgb", "bpp")
        assert q.status == expected == bd_status(q.value, q.overlap) and row.bd_quality.status == expected
        number = f"{q.value:+.2f}" if q.value is not None else None
        shown = expected == "ok"
        assert (number in str(q)) is shown if number else not shown       # print() shows a number only when ok
        cell = bd_cells(row)[5]
        assert (cell not in ("—", "")) is shown                            # and so does the report's cell
    assert bd_status(1.0, MIN_OVERLAP) == "ok" and bd_status(1.0, MIN_OVERLAP - 1e-9) == "low-overlap"
    assert bd_status(None, 0.5) == "no-overlap"
    assert bd_quality(anchor, test).to_json()["value"] is None             # JSON withholds it too (no overlap)
