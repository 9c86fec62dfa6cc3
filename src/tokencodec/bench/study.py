"""Token studies described as data (YAML): observer, data, methods, keep ratios, anchor, seed."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokencodec.bench.token_sweep import MethodSpec

_KEYS = {"name", "description", "observer", "data", "methods", "keep_ratios", "anchor", "metrics", "seed"}


class StudyError(ValueError):
    pass


@dataclass
class Study:
    name: str
    observer: dict[str, Any]
    methods: list[MethodSpec]
    keep_ratios: list[float]
    data: dict[str, Any] = field(default_factory=dict)
    anchor: str = "random"
    metrics: list[str] = field(default_factory=list)
    seed: int = 0
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "observer": self.observer, "data": self.data,
                "methods": [{"name": m.name, "options": m.options} for m in self.methods],
                "keep_ratios": self.keep_ratios, "anchor": self.anchor, "metrics": self.metrics, "seed": self.seed}


def _method(entry: Any, source: str) -> MethodSpec:
    if isinstance(entry, str):
        return MethodSpec(entry)
    if isinstance(entry, dict) and "name" in entry and set(entry) <= {"name", "options"}:
        return MethodSpec(entry["name"], dict(entry.get("options") or {}))
    raise StudyError(f"{source}: a method is a name or {{name: ..., options: {{...}}}}, got {entry!r}")


def load_study(path: str | Path) -> Study:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{path}: study file not found") from None
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise StudyError(f"{path}: a study is a mapping with keys {sorted(_KEYS)}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise StudyError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    missing = {"name", "observer", "methods", "keep_ratios"} - set(raw)
    if missing:
        raise StudyError(f"{path}: missing keys {sorted(missing)}")
    observer = raw["observer"] if isinstance(raw["observer"], dict) else {"name": raw["observer"]}
    ratios = raw["keep_ratios"]
    if not isinstance(ratios, list) or not all(isinstance(r, (int, float)) and 0 < r <= 1 for r in ratios):
        raise StudyError(f"{path}: keep_ratios must be a list of numbers in (0, 1], got {ratios!r}")
    methods = [_method(m, str(path)) for m in raw["methods"]]
    study = Study(name=str(raw["name"]), observer=dict(observer), methods=methods,
                  keep_ratios=[float(r) for r in ratios], data=dict(raw.get("data") or {}),
                  anchor=str(raw.get("anchor", methods[0].label)), metrics=list(raw.get("metrics") or []),
                  seed=int(raw.get("seed", 0)), description=str(raw.get("description", "")))
    if study.anchor not in {m.label for m in methods}:
        raise StudyError(f"{path}: anchor {study.anchor!r} is not among the methods "
                         f"{[m.label for m in methods]}")
    return study
