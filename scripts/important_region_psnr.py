"""PSNR inside and outside the important regions, uniform vs semantic-guided allocation, per quality.

    python scripts/important_region_psnr.py --codecs jpegxl jpegxl-semantic jpeg2000 jpeg2000-semantic

On the diagnostic VQA test images (``--n``, seed 0): for each codec and quality, the mean file bits
and the PSNR (RGB, peak 255) over the pixels of the object patches (the ground-truth important
regions, ``VQASample.object_mask``) and over the rest, from the real decoded files. Prints Markdown.
"""

from __future__ import annotations

import argparse

import numpy as np

from tokencodec.codecs import get_codec
from tokencodec.data.vqa import PATCH, VQADataset


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()) if a.size else 0.0
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codecs", nargs="+", default=["jpegxl", "jpegxl-semantic", "jpeg2000", "jpeg2000-semantic"])
    p.add_argument("--n", type=int, default=700)
    args = p.parse_args(argv)
    samples = list(VQADataset("test", args.n, 0))
    print("| codec | quality | bits | PSNR objects (dB) | PSNR background (dB) |\n|---|---|---:|---:|---:|")
    for name in args.codecs:
        codec = get_codec(name)
        for q in codec.default_qualities if "jpeg2000" not in name else range(22, 41, 2):
            bits, inside, outside = [], [], []
            for s in samples:
                data = codec.encode(s.image, q)
                out = codec.decode(data)
                mask = np.kron(s.object_mask, np.ones((PATCH, PATCH), dtype=bool))
                bits.append(8 * len(data))
                inside.append((out[mask], s.image[mask]))
                outside.append((out[~mask], s.image[~mask]))
            pin = psnr(np.concatenate([o for o, _ in inside]), np.concatenate([i for _, i in inside]))
            pout = psnr(np.concatenate([o for o, _ in outside]), np.concatenate([i for _, i in outside]))
            print(f"| {name} | {q} | {np.mean(bits):.0f} | {pin:.2f} | {pout:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
