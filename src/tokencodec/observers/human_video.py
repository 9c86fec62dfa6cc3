"""The human observer on video: camera pans over photos, decoded clips scored by VMAF, PSNR and SSIM.

Samples are pans (:func:`~tokencodec.data.camera_motion.pan_sequence`, directions cycled right, down,
left, up) over the photos of one or more data sets (``embedded``, ``kodak``, a folder), ``frames``
frames of ``size``×``size``; video codecs (``h264``, ``h265``, ``av1``) code each clip whole. Measures
(:func:`tokencodec.metrics.video.video_quality`, ffmpeg's filters; means over frames): ``vmaf``
(libvmaf's built-in vmaf_v0.6.1, trained for 1080p: it ranks small clips, it does not calibrate them),
``psnr-y`` and ``ssim-y`` (on yuv420p BT.601 limited range, as the encoders see it) and ``psnr-rgb``.
"""

from __future__ import annotations

import numpy as np

from tokencodec.observers.base import Observer, Sample, Task, content_digest
from tokencodec.observers.human import Eye, image_samples
from tokencodec.observers.registry import register_observer


class VideoFidelity(Task):
    measures = ("vmaf", "psnr-y", "ssim-y", "psnr-rgb")

    def samples(self, dataset: str | list[str] = "embedded", limit: int | None = None, size: int = 128,
                frames: int = 8, step: int = 2) -> list[Sample]:
        from tokencodec.data.camera_motion import ORDER, pan_sequence

        if size < 16 or frames < 2 or step < 0:
            raise ValueError(f"size={size}, frames={frames}, step={step}: at least 16 px, 2 frames, a step ≥ 0")
        out = []
        for k, s in enumerate(image_samples(dataset, limit)):
            clip = pan_sequence(s.image, size, frames, step, ORDER[k % 4])
            out.append(Sample(f"{s.id}:{ORDER[k % 4]}", content_digest(clip), clip))
        return out

    def score(self, sample: Sample, output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        from tokencodec.metrics.video import video_quality

        q = video_quality(reference, output, ("psnr", "ssim", "vmaf", "psnr-rgb")).mean
        return {"vmaf": q["vmaf"], "psnr-y": q["psnr_y"], "ssim-y": q["ssim_y"], "psnr-rgb": q["psnr_rgb"]}


class VideoEye(Eye):
    """The identity on clips: a person watches the decoded frames. No tokens, so no token methods."""

    video = True


@register_observer("human-video")
class HumanVideoObserver(Observer):
    """VMAF, PSNR-Y, SSIM-Y and PSNR-RGB of decoded clips (see the module docstring)."""

    task_class = VideoFidelity
    video = True

    def __init__(self):
        super().__init__(VideoFidelity(), VideoEye())
