"""Results files: CompressAI's JSON layout, extended with measures, per-item values and provenance.

A tool that reads CompressAI results (``{"name", "description", "results": {"bpp": [...],
"psnr-rgb": [...]}}``) reads these unchanged: the extensions are extra top-level keys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tokencodec.io import write_json_atomic
from tokencodec.rd.curve import Curve
from tokencodec.rd.measures import Measure


class ResultsFileError(ValueError):
    pass


def _finite_or_none(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def curve_to_json(curve: Curve) -> dict[str, Any]:
    results: dict[str, list] = {}
    if curve.knob:
        results[curve.knob] = [p.knob for p in curve.points]
    for name in curve.measures:
        results[name] = [_finite_or_none(p.values.get(name, math.nan)) for p in curve.points]
    return {
        "name": curve.name,
        "description": curve.description,
        "results": results,
        "knob": curve.knob,
        "measures": {n: m.to_json() for n, m in curve.measures.items()},
        "per_item": curve.per_item,
        "provenance": curve.provenance,
    }


def curve_from_json(data: dict[str, Any], source: str = "<json>") -> Curve:
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ResultsFileError(f"{source}: not a results file: expected an object with a 'results' mapping "
                               "of measure name to a list of values (CompressAI layout)")
    columns = {k: [math.nan if v is None else v for v in vals] for k, vals in data["results"].items()
               if isinstance(vals, list)}
    measures = {n: Measure.from_json(n, m) for n, m in (data.get("measures") or {}).items()}
    try:
        return Curve.from_columns(
            data.get("name") or Path(source).stem, columns, knob=data.get("knob"), measures=measures,
            description=data.get("description", ""), per_item=data.get("per_item") or {},
            provenance=data.get("provenance") or {})
    except ValueError as err:
        raise ResultsFileError(f"{source}: {err}") from None


def save_curve(curve: Curve, path: str | Path) -> Path:
    return write_json_atomic(path, curve_to_json(curve))


def load_curve(path: str | Path) -> Curve:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsFileError(f"{path}: results file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultsFileError(f"{path}: not valid JSON ({err})") from None
    return curve_from_json(data, str(path))
