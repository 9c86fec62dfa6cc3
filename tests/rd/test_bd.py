"""BD metrics against hand-computed cases and an independent dense-integration check."""

import math
import warnings

import numpy as np
import pytest
from scipy.interpolate import PchipInterpolator

from tokencodec.rd import BDOverlapWarning, Curve, bd_quality, bd_quality_arrays, bd_rate, bd_rate_arrays

RATES = np.array([0.25, 0.5, 1.0, 2.0])
PSNR = np.array([28.0, 31.0, 34.5, 37.0])


@pytest.mark.parametrize("method", ["pchip", "akima"])
def test_half_the_rate_at_equal_quality_is_minus_50_percent(method):
    r = bd_rate_arrays(RATES, PSNR, RATES / 2, PSNR, method=method)
    assert r.value == pytest.approx(-50.0, abs=1e-9)
    assert r.status == "ok" and r.overlap == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["pchip", "akima"])
def test_one_db_more_at_equal_rate_is_plus_one_db(method):
    q = bd_quality_arrays(RATES, PSNR, RATES, PSNR + 1.0, method=method, unit="dB")
    assert q.value == pytest.approx(1.0, abs=1e-9)
    assert str(q) == "+1.00 dB"


def test_bd_rate_matches_dense_independent_integration():
    test_r, test_q = np.array([0.2, 0.45, 0.9, 1.7]), np.array([28.4, 31.2, 34.1, 36.6])
    result = bd_rate_arrays(RATES, PSNR, test_r, test_q, method="pchip")
    lo, hi = max(PSNR.min(), test_q.min()), min(PSNR.max(), test_q.max())
    grid = np.linspace(lo, hi, 200001)
    fa = PchipInterpolator(PSNR, np.log10(RATES))(grid)
    ft = PchipInterpolator(test_q, np.log10(test_r))(grid)
    expected = (10 ** (np.trapezoid(ft - fa, grid) / (hi - lo)) - 1) * 100
    assert result.value == pytest.approx(expected, abs=1e-6)
    union = max(PSNR.max(), test_q.max()) - min(PSNR.min(), test_q.min())
    assert result.overlap == pytest.approx((hi - lo) / union)


def test_partial_overlap_is_reported_and_warned():
    anchor_q, test_q = np.array([30.0, 33.0, 36.0, 40.0]), np.array([35.0, 38.0, 41.0, 45.0])
    with pytest.warns(BDOverlapWarning, match="overlap on only 33%"):
        r = bd_rate_arrays(RATES, anchor_q, RATES, test_q)
    assert r.overlap == pytest.approx(5 / 15)
    assert r.status == "low-overlap" and r.value is not None


def test_no_overlap_is_an_explicit_result_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither ours nor the package's NaN warning may fire
        r = bd_rate_arrays(RATES, PSNR, RATES, PSNR + 20)
    assert r.value is None and r.status == "no-overlap" and str(r) == "no overlap"
    q = bd_quality_arrays(RATES, PSNR, RATES * 100, PSNR)
    assert q.value is None and q.status == "no-overlap"


def test_linear_rate_variant_for_token_counts():
    quality = np.array([1.0, 2.0, 3.0, 4.0])
    tokens = 100 * quality  # linear, so PCHIP reproduces it exactly; mean over [1, 4] is 250
    r = bd_rate_arrays(tokens, quality, tokens - 50, quality, linear_rate=True)
    assert r.absolute == pytest.approx(-50.0)
    assert r.value == pytest.approx(-20.0)
    q = bd_quality_arrays(tokens, quality, tokens, quality + 0.25, linear_rate=True)
    assert q.value == pytest.approx(0.25)


def test_lower_is_better_metric_keeps_signs_meaningful():
    kl = np.array([0.8, 0.4, 0.2, 0.1])  # falls as the rate grows
    r = bd_rate_arrays(RATES, kl, RATES / 2, kl, higher_is_better=False)
    assert r.value == pytest.approx(-50.0)
    q = bd_quality_arrays(RATES, kl, RATES, kl - 0.05, higher_is_better=False)
    assert q.value == pytest.approx(-0.05)  # test minus anchor: less KL, a negative delta


def test_monotonic_fit_for_noisy_curves():
    rates = np.array([1.0, 2.0, 4.0, 8.0])
    noisy = np.array([0.50, 0.70, 0.70, 0.90])  # a repeated quality: ambiguous without a fit
    with pytest.raises(ValueError, match="monotonic=True"):
        bd_rate_arrays(rates, noisy, rates / 2, noisy)
    r = bd_rate_arrays(rates, noisy, rates / 2, noisy, monotonic=True)
    assert r.value == pytest.approx(-50.0)
    dipping = np.array([0.50, 0.72, 0.70, 0.90])  # isotonic fit pools 0.72 and 0.70 into 0.71
    r = bd_rate_arrays(rates, dipping, rates / 2, dipping, monotonic=True)
    assert r.value == pytest.approx(-50.0)


def test_bad_inputs_are_refused_with_reasons():
    with pytest.raises(ValueError, match="at least 2"):
        bd_rate_arrays([1.0], [30.0], RATES, PSNR)
    with pytest.raises(ValueError, match="positive rates"):
        bd_rate_arrays([0.0, 1.0], [30.0, 31.0], RATES, PSNR)
    with pytest.raises(ValueError, match="allowed: pchip, akima"):
        bd_rate_arrays(RATES, PSNR, RATES, PSNR, method="cubic-spline")


def test_curve_level_api_reads_direction_from_measures():
    a = Curve.from_columns("a", {"bpp": RATES, "psnr-rgb": PSNR})
    b = Curve.from_columns("b", {"bpp": RATES / 2, "psnr-rgb": PSNR})
    assert bd_rate(a, b).value == pytest.approx(-50.0)
    with pytest.warns(BDOverlapWarning):  # halving the rate leaves half the log-rate range shared
        q = bd_quality(a, b)
    assert q.unit == "dB" and q.value > 0 and not math.isnan(q.value)
    with pytest.raises(KeyError, match="no measure 'accuracy'"):
        bd_rate(a, b, metric="accuracy")


def test_points_at_the_same_rate_are_averaged():
    tokens = np.array([4.0, 4.0, 9.0, 25.0])
    acc = np.array([0.80, 0.90, 0.92, 0.95])  # two budgets that rounded to the same 4 tokens
    merged = bd_quality_arrays(np.array([4.0, 9.0, 25.0]), np.array([0.85, 0.92, 0.95]),
                               tokens, acc, linear_rate=True)
    assert merged.value == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="2 distinct rates"):
        bd_rate_arrays([3.0, 3.0], [0.5, 0.6], RATES, PSNR)
