"""Per-frame video quality (PSNR, SSIM, VMAF) measured by ffmpeg's own filters.

The frames go to the ffmpeg binary bundled with ``imageio-ffmpeg`` as raw rgb24 files; each metric is
one ffmpeg run whose per-frame values are read back (``metadata=print`` for psnr/ssim, libvmaf's JSON
log for VMAF). Which colour space each value is in matters, because PSNR on YUV and on RGB differ:

- ``psnr_y``, ``psnr_u``, ``psnr_v``, ``psnr_avg``, ``ssim_y``, ``ssim_u``, ``ssim_v``, ``ssim_all``, ``vmaf``:
  after converting both videos to 8-bit yuv420p with BT.601 limited-range coefficients (the same
  conversion the video codecs in ``tokencodec.codecs.video`` use). ``psnr_avg`` is ffmpeg's: PSNR of the
  MSE averaged over all Y, U, V samples (so luma weighs 4× each chroma plane); ``ssim_all`` likewise.
- ``psnr_rgb``: on the R, G, B planes themselves (ffmpeg's gbrp), PSNR of the MSE over all three planes;
  this is the project's ``psnr-rgb`` of each frame, and what a numpy PSNR of the uint8 arrays gives.
- VMAF uses libvmaf's built-in default model (``vmaf_v0.6.1``, trained on 1080p viewing); on small frames
  its absolute values are not calibrated viewing scores, only comparable with each other.

Means are arithmetic means over frames of the per-frame values (in dB for PSNR).
"""

from __future__ import annotations

import functools
import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

METRICS = ("psnr", "ssim", "vmaf", "psnr-rgb")
VMAF_MODEL = "vmaf_v0.6.1"
FRAME_RATE = 30  # written to the raw inputs only so that ffmpeg pairs frames by index; no metric uses it
_TO_YUV = "scale=out_color_matrix=bt601:out_range=tv,format=yuv420p"
COLOUR = {"psnr": "yuv420p BT.601 limited range", "ssim": "yuv420p BT.601 limited range",
          "vmaf": "yuv420p BT.601 limited range (luma only, by VMAF's definition)", "psnr-rgb": "RGB (gbrp)"}


class VideoMetricError(RuntimeError):
    """ffmpeg is missing, lacks a filter, or failed; the message says which."""


@dataclass(frozen=True)
class VideoQuality:
    per_frame: dict[str, np.ndarray]                 # name -> one value per frame
    colour: dict[str, str] = field(default_factory=dict)   # metric -> colour space it was measured in
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def mean(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self.per_frame.items()}


@functools.lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
    except ImportError:
        raise VideoMetricError("video metrics need the imageio-ffmpeg package (pip install imageio-ffmpeg)") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


@functools.lru_cache(maxsize=1)
def ffmpeg_filters() -> frozenset[str]:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-filters"], capture_output=True, text=True, check=False)
    return frozenset(parts[1] for line in out.stdout.splitlines() if len(parts := line.split()) > 1)


@functools.lru_cache(maxsize=1)
def ffmpeg_version() -> str:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def _check_frames(reference: np.ndarray, decoded: np.ndarray) -> None:
    for label, frames in (("reference_frames", reference), ("decoded_frames", decoded)):
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3 or frames.shape[0] < 1:
            raise ValueError(f"{label}: expected T×H×W×3 uint8 RGB frames, got {frames.dtype} {frames.shape}")
    if reference.shape != decoded.shape:
        raise ValueError(f"reference_frames {reference.shape} and decoded_frames {decoded.shape} differ in shape")


def _run(args: list[str], what: str) -> None:
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-threads", "1",
                           "-filter_threads", "1", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VideoMetricError(f"ffmpeg failed measuring {what} (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")


def _metadata(path: Path, prefix: str) -> dict[str, np.ndarray]:
    """Per-frame values from a ``metadata=print`` file: lines ``lavfi.<prefix>.<key>=<value>``."""
    values: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        if line.startswith(prefix) and "=" in line:
            key, value = line[len(prefix):].split("=", 1)
            values.setdefault(key, []).append(float(value))
    return {k: np.array(v) for k, v in values.items()}


