"""Time the codec sweep on each executor (serial, process pool, Ray) and print the speed-ups.

    python benchmarks/codec_sweep_parallel.py                 # Kodak, all six codecs, 10 qualities each
    python benchmarks/codec_sweep_parallel.py --dataset embedded --limit 2   # a quick smoke run

Every run codes the same images, codecs and qualities into a fresh folder (nothing is resumed), one
after the other in this process, so the ratios compare like with like on this machine. The results
files are compared too (timings aside), so an executor that changed a number would show.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from tokencodec.bench.engine import run_sweep
from tokencodec.bench.executors import make_executor
from tokencodec.codecs import CODECS, get_codec
from tokencodec.observers import ObserverSpec, observer_for
from tokencodec.pipeline import PipelineSpec

TIMINGS = {"latency_s", "encoding_time", "decoding_time"}


def _results(folder: str) -> dict:
    out = {}
    for f in sorted(Path(folder).glob("*.json")):
        d = json.loads(f.read_text())
        out[f.name] = ({k: v for k, v in d["results"].items() if k not in TIMINGS},
                       {i: {k: v for k, v in m.items() if k not in TIMINGS} for i, m in d["per_item"].items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="kodak", help="kodak (needs $TOKENCODEC_KODAK or a download), "
                        "embedded, or a folder")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--codecs", nargs="+", default=CODECS.names())
    parser.add_argument("--executors", nargs="+", default=["serial", "process", "ray"])
    args = parser.parse_args()

    observer = ObserverSpec("human")
    data = {"dataset": args.dataset, **({"limit": args.limit} if args.limit else {})}
    samples = observer_for(observer).samples(**data)
    specs = [PipelineSpec(codec=c, qualities=get_codec(c).default_qualities) for c in args.codecs]
    points = sum(len(s.qualities) for s in specs) * len(samples)
    print(f"{len(samples)} images × {len(specs)} codecs ({', '.join(args.codecs)}), {points} points; "
          f"{args.workers} workers, {os.cpu_count()} cores")
    timings, results = {}, {}
    for name in args.executors:
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            run_sweep(observer, samples, specs, out, executor=make_executor(name, args.workers), data=data)
            timings[name] = time.perf_counter() - start
            results[name] = _results(out)
        print(f"{name:8s} {timings[name]:8.1f} s   speed-up vs serial: "
              f"{timings.get('serial', timings[name]) / timings[name]:.2f}×")
    first = next(iter(results.values()))
    print(f"identical results files on every executor: {all(r == first for r in results.values())}")


if __name__ == "__main__":
    main()
