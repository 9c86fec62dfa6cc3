"""H.264 vs H.265 vs AV1 on camera-pan sequences: real encodes over a CRF ladder, VMAF/PSNR/SSIM, BD-rate.

    python scripts/video_codecs.py --out docs/studies/video-codecs/results

Sequences: each embedded photo (and, when ``$TOKENCODEC_KODAK`` names the Kodak folder, the first
``--kodak`` Kodak images) is resized so its short side covers the frame plus the pan's travel, centre
cropped, panned by ``--step`` pixels per frame (``tokencodec.data.camera_motion.pan``) and cropped to
``--size``×``--size`` so no fill border shows. Directions cycle right, down, left, up over the sequences.

Per codec and CRF, per sequence: file bits (the whole Matroska file), bpp (bits per pixel per frame),
kbps at ``FRAME_RATE`` (30) frames per second, VMAF (vmaf_v0.6.1), PSNR (Y and YUV-average on yuv420p,
and RGB), SSIM (Y and all on yuv420p), encode and decode wall time. Point values are means over the
sequences; per-sequence values are in ``per_item``. One results file per codec (the project's Curve
layout, written atomically), then a Markdown table of BD-rate against h264 on VMAF and PSNR-Y: the
mean of the per-sequence BD-rates (as in codec test conditions) and the BD-rate of the mean curves.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import warnings
from pathlib import Path

import numpy as np

from tokencodec.codecs.video import FRAME_RATE, get_video_codec
from tokencodec.data.camera_motion import ORDER, pan_sequence
from tokencodec.metrics.video import video_quality
from tokencodec.provenance import provenance
from tokencodec.rd import Curve, Measure, bd_rate_arrays, save_curve
from tokencodec.rd.bd import BDOverlapWarning

CODECS = ("h264", "h265", "av1")
MEASURES = {
    "bits": Measure("bits", "bit", False, "rate", "size of the whole Matroska file, per sequence"),
    "bpp": Measure("bpp", "bit/pixel", False, "rate", "file bits per pixel per frame (bits / (T·H·W))"),
    "kbps": Measure("kbps", "kbit/s", False, "rate", f"file bits per second at {FRAME_RATE} frames per second"),
    "vmaf": Measure("vmaf", "", True, "distortion", "VMAF (libvmaf vmaf_v0.6.1), mean over frames"),
    "psnr-y": Measure("psnr-y", "dB", True, "distortion", "PSNR of Y on yuv420p BT.601 limited, mean over frames"),
    "psnr-yuv": Measure("psnr-yuv", "dB", True, "distortion",
                        "ffmpeg psnr_avg on yuv420p (MSE over all Y, U, V samples), mean over frames"),
    "psnr-rgb": Measure("psnr-rgb", "dB", True, "distortion", "PSNR over R, G, B, mean over frames"),
    "ssim-y": Measure("ssim-y", "", True, "distortion", "SSIM of Y on yuv420p (ffmpeg ssim), mean over frames"),
    "ssim-yuv": Measure("ssim-yuv", "", True, "distortion", "ffmpeg ssim 'All' on yuv420p, mean over frames"),
    "encoding_time": Measure("encoding_time", "s", False, "rate", "encoder wall-clock time per sequence"),
    "decoding_time": Measure("decoding_time", "s", False, "rate", "decoder wall-clock time per sequence"),
}
# Equal CRFs are not equal qualities across encoders: SVT-AV1's scale reaches much higher quality at the
# same number, and its coarsest CRF (63) gives about VMAF 70 here. So each ladder was chosen (from a trial
# run) to span about VMAF 70..99, for the curves to share most of the quality axis BD-rate integrates over.
LADDERS = {"h264": (19, 22, 25, 28, 31, 34, 37), "h265": (22, 25, 28, 31, 34, 37, 40),
           "av1": (30, 38, 45, 51, 56, 60, 63)}


def load_sequences(size: int, frames: int, step: int, kodak: int) -> tuple[dict[str, np.ndarray], list[str]]:
    from tokencodec.data.embedded import load_embedded

    items = [(f"embedded/{i.name}", i.image) for i in load_embedded()]
    sources = ["embedded (scikit-image: astronaut, chelsea, coffee, rocket)"]
    folder = os.environ.get("TOKENCODEC_KODAK")
    if folder and kodak > 0:
        from tokencodec.data.kodak import load_kodak

        items += [(f"kodak/{i.name}", i.image) for i in load_kodak(kodak, folder)]
        sources.append(f"Kodak ({folder}, first {kodak} images)")
    seqs = {f"{name}:{ORDER[k % 4]}": pan_sequence(img, size, frames, step, ORDER[k % 4])
            for k, (name, img) in enumerate(items)}
    return seqs, sources


def measure(name: str, seqs: dict[str, np.ndarray], crfs: tuple[int, ...]) -> dict[str, dict[str, list[float]]]:
    """per sequence -> measure -> one value per CRF, from real encodes and decodes."""
    codec = get_video_codec(name)
    per_item: dict[str, dict[str, list[float]]] = {s: {m: [] for m in MEASURES} for s in seqs}
    for crf in crfs:
        for seq_name, frames in seqs.items():
            t0 = time.perf_counter()
            data = codec.encode(frames, crf)
            t1 = time.perf_counter()
            decoded = codec.decode(data)
            t2 = time.perf_counter()
            q = video_quality(frames, decoded, ("psnr", "ssim", "vmaf", "psnr-rgb")).mean
            t, h, w = frames.shape[:3]
            bits = 8 * len(data)
            row = {"bits": bits, "bpp": bits / (t * h * w), "kbps": bits * FRAME_RATE / t / 1000,
                   "vmaf": q["vmaf"], "psnr-y": q["psnr_y"], "psnr-yuv": q["psnr_avg"], "psnr-rgb": q["psnr_rgb"],
                   "ssim-y": q["ssim_y"], "ssim-yuv": q["ssim_all"], "encoding_time": t1 - t0,
                   "decoding_time": t2 - t1}
            for m, v in row.items():
                per_item[seq_name][m].append(float(v))
        mean = {m: np.mean([per_item[s][m][-1] for s in seqs]) for m in ("kbps", "vmaf", "psnr-y")}
        print(f"  {name} crf {crf}: {mean['kbps']:.1f} kbps, VMAF {mean['vmaf']:.2f}, PSNR-Y {mean['psnr-y']:.2f} dB",
              flush=True)
    return per_item


def fingerprint(seqs: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name, frames in seqs.items():
        h.update(f"{name}\0{hashlib.sha256(frames.tobytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:16]


def bd(anchor: dict, test: dict, seqs: list[str], metric: str) -> tuple[float | None, float | None, int, float]:
    """(mean of per-sequence BD-rates, BD-rate of the mean curves, sequences without overlap, overlap of the
    mean curves on the quality axis), BD-rates in %."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BDOverlapWarning)
        per_seq = [bd_rate_arrays(anchor[s]["kbps"], anchor[s][metric], test[s]["kbps"], test[s][metric],
                                  rate="kbps", metric=metric) for s in seqs]
        mean_of = [np.mean([d[s][m] for s in seqs], axis=0) for d in (anchor, test) for m in ("kbps", metric)]
        pooled = bd_rate_arrays(*mean_of, rate="kbps", metric=metric)
    values = [r.value for r in per_seq if r.value is not None]
    return (float(np.mean(values)) if values else None), pooled.value, len(per_seq) - len(values), pooled.overlap


