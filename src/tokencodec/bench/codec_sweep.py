"""The codec sweep: codecs × qualities × images → one RD curve per codec.

Images are coded in parallel across processes, one task per (codec, image) covering all its
qualities. Finished points go to ``points/<codec>.jsonl`` at once, keyed by the image's pixel
hash, the quality and the encoder settings, so a rerun computes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokencodec.bench.store import RecordStore
from tokencodec.codecs import CodecError, get_codec
from tokencodec.data.images import ImageItem
from tokencodec.metrics.human import human_metrics
from tokencodec.provenance import provenance
from tokencodec.rd.curve import Curve, OperatingPoint
from tokencodec.rd.measures import KNOWN
from tokencodec.rd.results import save_curve

POINT_MEASURES = ("bpp", "psnr-rgb", "ms-ssim-rgb", "encoding_time", "decoding_time")
KEY_FIELDS = ("image_digest", "quality", "settings")


class SweepError(RuntimeError):
    pass


@dataclass(frozen=True)
class CodecPlan:
    codec: str
    qualities: tuple[int, ...]


def plan_sweep(codecs: Sequence[str], qualities: Sequence[int] | None = None) -> list[CodecPlan]:
    """Validate every codec and quality before any work starts (errors name the allowed range)."""
    plans = []
    for name in codecs:
        codec = get_codec(name)
        chosen = tuple(qualities) if qualities else codec.default_qualities
        for q in chosen:
            codec.check_quality(q)
        plans.append(CodecPlan(name, tuple(sorted(set(int(q) for q in chosen)))))
    return plans


def settings_id(codec_name: str) -> str:
    settings = get_codec(codec_name).settings()
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def code_image(codec_name: str, item: ImageItem, qualities: Sequence[int]) -> list[dict[str, Any]]:
    """Encode, decode and measure one image at each quality (runs in a worker process)."""
    import torch

    torch.set_num_threads(1)  # one process per core; threads would fight over the same cores
    codec = get_codec(codec_name)
    h, w, _ = item.image.shape
    settings, digest = settings_id(codec_name), item.digest
    records = []
    for q in qualities:
        try:
            t0 = time.perf_counter()
            data = codec.encode(item.image, q)
            t1 = time.perf_counter()
            decoded = codec.decode(data)
            t2 = time.perf_counter()
        except CodecError as err:
            raise SweepError(f"{codec_name} on image {item.name!r} at quality {q}: {err}") from err
        if decoded.shape != item.image.shape:
            raise SweepError(f"{codec_name} on image {item.name!r} at quality {q}: decoded shape "
                             f"{decoded.shape} differs from {item.image.shape}")
        records.append({
            "image": item.name, "image_digest": digest, "quality": q, "settings": settings,
            "bytes": len(data), "bpp": 8 * len(data) / (h * w),
            **human_metrics(item.image, decoded),
            "encoding_time": t1 - t0, "decoding_time": t2 - t1,
        })
    return records


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def build_curve(plan: CodecPlan, items: Sequence[ImageItem], store: RecordStore,
                config: dict[str, Any]) -> Curve:
    """Average per image, then over images (CompressAI's convention), at each quality."""
    codec = get_codec(plan.codec)
    settings = settings_id(plan.codec)
    per_item: dict[str, dict[str, list[float]]] = {it.name: {m: [] for m in POINT_MEASURES} for it in items}
    points = []
    for q in plan.qualities:
        values: dict[str, list[float]] = {m: [] for m in POINT_MEASURES}
        for it in items:
            record = store.records[(it.digest, q, settings)]
            for m in POINT_MEASURES:
                values[m].append(record[m])
                per_item[it.name][m].append(record[m])
        points.append(OperatingPoint({m: _mean(v) for m, v in values.items()}, knob=q))
    return Curve(
        name=plan.codec, points=points, knob="quality",
        measures={m: KNOWN[m] for m in POINT_MEASURES},
        description=f"{plan.codec} ({codec.quality_meaning}) on {len(items)} images",
        per_item=per_item,
        provenance=provenance(
            config={**config, "codec": plan.codec, "qualities": list(plan.qualities),
                    "settings": codec.settings(), "images": [it.name for it in items],
                    "averaging": "per image, then mean over images"},
            libraries=codec.versions()),
    )


def run_codec_sweep(items: Sequence[ImageItem], plans: Sequence[CodecPlan], out_dir: str | Path,
                    workers: int = 1, config: dict[str, Any] | None = None,
                    on_progress: Callable[[int, int], None] | None = None) -> dict[str, Curve]:
    """Run what is missing, then write ``<out_dir>/<codec>.json`` for each codec."""
    out_dir = Path(out_dir)
    stores = {p.codec: RecordStore(out_dir / "points" / f"{p.codec}.jsonl", KEY_FIELDS) for p in plans}
    tasks = []
    for plan in plans:
        settings = settings_id(plan.codec)
        for item in items:
            todo = [q for q in plan.qualities if (item.digest, q, settings) not in stores[plan.codec]]
            if todo:
                tasks.append((plan.codec, item, todo))
    total, done = len(tasks), 0
    if on_progress:
        on_progress(0, total)

    def finish(codec: str, records: list[dict[str, Any]]) -> None:
        nonlocal done
        stores[codec].append(records)
        done += 1
        if on_progress:
            on_progress(done, total)

    if workers <= 1 or total <= 1:
        for codec, item, todo in tasks:
            finish(codec, code_image(codec, item, todo))
    else:
        _run_parallel(tasks, workers, finish)

    config = dict(config or {}, workers=workers)
    curves = {p.codec: build_curve(p, items, stores[p.codec], config) for p in plans}
    for name, curve in curves.items():
        save_curve(curve, out_dir / f"{name}.json")
    return curves


def _run_parallel(tasks, workers: int, finish) -> None:
    # "spawn": forking a parent that already runs torch threads can deadlock the children.
    ctx = multiprocessing.get_context("spawn")
    error: BaseException | None = None
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: dict[Future, str] = {pool.submit(code_image, c, it, todo): c for c, it, todo in tasks}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    codec = pending.pop(future)
                    if future.cancelled():
                        continue
                    if future.exception() is None:
                        finish(codec, future.result())  # keep every success, even after a failure
                    elif error is None:
                        error = future.exception()
                        for other in pending:
                            other.cancel()  # tasks already running still finish and are kept
        except BaseException:  # Ctrl-C: drop what has not started; finished points are on disk
            for future in pending:
                future.cancel()
            raise
    if error is not None:
        raise error
