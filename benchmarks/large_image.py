"""Peak memory and time of the human metrics and the codecs on one very large image.

    python benchmarks/large_image.py                 # 8000×6000 (48 Mpx), astronaut upscaled
    python benchmarks/large_image.py --size 2000x1500 --codecs jpeg webp

Each measurement runs in a fresh subprocess, so its peak resident memory (VmHWM) is its own. The
baseline, measured in the same run, is pytorch_msssim's ``ms_ssim`` on the whole RGB image (what
tokencodec called before); the new path is ``tokencodec.metrics.human.ms_ssim`` (one channel at a
time: the same value, a third of the memory). The ratios new ÷ old are printed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np, torch
torch.set_num_threads(1)
ref, dist = np.load(sys.argv[1]), np.load(sys.argv[2])
what = sys.argv[3]
t0 = time.perf_counter()
if what == "old-ms-ssim":
    from pytorch_msssim import ms_ssim
    t = lambda x: torch.from_numpy(np.array(x, dtype=np.float32)).permute(2, 0, 1)[None]
    value = float(ms_ssim(t(ref), t(dist), data_range=255.0))
elif what == "new-ms-ssim":
    from tokencodec.metrics.human import ms_ssim
    value = ms_ssim(ref, dist)
elif what == "psnr":
    from tokencodec.metrics.human import psnr
    value = psnr(ref, dist)
else:
    from tokencodec.codecs import get_codec
    codec = get_codec(what)
    lo, hi = codec.quality_range
    data = codec.encode(ref, (lo + hi) // 2)
    value = 8 * len(data) / (ref.shape[0] * ref.shape[1])
    codec.decode(data)
seconds = time.perf_counter() - t0
peak = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM")))
print(json.dumps({"value": value, "seconds": seconds, "peak_mb": peak / 1024}))
"""


def measure(what: str, ref: Path, dist: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ref), str(dist), what], capture_output=True, text=True)
    if out.returncode:
        return {"value": None, "seconds": None, "peak_mb": None, "error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    import numpy as np
    from PIL import Image
    from skimage import data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="8000x6000", help="WIDTHxHEIGHT")
    parser.add_argument("--codecs", nargs="*", default=["jpeg", "webp", "avif", "jpeg2000", "jpegxl", "heic"])
    args = parser.parse_args()
    w, h = (int(x) for x in args.size.lower().split("x"))
    ref = np.asarray(Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BICUBIC))
    noise = np.random.default_rng(0).integers(-6, 7, ref.shape)
    dist = np.clip(ref.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        rp, dp = Path(tmp) / "ref.npy", Path(tmp) / "dist.npy"
        np.save(rp, ref)
        np.save(dp, dist)
        del noise
        rows = {what: measure(what, rp, dp) for what in ["old-ms-ssim", "new-ms-ssim", "psnr", *args.codecs]}
    print(f"{w}×{h} ({w * h / 1e6:.0f} Mpx), one torch thread per measurement")
    print(f"{'what':14s} {'seconds':>9s} {'peak MB':>9s}  value")
    for what, r in rows.items():
        if r.get("error"):
            print(f"{what:14s} failed: {r['error']}")
            continue
        print(f"{what:14s} {r['seconds']:9.1f} {r['peak_mb']:9.0f}  {r['value']:.6f}")
    old, new = rows["old-ms-ssim"], rows["new-ms-ssim"]
    if old.get("seconds") and new.get("seconds"):
        print(f"MS-SSIM new ÷ old: time {new['seconds'] / old['seconds']:.2f}×, peak memory "
              f"{new['peak_mb'] / old['peak_mb']:.2f}×, |Δ value| {abs(new['value'] - old['value']):.1e}")


if __name__ == "__main__":
    main()
