"""Operating points and the curves a sweep of a knob makes of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tokencodec.rd.measures import Measure, lookup


@dataclass(frozen=True)
class OperatingPoint:
    """One setting of a knob, with the rates and distortions it reached."""

    values: Mapping[str, float]
    knob: float | None = None

    def __getitem__(self, name: str) -> float:
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"operating point has no measure {name!r}; it has {sorted(self.values)}") from None


@dataclass
class Curve:
    """Operating points of one method, with the measures that describe their values.

    ``per_item`` holds, for each image (or sample), its own value of each measure at each point;
    the point values are the means over items.
    """

    name: str
    points: list[OperatingPoint]
    measures: dict[str, Measure] = field(default_factory=dict)
    description: str = ""
    knob: str | None = None
    per_item: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for point in self.points:
            for key in point.values:
                self.measures.setdefault(key, lookup(key))

    def column(self, name: str) -> np.ndarray:
        if name not in self.measures:
            raise KeyError(f"curve {self.name!r} has no measure {name!r}; it has {sorted(self.measures)}")
        return np.array([p.values.get(name, np.nan) for p in self.points], dtype=float)

    def names(self, kind: str) -> list[str]:
        return [n for n, m in self.measures.items() if m.kind == kind]

    @classmethod
    def from_columns(cls, name: str, columns: Mapping[str, Sequence[float]], knob: str | None = None,
                     measures: Mapping[str, Measure] | None = None, **kwargs: Any) -> Curve:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"curve {name!r}: columns have different lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
        points = []
        for i in range(n):
            values = {k: float(v[i]) for k, v in columns.items() if k != knob}
            points.append(OperatingPoint(values, float(columns[knob][i]) if knob in columns else None))
        all_measures = {k: lookup(k) for k in columns if k != knob}
        all_measures.update(measures or {})
        return cls(name=name, points=points, measures=all_measures, knob=knob, **kwargs)
