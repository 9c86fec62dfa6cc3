"""Lagrangian choice: the operating point minimising J = R + λ·D.

Distortions whose higher value is better (PSNR, accuracy) enter as D = −value, so that J is
always a cost. Each point is optimal on an interval of λ (empty for points off the lower convex
hull); ``lambda_intervals`` returns those intervals exactly, by intersecting the half-lines
R_i + λD_i ≤ R_j + λD_j over all j.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tokencodec.rd.curve import OperatingPoint
from tokencodec.rd.measures import Measure


def _rd(point: OperatingPoint, rate: Measure, distortion: Measure) -> tuple[float, float]:
    r = point[rate.name]
    d = point[distortion.name]
    return (-r if rate.higher_is_better else r), (-d if distortion.higher_is_better else d)


def lagrangian_cost(point: OperatingPoint, lam: float, rate: Measure, distortion: Measure) -> float:
    r, d = _rd(point, rate, distortion)
    return r + lam * d


def lagrangian_choice(points: Sequence[OperatingPoint], lam: float, rate: Measure,
                      distortion: Measure) -> OperatingPoint:
    """The point of least J = R + λ·D (ties go to the lower rate)."""
    if not points:
        raise ValueError("lagrangian_choice needs at least one operating point")
    if not lam >= 0:
        raise ValueError(f"λ must be >= 0, got {lam}")
    return min(points, key=lambda p: (lagrangian_cost(p, lam, rate, distortion), _rd(p, rate, distortion)[0]))


@dataclass(frozen=True)
class LambdaInterval:
    point: OperatingPoint
    low: float
    high: float  # math.inf when the point stays optimal for every larger λ


def lambda_intervals(points: Sequence[OperatingPoint], rate: Measure,
                     distortion: Measure) -> list[LambdaInterval]:
    """For each point optimal for some λ ≥ 0, the closed interval of λ over which it is optimal."""
    rd = [_rd(p, rate, distortion) for p in points]
    out = []
    for i, (ri, di) in enumerate(rd):
        low, high = 0.0, math.inf
        for j, (rj, dj) in enumerate(rd):
            if i == j:
                continue
            if di > dj:  # j has less distortion: i wins only while λ is small
                high = min(high, (rj - ri) / (di - dj))
            elif di < dj:
                low = max(low, (ri - rj) / (dj - di))
            elif ri > rj or (ri == rj and j < i):  # same distortion: the lower rate (then the first) wins
                low, high = 1.0, 0.0
        if low <= high:
            out.append(LambdaInterval(points[i], low, high))
    return sorted(out, key=lambda iv: iv.low)
