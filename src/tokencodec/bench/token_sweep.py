"""The token sweep: samples × methods × keep ratios → one RD curve per method.

The expensive part of the model (``Observer.encode``: the vision encoder and the uncompressed
reference) runs once per sample and is reused for every method and budget; it is cached in
memory and, with ``cache_dir``, on disk keyed by observer, configuration and sample content.
Each finished (sample, method, ratio) record is appended at once to ``points.jsonl``, so an
interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokencodec.bench.observers import Encoded, Observer, Sample
from tokencodec.bench.store import RecordStore
from tokencodec.provenance import provenance
from tokencodec.rd.curve import Curve, OperatingPoint
from tokencodec.rd.measures import KNOWN, lookup
from tokencodec.rd.results import save_curve
from tokencodec.tokens.compress import METHODS, Budget, get_method

KEY_FIELDS = ("method", "keep_ratio", "sample_digest", "config")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.options:
            return self.name
        return self.name + "(" + ",".join(f"{k}={v}" for k, v in sorted(self.options.items())) + ")"


def config_id(observer: Observer, spec: MethodSpec, seed: int) -> str:
    text = json.dumps([observer.cache_key(), spec.name, spec.options, seed], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class EncodingCache:
    """Encodings per sample: in memory, and on disk when a folder is given."""

    def __init__(self, observer: Observer, folder: str | Path | None = None):
        self.observer = observer
        self.folder = Path(folder) if folder else None
        self.memory: dict[str, Encoded] = {}
        self.misses = 0

    def get(self, sample: Sample) -> Encoded:
        key = f"{self.observer.cache_key()}-{sample.digest}"
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"{key}.pt" if self.folder else None
        if path is not None and path.exists():
            encoded = torch.load(path, weights_only=False)
        else:
            self.misses += 1
            encoded = self.observer.encode(sample)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                torch.save(encoded, tmp)
                tmp.replace(path)
        self.memory[key] = encoded
        return encoded


def check_plan(observer: Observer, specs: Sequence[MethodSpec], keep_ratios: Sequence[float]) -> None:
    """Refuse unknown methods, methods the observer cannot run, and impossible ratios up front."""
    for spec in specs:
        cls = METHODS.get(spec.name)
        if not observer.supports(cls):
            raise ValueError(f"method {spec.name!r} (stage {cls.stage}, needs {list(cls.needs)}) does not run on "
                             f"observer {observer.name!r}")
    for r in keep_ratios:
        Budget(ratio=r)  # raises BudgetError naming the allowed range


def run_token_sweep(observer: Observer, samples: Sequence[Sample], specs: Sequence[MethodSpec],
                    keep_ratios: Sequence[float], out_dir: str | Path, seed: int = 0,
                    cache: EncodingCache | None = None, config: dict[str, Any] | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> dict[str, Curve]:
    check_plan(observer, specs, keep_ratios)
    out_dir = Path(out_dir)
    store = RecordStore(out_dir / "points.jsonl", KEY_FIELDS)
    cache = cache or EncodingCache(observer)
    ids = {spec.label: config_id(observer, spec, seed) for spec in specs}
    methods = {spec.label: get_method(spec.name, seed=seed, **spec.options) for spec in specs}
    done = 0
    for i, sample in enumerate(samples):
        todo = [(s, r) for s in specs for r in keep_ratios
                if (s.label, r, sample.digest, ids[s.label]) not in store]
        if todo:
            encoded = cache.get(sample)
            records = []
            for spec, ratio in todo:
                t0 = time.perf_counter()
                measured = observer.run(sample, methods[spec.label], Budget(ratio=ratio), encoded)
                records.append({"method": spec.label, "keep_ratio": ratio, "sample": sample.id,
                                "sample_digest": sample.digest, "config": ids[spec.label],
                                **measured, "latency_s": time.perf_counter() - t0})
            store.append(records)
        done = i + 1
        if on_progress:
            on_progress(done, len(samples))
    curves = {spec.label: build_token_curve(observer, spec, ids[spec.label], samples, keep_ratios, store,
                                            dict(config or {}, seed=seed)) for spec in specs}
    for label, curve in curves.items():
        save_curve(curve, out_dir / f"{_file_name(label)}.json")
    return curves


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+." else "_" for c in label)


def build_token_curve(observer: Observer, spec: MethodSpec, cid: str, samples: Sequence[Sample],
                      keep_ratios: Sequence[float], store: RecordStore, config: dict[str, Any]) -> Curve:
    names = [*observer.rates, "latency_s", *observer.measures]
    per_item: dict[str, dict[str, list[float]]] = {s.id: {m: [] for m in names} for s in samples}
    points = []
    for ratio in sorted(keep_ratios, reverse=True):
        values: dict[str, list[float]] = {m: [] for m in names}
        for s in samples:
            record = store.records[(spec.label, ratio, s.digest, cid)]
            for m in names:
                values[m].append(record[m])
                per_item[s.id][m].append(record[m])
        points.append(OperatingPoint({m: float(np.mean(v)) if v else math.nan for m, v in values.items()},
                                     knob=ratio))
    method_cls = METHODS.get(spec.name)
    return Curve(
        name=spec.label, points=points, knob="keep_ratio",
        measures={m: KNOWN.get(m, lookup(m)) for m in names},
        description=f"{spec.label} on {observer.name}, {len(samples)} samples; latency is compression plus "
                    "the model after the compression point (the cached encoder is not timed)",
        per_item=per_item,
        provenance=provenance(config={**config, "observer": observer.cache_key(), "method": spec.name,
                                      "options": spec.options, "stage": method_cls.stage,
                                      "paper": method_cls.paper, "keep_ratios": list(keep_ratios),
                                      "samples": [s.id for s in samples]},
                              seed=config.get("seed")),
    )
