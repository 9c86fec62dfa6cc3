"""Cost of a token sweep of 8 budgets of one method against one full-token evaluation.

    python benchmarks/token_sweep_cache.py                  # EfficientNet-Lite0, embedded photos + crops
    python benchmarks/token_sweep_cache.py --method pool-avg --samples 40

Baseline: one evaluation of every sample with all tokens (encoder, then head), as a user would run
the model once. Sweep: the sweep engine (``run_sweep``) over the same samples with 8 keep ratios,
starting from an empty preparation cache, so each sample is encoded once and the 8 budgets reuse
it. Both run with one torch thread (the engine runs every job on one thread). They are run
alternately ``--rounds`` times; the ratio of medians is printed (target: ≤ 1.5).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import tokencodec.bench.engine as engine
from tokencodec.observers import ObserverSpec, observer_for
from tokencodec.pipeline import PipelineSpec

RATIOS = (1.0, 0.75, 0.5, 0.375, 0.25, 0.125, 0.0625, 0.03125)  # 8 budgets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="divprune")
    parser.add_argument("--samples", type=int, default=20, help="embedded photos, whole and 4 corner crops")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    observer = observer_for(ObserverSpec("efficientnet-lite0"))
    samples = observer.samples(dataset="embedded", crops=4)[: args.samples]
    print(f"observer {observer.name}, {len(samples)} samples, method {args.method}, {len(RATIOS)} budgets "
          f"{list(RATIOS)}, 1 torch thread")

    def full_evaluation() -> None:
        for s in samples:
            prepared = observer.prepare(s)  # the encoder, and the head on all tokens
            observer.observe(s, s.image, None, None, prepared, pixels_changed=False)

    def sweep() -> None:
        engine._CACHES.clear()  # every round starts from an empty cache
        with tempfile.TemporaryDirectory() as out:
            engine.run_sweep(observer, samples, [PipelineSpec(method=args.method, keep_ratios=RATIOS)], out)

    full_evaluation()  # warm-up: weights in cache, kernels chosen
    times: dict[str, list[float]] = {"full": [], "sweep": []}
    for _ in range(args.rounds):
        for name, fn in (("full", full_evaluation), ("sweep", sweep)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    full, swept = statistics.median(times["full"]), statistics.median(times["sweep"])
    print(f"one full-token evaluation: {full:.2f} s (median of {args.rounds})")
    print(f"sweep of {len(RATIOS)} budgets:       {swept:.2f} s")
    print(f"sweep ÷ full evaluation: {swept / full:.2f}×  (target ≤ 1.5×; without the cache it would be "
          f"about {len(RATIOS)}×)")


if __name__ == "__main__":
    main()
