"""Studies described as data (YAML), and the one entry point that runs them: ``run_study``.

```yaml
name: example
observer: {name: efficientnet-lite0}          # or just: efficientnet-lite0
data: {dataset: embedded, limit: 4}           # the observer's task arguments
pipelines:
  - {codec: jpeg, qualities: [10, 50, 90]}
  - {method: divprune, keep_ratios: [0.5, 0.25]}
  - {method: visionzip, options: {merge: mean}, keep_ratios: [0.5]}
  - {codec: webp, qualities: [20, 80], method: divprune, keep_ratios: [0.5]}   # a chain
  - {codec: jpeg-rst, qualities: [80], channel: {losses: [0, 0.1, 0.3], burst: 4}}   # over a lossy channel
metrics: [top1_agreement]                     # default: every measure of the observer
anchor: jpeg                                  # default: the first pipeline
seed: 0
```

``methods: [...]`` with ``keep_ratios: [...]`` is shorthand for one pipeline per method at those
ratios. Everything is checked before any data is loaded or any model runs: unknown keys, codecs,
methods, method options, observers, observer and data options, metrics, and knobs out of range,
each with a message naming the key and what is allowed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tokencodec.observers.registry import ObserverOptionError, ObserverSpec
from tokencodec.pipeline import PipelineError, PipelineSpec
from tokencodec.registry import UnknownNameError

KEYS = {"name", "description", "observer", "data", "pipelines", "methods", "keep_ratios", "anchor", "metrics",
        "seed"}
PIPELINE_KEYS = {"codec", "qualities", "method", "options", "keep_ratios", "name", "channel"}


class StudyError(ValueError):
    pass


@dataclass
class Study:
    name: str
    observer: ObserverSpec
    pipelines: list[PipelineSpec]
    data: dict[str, Any] = field(default_factory=dict)
    anchor: str = ""
    metrics: list[str] = field(default_factory=list)
    seed: int = 0
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "observer": {"name": self.observer.name, **self.observer.options}, "data": self.data,
                "pipelines": [p.to_json() for p in self.pipelines], "anchor": self.anchor, "metrics": self.metrics,
                "seed": self.seed}


def _numbers(value: Any, key: str, where: str, kind: type) -> tuple:
    if not isinstance(value, list) or not value or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                           for v in value):
        raise StudyError(f"{where}: {key} must be a non-empty list of numbers, got {value!r}")
    if kind is int and not all(float(v).is_integer() for v in value):
        raise StudyError(f"{where}: {key} must be integers, got {value!r}")
    return tuple(kind(v) for v in value)


def parse_pipeline(entry: Any, where: str) -> PipelineSpec:
    if not isinstance(entry, dict):
        raise StudyError(f"{where}: a pipeline is a mapping with keys {sorted(PIPELINE_KEYS)}, got {entry!r}")
    unknown = set(entry) - PIPELINE_KEYS
    if unknown:
        raise StudyError(f"{where}: unknown pipeline keys {sorted(unknown)}; allowed: {sorted(PIPELINE_KEYS)}")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise StudyError(f"{where}: options must be a mapping, got {options!r}")
    return PipelineSpec(
        codec=entry.get("codec"),
        qualities=_numbers(entry["qualities"], "qualities", where, int) if "qualities" in entry else (),
        method=entry.get("method"), options=dict(options),
        keep_ratios=_numbers(entry["keep_ratios"], "keep_ratios", where, float) if "keep_ratios" in entry else (),
        name=entry.get("name"), channel=entry.get("channel"))


def parse_study(raw: Any, source: str = "<study>") -> Study:
    """A validated study; raises StudyError naming the key and what is allowed (no data is loaded)."""
    if not isinstance(raw, dict):
        raise StudyError(f"{source}: a study is a mapping with keys {sorted(KEYS)}")
    unknown = set(raw) - KEYS
    if unknown:
        raise StudyError(f"{source}: unknown keys {sorted(unknown)}; allowed: {sorted(KEYS)}")
    missing = {"name", "observer"} - set(raw)
    if missing:
        raise StudyError(f"{source}: missing keys {sorted(missing)}")
    obs = raw["observer"] if isinstance(raw["observer"], dict) else {"name": raw["observer"]}
    if "name" not in obs:
        raise StudyError(f"{source}: observer needs a name")
    observer = ObserverSpec(str(obs["name"]), {k: v for k, v in obs.items() if k != "name"})
    entries = list(raw.get("pipelines") or [])
    if "methods" in raw or "keep_ratios" in raw:
        if "methods" not in raw or "keep_ratios" not in raw:
            raise StudyError(f"{source}: 'methods' and 'keep_ratios' go together (one pipeline per method)")
        for m in raw["methods"]:
            if isinstance(m, str):
                entries.append({"method": m, "keep_ratios": raw["keep_ratios"]})
            elif isinstance(m, dict) and "name" in m and set(m) <= {"name", "options"}:
                entries.append({"method": m["name"], "options": m.get("options") or {},
                                "keep_ratios": raw["keep_ratios"]})
            else:
                raise StudyError(f"{source}: a method is a name or {{name: ..., options: {{...}}}}, got {m!r}")
    if not entries:
        raise StudyError(f"{source}: give 'pipelines' (or 'methods' with 'keep_ratios')")
    pipelines = [parse_pipeline(e, f"{source}: pipelines[{i}]") for i, e in enumerate(entries)]
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise StudyError(f"{source}: data must be a mapping of the observer's data options, got {data!r}")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise StudyError(f"{source}: seed must be an integer, got {seed!r}")
    study = Study(name=str(raw["name"]), observer=observer, pipelines=pipelines, data=dict(data),
                  anchor=str(raw.get("anchor", pipelines[0].label)), metrics=list(raw.get("metrics") or []),
                  seed=seed, description=str(raw.get("description", "")))
    check_study(study, source)
    return study


def check_study(study: Study, source: str = "<study>") -> type:
    """Everything that can be checked without loading data or a model; returns the observer class."""
    try:
        cls = study.observer.check()
        study.observer.check_data(study.data)
    except (UnknownNameError, ObserverOptionError) as err:
        raise StudyError(f"{source}: {err}") from None
    from tokencodec.tokens.compress import get_method

    for i, p in enumerate(study.pipelines):
        try:
            p.check()
        except PipelineError as err:
            raise StudyError(f"{source}: pipelines[{i}]: {err}") from None
        # an instance with the pipeline's options: options can change what a method reads (FastVID's saliency)
        why = cls.method_support(get_method(p.method, **p.options), study.observer.options) if p.method else None
        if why:
            raise StudyError(f"{source}: pipelines[{i}]: method {p.method!r} cannot run on this observer: {why}")
    labels = [p.label for p in study.pipelines]
    if len(set(labels)) != len(labels):
        raise StudyError(f"{source}: two pipelines share a label ({labels}); give one a 'name'")
    if study.anchor not in labels:
        raise StudyError(f"{source}: anchor {study.anchor!r} is not among the pipelines {labels}")
    known = set(cls.task_class.measures) | set(cls.runner_rates)
    known |= {"bpp", "bits", "bytes"} if any(p.codec for p in study.pipelines) else set()
    bad = [m for m in study.metrics if m not in known]
    if bad:
        raise StudyError(f"{source}: unknown metrics {bad} for observer {study.observer.name!r}; allowed: "
                         f"{sorted(cls.task_class.measures)}")
    return cls


def load_study(path: str | Path) -> Study:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{path}: study file not found") from None
    except yaml.YAMLError as err:
        raise StudyError(f"{path}: not valid YAML ({err})") from None
    return parse_study(raw, str(path))


def check_machine(study: Study, source: str = "<study>") -> None:
    """What depends on this machine, before any data or model loads: the observer's device exists here and its
    weights can be found (a hub model in the cache, or the hub reachable; ``HF_HUB_OFFLINE`` respected)."""
    try:
        study.observer.check_machine()
    except (ObserverOptionError, FileNotFoundError) as err:
        raise StudyError(f"{source}: {err}") from None


def run_study(study: Study, out: str | Path | None = None, *, executor=None, cache_dir: str | Path | None = None,
              data_overrides: dict[str, Any] | None = None, write_report: bool = True,
              on_start: Callable[[int], None] | None = None,
              on_progress: Callable[[int, int], None] | None = None, on_error: str = "skip",
              wait_lock: bool = False) -> dict[str, Any]:
    """Run a study: samples → sweep → results files (and the report); returns curves, paths and the items
    skipped because they could not be read (``on_error="skip"``; ``"stop"`` raises instead).

    Before any model loads: the output folder is writable, the machine has the observer's device and weights,
    and no other process writes the folder (``wait_lock`` waits for it instead of refusing)."""
    from tokencodec.bench.engine import run_sweep
    from tokencodec.bench.lock import folder_lock
    from tokencodec.data.images import read_errors
    from tokencodec.io import check_writable_folder
    from tokencodec.observers.registry import observer_for

    start = time.perf_counter()
    data = dict(study.data, **(data_overrides or {}))
    if data_overrides:
        study.observer.check_data(data)
    out = Path(out) if out else Path("results/studies") / study.name
    check_machine(study)
    check_writable_folder(out)
    with folder_lock(out, wait=wait_lock):
        observer = observer_for(study.observer)
        with read_errors(on_error) as skipped:
            samples = observer.samples(**data)
        if on_start:
            on_start(len(samples))
        curves = run_sweep(study.observer, samples, study.pipelines, out, seed=study.seed, executor=executor,
                           cache_dir=cache_dir, data=data, config={"study": study.to_json()},
                           on_progress=on_progress, skipped=skipped)
        paths: dict[str, Path] = {}
        if write_report and all(p.channel is not None for p in study.pipelines):   # curves against loss, not rate
            from tokencodec.channels.report import write_channel_report

            paths = write_channel_report(out, (study.metrics or list(observer.measures))[0], f"Study: {study.name}")
        elif write_report:
            from tokencodec.bench.report import write_report as write

            rates = [r for r in ("bpp", "tokens", "flops") if any(r in c.measures for c in curves.values())]
            paths = write(curves, out, f"Study: {study.name}", study.anchor, study.metrics or list(observer.measures),
                          rates=rates, description=study.description, group_of=observer.group)
    return {"curves": curves, "paths": paths, "out": out, "samples": len(samples), "skipped": dict(skipped),
            "seconds": time.perf_counter() - start}


__all__ = ["Study", "StudyError", "check_machine", "check_study", "load_study", "parse_study", "run_study"]