def bd_table(per_codec: dict[str, dict], seqs: list[str], anchor: str = "h264") -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:+.1f} %"  # noqa: E731
    lines = ["| codec | BD-rate VMAF (mean of sequences) | BD-rate VMAF (mean curve, overlap) | "
             "BD-rate PSNR-Y (mean of sequences) | BD-rate PSNR-Y (mean curve, overlap) |", "|---|---:|---:|---:|---:|"]
    for name, per_item in per_codec.items():
        if name == anchor:
            continue
        cells = []
        for metric in ("vmaf", "psnr-y"):
            mean, pooled, missing, overlap = bd(per_codec[anchor], per_item, seqs, metric)
            cells += [fmt(mean) + (f" ({missing} seq. without overlap)" if missing else ""),
                      f"{fmt(pooled)} ({overlap:.0%})"]
        lines.append(f"| {name} vs {anchor} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/studies/video-codecs/results"))
    p.add_argument("--codecs", nargs="+", default=list(CODECS), choices=CODECS)
    p.add_argument("--size", type=int, default=256, help="frame width and height in pixels")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--step", type=int, default=2, help="pan speed in pixels per frame")
    p.add_argument("--kodak", type=int, default=8, help="Kodak images to add when $TOKENCODEC_KODAK is set")
    args = p.parse_args(argv)
    if "h264" not in args.codecs:
        p.error("--codecs must include h264, the BD-rate anchor")
    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 logs every encoder start at INFO; keep errors only
    started = time.perf_counter()
    seqs, sources = load_sequences(args.size, args.frames, args.step, args.kodak)
    print(f"{len(seqs)} sequences of {args.frames} frames, {args.size}×{args.size}, pan {args.step} px/frame, "
          f"from {'; '.join(sources)}", flush=True)
    data = {"spec": {"dataset": "camera-pan", "sources": sources, "size": args.size, "frames": args.frames,
                     "step": args.step, "directions": list(ORDER)},
            "items": list(seqs), "fingerprint": fingerprint(seqs)}
    per_codec = {}
    for name in args.codecs:
        codec = get_video_codec(name)
        crfs = LADDERS[name]
        per_item = measure(name, seqs, crfs)
        per_codec[name] = per_item
        columns = {"crf": list(crfs)} | {m: [float(np.mean([per_item[s][m][i] for s in seqs]))
                                               for i in range(len(crfs))] for m in MEASURES}
        versions = codec.versions()
        versions.update(video_quality(seqs[next(iter(seqs))][:2], seqs[next(iter(seqs))][:2], ("vmaf",)).versions)
        curve = Curve.from_columns(
            name, columns, knob="crf",
            measures=MEASURES,  # the knob column "crf" is not a measure: its meaning is in the description
            description=f"{codec.encoder} over CRF {list(crfs)} ({codec.quality_meaning}) on {len(seqs)} "
                        "camera-pan sequences",
            per_item=per_item,
            provenance=provenance(config={"data": data, "codec": name, "settings": codec.settings(),
                                          "crf": list(crfs), "frame_rate": FRAME_RATE,
                                          "metrics": "tokencodec.metrics.video.video_quality"},
                                  libraries=versions, seed=0))
        print(f"wrote {save_curve(curve, args.out / f'{name}.json')}", flush=True)
    print(f"\nBD-rate against h264 (negative: fewer bits at equal quality; rates in kbps at {FRAME_RATE} fps)\n")
    print(bd_table(per_codec, list(seqs)))
    print(f"\nruntime {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