def video_quality(reference_frames: np.ndarray, decoded_frames: np.ndarray,
                  metrics: Sequence[str] = ("psnr", "ssim", "vmaf")) -> VideoQuality:
    """Per-frame quality of ``decoded_frames`` against ``reference_frames`` (both T×H×W×3 uint8 RGB).

    ``metrics``: any of ``psnr`` (Y, U, V, avg), ``ssim`` (Y, U, V, all), ``vmaf`` and ``psnr-rgb``;
    see the module docstring for the colour space of each.
    """
    ref, dec = np.ascontiguousarray(reference_frames), np.ascontiguousarray(decoded_frames)
    _check_frames(ref, dec)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown video metrics {unknown or list(metrics)}; allowed: {', '.join(METRICS)}")
    if "vmaf" in metrics and "libvmaf" not in ffmpeg_filters():
        raise VideoMetricError(f"{ffmpeg_exe()} was built without the libvmaf filter; VMAF needs an ffmpeg "
                               "configured with --enable-libvmaf (or leave 'vmaf' out of metrics)")
    t, h, w = ref.shape[:3]
    raw = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-framerate", str(FRAME_RATE), "-i"]
    per_frame: dict[str, np.ndarray] = {}
    versions = {"ffmpeg_binary": ffmpeg_version()}
    with tempfile.TemporaryDirectory(prefix="tokencodec-vq-") as tmp:
        tmp_dir = Path(tmp)
        ref.tofile(tmp_dir / "ref.rgb")
        dec.tofile(tmp_dir / "dec.rgb")
        # Input 0 is the decoded ("main") video, input 1 the reference, as libvmaf expects.
        inputs = [*raw, str(tmp_dir / "dec.rgb"), *raw, str(tmp_dir / "ref.rgb")]

        def graph(convert: str, body: str) -> list[str]:
            return [*inputs, "-lavfi", f"[0:v]{convert}[d];[1:v]{convert}[r];[d][r]{body}", "-f", "null", "-"]

        if "psnr" in metrics:
            _run(graph(_TO_YUV, f"psnr,metadata=print:file={tmp_dir / 'psnr.txt'}"), "psnr")
            got = _metadata(tmp_dir / "psnr.txt", "lavfi.psnr.")
            per_frame.update({f"psnr_{c}": got[f"psnr.{c}"] for c in "yuv"} | {"psnr_avg": got["psnr_avg"]})
        if "psnr-rgb" in metrics:
            _run(graph("format=gbrp", f"psnr,metadata=print:file={tmp_dir / 'rgb.txt'}"), "psnr-rgb")
            per_frame["psnr_rgb"] = _metadata(tmp_dir / "rgb.txt", "lavfi.psnr.")["psnr_avg"]
        if "ssim" in metrics:
            _run(graph(_TO_YUV, f"ssim,metadata=print:file={tmp_dir / 'ssim.txt'}"), "ssim")
            got = _metadata(tmp_dir / "ssim.txt", "lavfi.ssim.")
            per_frame.update({f"ssim_{c.lower()}": got[c] for c in ("Y", "U", "V", "All")})
        if "vmaf" in metrics:
            log = tmp_dir / "vmaf.json"
            _run(graph(_TO_YUV, f"libvmaf=model=version={VMAF_MODEL}:log_fmt=json:log_path={log}:n_threads=1"),
                 "vmaf")
            report = json.loads(log.read_text())
            per_frame["vmaf"] = np.array([f["metrics"]["vmaf"] for f in report["frames"]])
            versions.update({"libvmaf": str(report.get("version", "unknown")), "vmaf_model": VMAF_MODEL})
    # PSNR of identical frames is infinite; ffmpeg prints "inf", which float() reads as inf.
    for name, values in per_frame.items():
        if len(values) != t:
            raise VideoMetricError(f"ffmpeg reported {len(values)} {name} values for {t} frames")
    return VideoQuality(per_frame, {m: COLOUR[m] for m in metrics}, versions)


def psnr_rgb_frames(reference_frames: np.ndarray, decoded_frames: np.ndarray) -> np.ndarray:
    """Per-frame PSNR over R, G, B (dB) in numpy: the cross-check of ffmpeg's ``psnr_rgb``."""
    err = (np.asarray(reference_frames, float) - np.asarray(decoded_frames, float)) ** 2
    mse = err.reshape(err.shape[0], -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


__all__ = ["COLOUR", "METRICS", "VMAF_MODEL", "VideoMetricError", "VideoQuality", "ffmpeg_exe", "psnr_rgb_frames",
           "video_quality"]
