"""The one sweep engine: observer × samples × pipelines × knobs → one RD curve per pipeline.

Work is cut into jobs, one per sample holding every (pipeline, knob) point still missing for it, so
the part of the model that does not depend on the pipeline (``Observer.prepare``: the uncompressed
reference and the encoder's tokens) runs once per sample and every budget reuses it. Records are
content-keyed (pipeline, knob, sample digest, configuration id) and appended to ``points.jsonl`` as
each job finishes, whatever the executor; a rerun computes only what is missing. Each job runs with
one torch thread, so serial, process-pool and Ray runs give identical numbers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokencodec.bench.executors import Executor, SerialExecutor
from tokencodec.bench.lock import folder_lock
from tokencodec.bench.store import RecordStore
from tokencodec.channels.transport import CHANNEL_RATES
from tokencodec.observers.base import Observer, Prepared, Sample
from tokencodec.observers.registry import ObserverSpec, observer_for
from tokencodec.pipeline import PipelineError, PipelineSpec, codec_for, run_point
from tokencodec.provenance import provenance
from tokencodec.rd.aggregate import PIXELS, aggregate, size_outliers
from tokencodec.rd.curve import Curve, OperatingPoint
from tokencodec.rd.measures import lookup
from tokencodec.rd.results import save_curve

KEY_FIELDS = ("pipeline", "knob", "sample_digest", "config")
TIMINGS = ("latency_s", "encoding_time", "decoding_time")
CODEC_RATES = ("bytes", "bits", "bpp", "payload_bytes", "payload_bpp", "encoding_time", "decoding_time")
BITSTREAM_RATES = ("bytes", "bits", "bpp", "payload_bytes", "payload_bpp", "ideal_bits", "encoding_time",
                   "decoding_time")   # a method's token bitstream


class SweepError(RuntimeError):
    """A point that failed; the message names the pipeline, the sample and the knob."""


class UnavailableMeasureWarning(UserWarning):
    """Some samples cannot have a measure (an image too small for MS-SSIM); the mean leaves them out."""


class SizeOutlierWarning(UserWarning):
    """Items far outside the data set's size range (a 4×4 image among photos); pixel-weighted rates keep them
    from dominating, but they are named so that nobody is surprised."""


@dataclass(frozen=True)
class Job:
    sample: Sample
    todo: tuple[tuple[int, str], ...]   # (pipeline index, knob as JSON)


class PreparedCache:
    """Per-sample preparations: in memory, and on disk when a folder is given (torch.save)."""

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else None
        self.memory: dict[str, Prepared] = {}
        self.misses = 0

    def get(self, observer: Observer, sample: Sample) -> Prepared:
        import torch

        key = f"{observer.key()}-{sample.digest}"
        if key in self.memory:
            return self.memory[key]
        path = self.folder / f"{key}.pt" if self.folder else None
        if path is not None and path.exists():
            prepared = torch.load(path, weights_only=False)
        else:
            self.misses += 1
            prepared = observer.prepare(sample)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{id(self)}.tmp")
                torch.save(prepared, tmp)
                tmp.replace(path)
        self.memory[key] = prepared
        return prepared


_CACHES: dict[str | None, PreparedCache] = {}


def _cache(folder: str | None) -> PreparedCache:
    if folder not in _CACHES:
        _CACHES[folder] = PreparedCache(folder)
    return _CACHES[folder]


def run_job(observer: Observer | ObserverSpec, specs: Sequence[PipelineSpec], ids: Sequence[str], seed: int,
            cache_dir: str | None, job: Job) -> tuple[list[dict[str, Any]], str | None]:
    """The records of one job, and the error that stopped it (records before it are kept)."""
    import torch

    from tokencodec.tokens.compress import get_method

    obs = observer_for(observer) if isinstance(observer, ObserverSpec) else observer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    records: list[dict[str, Any]] = []
    try:
        cache = _cache(cache_dir)
        prepared = cache.get(obs, job.sample)
        methods: dict[int, Any] = {}
        for i, knob_json in job.todo:
            spec, knob = specs[i], json.loads(knob_json)
            if spec.method and i not in methods:
                methods[i] = get_method(spec.method, seed=seed, **spec.options)
            try:
                measured = run_point(obs, job.sample, spec, knob, prepared, methods.get(i))
            except Exception as err:  # a failing point is reported with its coordinates; finished ones stay
                if isinstance(err, (KeyboardInterrupt, SystemExit)):
                    raise
                return records, f"{spec.label} on sample {job.sample.id!r} at {knob}: {type(err).__name__}: {err}"
            records.append({"pipeline": spec.label, "knob": knob, "sample": job.sample.id,
                            "sample_digest": job.sample.digest, "config": ids[i], **measured})
    finally:
        torch.set_num_threads(threads)
    return records, None


def data_identity(spec: dict[str, Any], samples: Sequence[Sample], skipped: dict[str, str] | None = None
                  ) -> dict[str, Any]:
    """What the curves were measured on, for the comparability checks of ``bd``, ``plot`` and reports; items
    that could not be read and were left out are named in ``skipped`` with their status."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.id}\0{s.digest}\n".encode())
    out = {"spec": dict(spec), "items": [s.id for s in samples], "fingerprint": h.hexdigest()[:16]}
    if skipped:
        out["skipped"] = dict(skipped)
    return out


