"""Token codec encode/decode throughput against constriction's raw range coder, measured in the same run.

Ratio printed: our encode (decode) time ÷ the raw coder's time for the same symbols under the same
integer tables (one ``encode`` call per channel, no quantisation, no container): what the token
codec adds on top of entropy coding. Tokens/s and MB/s (of float32 features in) beside it.

Set-up: Laplace-distributed tokens, D channels (default 1024, a CLIP-L width), K tokens kept of N
(default 576 of 576 and 144 of 576), scalar quantiser with step 0.5 fitted on 4 000 calibration tokens,
factorised Laplace tables; median of ``--repeats`` runs.

Run:  python benchmarks/token_codec_throughput.py [--dim 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    from tokencodec.entropy import FactorizedTables, ScalarQuantizer, TokenCodecProfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cal = rng.laplace(0, 1, (4000, args.dim)).astype(np.float32)
    q = ScalarQuantizer.fit(cal, 0.5)
    profile = TokenCodecProfile("benchmark", -2, q, FactorizedTables.fit(q.quantize(cal)))
    models = profile.entropy._models              # the same prebuilt models the codec uses
    from importlib.metadata import version

    print(f"constriction {version('constriction')}, D={args.dim}, repeats {args.repeats} (median)")
    print("| K of N | encode ms | raw encode ms | ratio | decode ms | raw decode ms | ratio | "
          "tokens/s enc / dec | MB/s enc / dec | bits/token |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, n in ((576, 576), (144, 576)):
        row(k, n, rng, q, profile, models, args.repeats)


def row(k, n, rng, q, profile, models, repeats) -> None:
    import constriction

    from tokencodec.entropy import decode_tokens, encode_tokens

    x = rng.laplace(0, 1, (k, q.dim)).astype(np.float32)
    pos = np.sort(rng.choice(n, k, replace=False))
    enc = encode_tokens(x, pos, (24, 24), 1, profile)
    idx = np.ascontiguousarray((profile.entropy.clip(q.quantize(x))[0] - profile.entropy.lo).astype(np.int32).T)

    def raw_encode():
        e = constriction.stream.queue.RangeEncoder()
        for c, m in enumerate(models):
            e.encode(idx[c], m)
        return e.get_compressed()

    words = raw_encode()

    def raw_decode():
        d = constriction.stream.queue.RangeDecoder(words)
        for m in models:
            d.decode(m, k)

    te = timed(lambda: encode_tokens(x, pos, (24, 24), 1, profile), repeats)
    td = timed(lambda: decode_tokens(enc.data, profile), repeats)
    re, rd = timed(raw_encode, repeats), timed(raw_decode, repeats)
    mb = x.nbytes / 1e6
    print(f"| {k} of {n} | {te * 1e3:.1f} | {re * 1e3:.1f} | {te / re:.2f} | {td * 1e3:.1f} | {rd * 1e3:.1f} | "
          f"{td / rd:.2f} | {k / te:,.0f} / {k / td:,.0f} | {mb / te:.1f} / {mb / td:.1f} | "
          f"{enc.total_bits / k:.0f} |")


if __name__ == "__main__":
    main()
