"""Time the codec sweep serial vs parallel and print the speed-up.

    python benchmarks/codec_sweep_parallel.py                 # Kodak, all six codecs, 10 qualities each
    python benchmarks/codec_sweep_parallel.py --dataset embedded --limit 2   # a quick smoke run

Both runs code the same images, codecs and qualities into fresh folders (nothing is resumed), one
after the other in this process, so the ratio compares like with like on this machine. The
results of both runs are also compared, so a parallel path that changed a number would show.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from tokencodec.bench.codec_sweep import plan_sweep, run_codec_sweep
from tokencodec.codecs import CODECS
from tokencodec.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="kodak", help="kodak (needs $TOKENCODEC_KODAK or a download), "
                        "embedded, or a folder")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--codecs", nargs="+", default=CODECS.names())
    args = parser.parse_args()

    items = load_dataset(args.dataset, args.limit)
    plans = plan_sweep(args.codecs)
    points = sum(len(p.qualities) for p in plans) * len(items)
    print(f"{len(items)} images × {len(plans)} codecs ({', '.join(p.codec for p in plans)}), "
          f"{points} encode/decode/measure points; {args.workers} workers, {os.cpu_count()} cores")
    timings, curves = {}, {}
    for mode, workers in (("serial", 1), ("parallel", args.workers)):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            curves[mode] = run_codec_sweep(items, plans, out, workers=workers)
            timings[mode] = time.perf_counter() - start
        print(f"{mode:9s} {timings[mode]:8.1f} s")
    same = all(np.array_equal(curves["serial"][p.codec].column(m), curves["parallel"][p.codec].column(m))
               for p in plans for m in ("bpp", "psnr-rgb", "ms-ssim-rgb"))
    print(f"speed-up (serial ÷ parallel): {timings['serial'] / timings['parallel']:.2f}×  "
          f"(ideal {min(args.workers, os.cpu_count() or 1)}×); identical results: {same}")


if __name__ == "__main__":
    main()
