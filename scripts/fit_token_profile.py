"""Fit token codec profiles (scalar quantiser + factorised entropy tables) on a tuning split of an observer.

    python scripts/fit_token_profile.py --observer diagnostic-mllm --data split=val n=700 \
        --steps 0.25 0.5 1 2 --out src/tokencodec/entropy/profiles/diagnostic-mllm

Runs the observer's model once per tuning sample with a recorder at the point where ``coded`` codes
(the vision features a pre-LLM method receives; every token kept), pools the tokens, and for each
step fits the quantiser (per-channel means) and one Laplace table per channel; writes
``step-<s>.safetensors`` per step (and ``vq-<k>.safetensors`` per ``--codebooks`` size: k-means
codebook, adaptive index model) and prints each profile's id, the calibration bits per token at
that step and the mean squared quantisation error. The report split then runs with these files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_rdo import parse_data  # noqa: E402

from tokencodec.entropy import (  # noqa: E402
    AdaptiveCategorical,
    FactorizedTables,
    ScalarQuantizer,
    TokenCodecProfile,
    VectorQuantizer,
)
from tokencodec.observers import ObserverSpec  # noqa: E402
from tokencodec.tokens.compress import Budget, TokenMethod  # noqa: E402


class TokenRecorder(TokenMethod):
    """Keeps every token and records the features it was given (as ``coded`` receives them)."""

    name = "recorder"
    features = "vision"

    def __init__(self, cls: bool = False):
        super().__init__()
        self.tokens: list[np.ndarray] = []
        self.cls = cls

    def __call__(self, batch, budget):
        if self.cls and batch.cls is None:
            raise SystemExit("--cls: this observer's tokens have no CLS")
        parts = [batch.features] if not self.cls else [batch.cls[:, None], batch.features]
        self.tokens.extend(x.float().cpu().numpy() for x in torch.cat(parts, 1))
        return batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--observer", default="diagnostic-mllm")
    p.add_argument("--data", nargs="*", default=["split=val", "n=700"])
    p.add_argument("--steps", nargs="*", type=float, default=[0.25, 0.5, 1.0, 2.0])
    p.add_argument("--dist", default="laplace", choices=["laplace", "gaussian"])
    p.add_argument("--codebooks", nargs="*", type=int, default=[],
                   help="also fit k-means codebooks of these sizes (vq-<k>: one index per token)")
    p.add_argument("--cls", action="store_true",
                   help="the files also carry the CLS (prefix 1: a ViT classifier's receiver reads it)")
    p.add_argument("--layer", type=int, default=-2, help="the layer the tokens come from (recorded in the profile)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    observer = ObserverSpec(args.observer).build()
    recorder = TokenRecorder(args.cls)
    samples = observer.samples(**parse_data(args.data))
    for sample in samples:     # pixels_changed=True: the runner encodes this image itself (no cached tokens)
        observer.runner.run(sample, sample.image, recorder, Budget(ratio=1.0), None, True)
    cal = np.concatenate(recorder.tokens)
    args.out.mkdir(parents=True, exist_ok=True)
    print(json.dumps({"observer": args.observer, "data": parse_data(args.data), "samples": len(samples),
                      "tokens": int(len(cal)), "dim": int(cal.shape[1]), "feature_std": float(cal.std())}))
    for step in args.steps:
        q = ScalarQuantizer.fit(cal, step)
        symbols = q.quantize(cal)
        tables = FactorizedTables.fit(symbols, args.dist)
        profile = TokenCodecProfile(observer.key(), args.layer, q, tables, int(args.cls))
        path = args.out / f"step-{step:g}.safetensors"
        profile.save(path)
        clipped, _ = tables.clip(symbols)
        bits = tables.ideal_bits(clipped) / len(cal)
        mse = float(((q.dequantize(clipped) - cal) ** 2).mean())
        print(json.dumps({"profile": str(path), "id": profile.id.hex(), "step": step,
                          "bits_per_token": round(bits, 1), "mse": mse}))
    for k in args.codebooks:
        vq = VectorQuantizer.fit(cal, k, iterations=20, seed=0)
        idx = vq.quantize(cal)
        profile = TokenCodecProfile(observer.key(), args.layer, vq, AdaptiveCategorical.fit(idx, k), int(args.cls))
        path = args.out / f"vq-{k}.safetensors"
        profile.save(path)
        hist = np.bincount(idx, minlength=k) / len(idx)
        bits = float(-(hist[hist > 0] * np.log2(hist[hist > 0])).sum())
        mse = float(((vq.dequantize(idx) - cal) ** 2).mean())
        print(json.dumps({"profile": str(path), "id": profile.id.hex(), "codebook": k,
                          "bits_per_token": round(bits, 2), "mse": mse}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
