"""Calibrate temporal's VBR thresholds per average keep ratio on a tuning split of a video observer.

    python scripts/calibrate_temporal.py --observer diagnostic-video --data split=val n=400 \
        --ratios 0.3125 0.28125 0.265625

Runs the observer's model once per tuning video with a recorder in temporal's place (it receives
the same video tokens at the same layer and keeps every token), then bisects one τ per ratio over
the pooled videos (:func:`~tokencodec.tokens.compress.temporal.calibrate_thresholds`) and prints
the options to paste into a study: the report split then runs with these τ, never re-tuned on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_rdo import parse_data  # noqa: E402  (the same key=value data options)

from tokencodec.observers import ObserverSpec  # noqa: E402
from tokencodec.tokens.compress import Budget  # noqa: E402
from tokencodec.tokens.compress.temporal import Temporal, calibrate_thresholds  # noqa: E402


class VideoRecorder(Temporal):
    """temporal's input, recorded; every token kept."""

    name = "temporal"

    def __init__(self, **options):
        super().__init__(**options)
        self.videos: list[torch.Tensor] = []
        self.layout: tuple | None = None

    def __call__(self, batch, budget):
        self.videos.extend(batch.features.float().cpu())
        self.layout = (batch.grid, batch.frames)
        return batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--observer", default="diagnostic-video")
    p.add_argument("--data", nargs="*", default=["split=val", "n=400"], help="the observer's data options")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.3125, 0.28125, 0.265625])
    p.add_argument("--gop", type=int, default=0)
    p.add_argument("--search", type=int, default=0)
    p.add_argument("--intra", default="all", choices=["all", "residual"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    observer = ObserverSpec(args.observer).build()
    recorder = VideoRecorder(gop=args.gop, search=args.search, intra=args.intra)
    samples = observer.samples(**parse_data(args.data))
    for sample in samples:
        observer.runner.run(sample, sample.image, recorder, Budget(ratio=1.0), None, False)
    grid, frames = recorder.layout
    taus = calibrate_thresholds(torch.stack(recorder.videos), grid, frames, args.ratios, gop=args.gop,
                                search=args.search, intra=args.intra)
    options = {"rate_control": "vbr", "ratios": args.ratios, "thresholds": [float(f"{t:.6g}") for t in taus]}
    options.update({k: v for k, v in (("gop", args.gop), ("search", args.search), ("intra", args.intra))
                    if v != Temporal.Options.__dataclass_fields__[k].default})
    print(json.dumps({"observer": args.observer, "data": parse_data(args.data), "videos": len(samples),
                      "options": options}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