def run_sweep(observer: Observer | ObserverSpec, samples: Sequence[Sample], specs: Sequence[PipelineSpec],
              out_dir: str | Path, *, seed: int = 0, executor: Executor | None = None,
              cache_dir: str | Path | None = None, data: dict[str, Any] | None = None,
              config: dict[str, Any] | None = None,
              on_progress: Callable[[int, int], None] | None = None, skipped: dict[str, str] | None = None,
              wait_lock: bool = False) -> dict[str, Curve]:
    """Run what is missing, then write ``<out_dir>/<label>.json`` for each pipeline; returns the curves.

    ``out_dir`` is locked for the run (``bench.lock``): a second writer gets ``FolderLockedError`` naming this
    process, or waits with ``wait_lock``. ``skipped`` names items that could not be read ({id: "status:
    reason"}); the results files record them."""
    executor = executor or SerialExecutor()
    obs = observer_for(observer) if isinstance(observer, ObserverSpec) else observer
    if not isinstance(observer, ObserverSpec) and not isinstance(executor, SerialExecutor):
        raise ValueError(f"the {executor.name} executor builds the observer in each worker: pass an ObserverSpec")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise PipelineError(f"two pipelines share a label: {labels}; give one a 'name'")
    for spec in specs:
        spec.check(obs.runner)
    if not samples:
        raise PipelineError("no samples to run on")
    out_dir = Path(out_dir)
    with folder_lock(out_dir, wait=wait_lock):
        required = (*obs.rates, "latency_s")
        store = RecordStore(out_dir / "points.jsonl", KEY_FIELDS, required=required)
        ids = [spec.config_id(obs.key(), seed) for spec in specs]
        jobs = []
        for sample in samples:
            todo = tuple((i, json.dumps(k, sort_keys=True)) for i, spec in enumerate(specs) for k in spec.points()
                         if (spec.label, k, sample.digest, ids[i]) not in store)
            if todo:
                jobs.append(Job(sample, todo))
        total, done, errors = len(jobs), 0, []
        if on_progress:
            on_progress(0, total)

        def finish(_: int, result: tuple[list[dict[str, Any]], str | None]) -> bool:
            nonlocal done
            records, error = result
            store.append(records)  # on disk before the next job's result is looked at
            done += 1
            if on_progress:
                on_progress(done, total)
            if error:
                errors.append(error)
            return not errors

        work = functools.partial(run_job, observer if isinstance(observer, ObserverSpec) else obs, tuple(specs), ids,
                                 seed, str(cache_dir) if cache_dir else None)
        executor.run(work, jobs, finish)
        if errors:
            raise SweepError(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
        identity = data_identity(data or {}, samples, skipped)
        base = dict(config or {}, observer=_observer_json(observer, obs), data=identity, **executor.describe())
        outliers = size_outliers({s.id: sample_pixels(s) for s in samples})
        if outliers:
            warnings.warn(f"{len(outliers)} of {len(samples)} items are far outside the data's size range "
                          f"({'; '.join(f'{k}: {v}' for k, v in list(outliers.items())[:3])}); rates per pixel are "
                          "pixel-weighted, so they do not dominate the means", SizeOutlierWarning, stacklevel=2)
        curves = {spec.label: build_curve(obs, spec, ids[i], samples, store, base, seed)
                  for i, spec in enumerate(specs)}
        for label, curve in curves.items():
            save_curve(curve, out_dir / f"{file_name(label)}.json")
        return curves


def _observer_json(observer, obs: Observer) -> dict[str, Any]:
    spec = observer if isinstance(observer, ObserverSpec) else ObserverSpec(obs.name or type(obs).__name__)
    return {"name": spec.name, "options": spec.options, "key": obs.key()}


def file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_+.@" else "_" for c in label)


def ascending_rate(spec: PipelineSpec) -> list[dict[str, float]]:
    """The knob settings of ``spec`` from the lowest rate to the highest: the order of CompressAI's results
    files (image-codec qualities and keep ratios up, a video codec's CRF down)."""
    if spec.codec:
        up = getattr(codec_for(spec.codec), "higher_quality_value_is_better", True)
        return sorted(spec.points(), key=lambda k: k["quality"], reverse=not up)
    return sorted(spec.points(), key=lambda k: k["keep_ratio"])


def sample_pixels(sample: Sample) -> int:
    """H·W of an image, T·H·W of a clip: the denominator of its bits per pixel."""
    return int(np.prod(sample.image.shape[:-1]))


def build_curve(observer: Observer, spec: PipelineSpec, cid: str, samples: Sequence[Sample], store: RecordStore,
                config: dict[str, Any], seed: int) -> Curve:
    """Per sample, then one value per knob over the samples (``rd.aggregate``: per-pixel rates are total bits ÷
    total pixels, every other measure the mean over samples); points in ascending rate, as CompressAI's."""
    from tokencodec.tokens.compress import get_method

    channel = ("loss", *CHANNEL_RATES) if spec.channel is not None else ()
    names = [*(CODEC_RATES if spec.codec else ()), *(BITSTREAM_RATES if spec.method else ()), *channel,
             *observer.rates, "latency_s", *observer.measures]
    names = list(dict.fromkeys(names))
    knobs = ascending_rate(spec)
    unavailable = {s.id: why for s in samples if (why := observer.task.unavailable(s))}
    records = {(tuple(sorted(k.items())), s.digest): store.get((spec.label, k, s.digest, cid))
               for k in knobs for s in samples}
    names = [m for m in names if any(m in r for r in records.values())]  # e.g. a rate older records lack
    pixels = [sample_pixels(s) for s in samples]
    per_item: dict[str, dict[str, list[float]]] = {s.id: {m: [] for m in names} for s in samples}
    for s, n in zip(samples, pixels, strict=True):
        per_item[s.id][PIXELS] = [float(n)] * len(knobs)
    points = []
    for knob in knobs:
        values: dict[str, list[float]] = {m: [] for m in names}
        for s in samples:
            record = records[(tuple(sorted(knob.items())), s.digest)]
            for m in names:
                v = record.get(m, math.nan)
                values[m].append(v)
                per_item[s.id][m].append(v)
        point = {m: aggregate(m, v, pixels) for m, v in values.items()}
        if "bpp" in values:
            point["bpp_mean"] = aggregate("bpp_mean", values["bpp"])    # CompressAI's per-image mean, beside it
        points.append(OperatingPoint(point, knob=knob[spec.knob]))
    for metric in {m for why in unavailable.values() for m in why}:
        warnings.warn(f"{spec.label}: {metric} is unavailable for {sum(metric in w for w in unavailable.values())} "
                      f"of {len(samples)} samples (e.g. {next(w[metric] for w in unavailable.values() if metric in w)})"
                      "; their mean leaves them out", UnavailableMeasureWarning, stacklevel=2)
    outliers = size_outliers({s.id: n for s, n in zip(samples, pixels, strict=True)})
    libraries: dict[str, str] = {}
    extra: dict[str, Any] = {"pipeline": spec.to_json(),
                             "averaging": "per sample, then over samples: bpp and payload_bpp pixel-weighted (total "
                                          "bits / total pixels; bpp_mean is the per-image mean), every other measure "
                                          "the mean over samples"}
    if outliers:
        extra["size_outliers"] = outliers
    if spec.codec:
        codec = codec_for(spec.codec)
        libraries = codec.versions()
        extra["codec"] = {"name": spec.codec, "settings": codec.settings(), "quality_meaning": codec.quality_meaning}
    if spec.method:
        method = get_method(spec.method, seed=seed, **spec.options)
        extra["method"] = method.describe() if hasattr(method, "describe") else {
            "name": spec.method, "options": spec.options, "stage": method.stage, "paper": method.paper}
        if hasattr(method, "versions"):          # a method that writes a bitstream names its coder
            libraries = {**libraries, **method.versions()}
    cost = getattr(observer.runner, "cost", None)
    if cost is not None:                         # how tokens, FLOPs and KV bytes were counted (metrics.cost)
        extra["cost"] = cost.provenance()
    if spec.channel is not None:
        spec_channel = spec.channel_spec()
        extra["channel"] = {**spec_channel.to_json(), "models": [spec_channel.describe(v) for v in spec_channel.losses],
                            "no_image": "a uniform mid-grey image (128) shown to the observer when nothing decodes"}
        libraries = {**libraries, **_channel_versions(spec_channel)}
    if unavailable:
        extra["unavailable"] = unavailable
    what = " then ".join(x for x in (spec.codec, spec.method) if x)
    names = [*names, *(["bpp_mean"] if "bpp" in names else [])]
    return Curve(
        name=spec.label, points=points, knob=spec.knob, measures={m: lookup(m) for m in names},
        description=f"{what} judged by {observer.name}, {len(samples)} samples; latency_s is the pipeline plus the "
                    "model after the compression point (the cached preparation is not timed)",
        per_item=per_item, provenance=provenance(config={**config, **extra}, libraries=libraries, seed=seed))


def _channel_versions(spec) -> dict[str, str]:
    from importlib.metadata import version

    return {"raptorq": version("raptorq")} if spec.protected else {}


__all__ = ["Job", "KEY_FIELDS", "PreparedCache", "SizeOutlierWarning", "SweepError", "ascending_rate", "build_curve",
           "data_identity", "file_name", "run_job", "run_sweep", "sample_pixels"]
