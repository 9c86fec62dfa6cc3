"""Pareto front of operating points on one rate and one distortion axis."""

from __future__ import annotations

from collections.abc import Sequence

from tokencodec.rd.curve import OperatingPoint
from tokencodec.rd.measures import Measure


def _cost(point: OperatingPoint, measure: Measure) -> float:
    """The value oriented so that lower is better."""
    v = point[measure.name]
    return -v if measure.higher_is_better else v


def pareto_front(points: Sequence[OperatingPoint], rate: Measure, distortion: Measure) -> list[OperatingPoint]:
    """The points no other point beats on both axes, sorted by increasing rate cost.

    A point is dominated when another is at least as good on both axes and better on one.
    """
    ranked = sorted(points, key=lambda p: (_cost(p, rate), _cost(p, distortion)))
    front: list[OperatingPoint] = []
    best_d = float("inf")
    for p in ranked:
        d = _cost(p, distortion)
        if d < best_d:
            front.append(p)
            best_d = d
    return front
