"""Calibrate rdo's VBR λ per average keep ratio on a tuning split of an observer, and print them.

    python scripts/calibrate_rdo.py --observer fashion-vit --data split=val limit=1000 \
        --ratios 0.5 0.25 0.125 0.0625 --value cls-attention

Runs the observer's model once per tuning image with a recorder in rdo's place (it reads the same
signals at the same layer and keeps every token), pools the token values, and prints the λ that
keep each average ratio (:func:`~tokencodec.tokens.compress.rdo.calibrate_lambdas`) as the options
to paste into a study: the report split then runs with these λ, never re-tuned on it.
"""

from __future__ import annotations

import argparse
import json

import torch

from tokencodec.observers import ObserverSpec
from tokencodec.tokens.compress import Budget
from tokencodec.tokens.compress.rdo import RDO, calibrate_lambdas, token_values


class ValueRecorder(RDO):
    """rdo's signals and value proxy, recorded; every token kept."""

    name = "rdo"

    def __init__(self, **options):
        super().__init__(**options)
        self.values: list[torch.Tensor] = []

    def __call__(self, batch, budget):
        self.values.extend(token_values(batch, self.options.value).cpu())
        return batch


def parse_data(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        out[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false", "null") else value
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--observer", default="fashion-vit")
    p.add_argument("--data", nargs="*", default=["split=val", "limit=1000"], help="the observer's data options")
    p.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.25, 0.125, 0.0625])
    p.add_argument("--value", default="cls-attention", choices=["cls-attention", "norm"])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    observer = ObserverSpec(args.observer).build()
    recorder = ValueRecorder(value=args.value)
    samples = observer.samples(**parse_data(args.data))
    for sample in samples:
        observer.runner.run(sample, sample.image, recorder, Budget(ratio=1.0), None, False)
    lambdas = calibrate_lambdas(recorder.values, args.ratios)
    print(json.dumps({"observer": args.observer, "data": parse_data(args.data), "images": len(samples),
                      "options": {"value": args.value, "rate_control": "vbr", "ratios": args.ratios,
                                  "lambdas": [float(f"{x:.6g}") for x in lambdas]}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
