import math

import pytest

from tokencodec.rd import KNOWN, OperatingPoint, lagrangian_choice, lambda_intervals, pareto_front

BPP, PSNR, KL = KNOWN["bpp"], KNOWN["psnr-rgb"], KNOWN["kl"]
A, B, C, D = (OperatingPoint({"bpp": r, "psnr-rgb": q}) for r, q in [(1, 30), (2, 35), (3, 34), (4, 38)])


def test_pareto_front_drops_dominated_points():
    assert pareto_front([D, C, B, A], BPP, PSNR) == [A, B, D]


def test_pareto_front_respects_lower_is_better_distortion():
    pts = [OperatingPoint({"bpp": r, "kl": k}) for r, k in [(1, 0.5), (2, 0.6), (3, 0.2)]]
    assert pareto_front(pts, BPP, KL) == [pts[0], pts[2]]


def test_lambda_intervals_by_hand():
    # J = R − λ·PSNR. A beats B while 1 − 30λ ≤ 2 − 35λ, i.e. λ ≤ 1/5; B beats D while λ ≤ 2/3.
    intervals = lambda_intervals([A, B, C, D], BPP, PSNR)
    assert [iv.point for iv in intervals] == [A, B, D]  # C is off the convex hull
    assert intervals[0].low == 0 and intervals[0].high == pytest.approx(0.2)
    assert intervals[1].low == pytest.approx(0.2) and intervals[1].high == pytest.approx(2 / 3)
    assert intervals[2].low == pytest.approx(2 / 3) and intervals[2].high == math.inf


@pytest.mark.parametrize(("lam", "expected"), [(0.0, A), (0.1, A), (0.5, B), (1.0, D)])
def test_lagrangian_choice(lam, expected):
    assert lagrangian_choice([A, B, C, D], lam, BPP, PSNR) == expected


def test_lagrangian_choice_agrees_with_intervals():
    pts = [A, B, C, D]
    for iv in lambda_intervals(pts, BPP, PSNR):
        mid = iv.low + 1 if iv.high == math.inf else (iv.low + iv.high) / 2
        assert lagrangian_choice(pts, mid, BPP, PSNR) == iv.point


def test_negative_lambda_is_refused():
    with pytest.raises(ValueError, match="λ must be >= 0"):
        lagrangian_choice([A], -1, BPP, PSNR)
