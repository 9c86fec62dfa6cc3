"""The diagnostic video MLLM as a machine observer: 4-frame procedural videos where one object
moves (``tokencodec.data.vqa.VideoVQADataset``), answered by the diagnostic MLLM fine-tuned on them
(``models/weights/diagnostic-video``, its MODEL_CARD.md).

A video is T frames in one prompt (LLaVA's multi-image layout), T·64 image tokens. The question
types need more than one frame: ``direction`` (which way does the red circle move?) and
``mover_colour`` (what colour is the object that moves?); accuracy is reported per type. Video
methods (temporal, uniform-frames) see the whole video; any other pre-LLM method runs on each frame
at K/T tokens (``spatial="per-frame"``, default) or over all frames at once (``spatial="joint"``);
in-LLM methods see the T·64-token span. ``positions`` overrides every method's layout in the LLM
("original": each token keeps its position id, which on video carries the frame order; methods whose
official layout renumbers, DivPrune and VisionZip, otherwise erase it). Measures and rates as the image observer's;
``object_recall`` / ``relevant_recall`` count patches over all frames (the moving object in every
frame for ``relevant_recall``). Pixel codecs do not apply (a sample's pixels are a T×H×W×3 clip).
"""

from __future__ import annotations

import numpy as np

from tokencodec.observers.base import Observer, Sample, content_digest
from tokencodec.observers.diagnostic import DiagnosticRunner, VQATask
from tokencodec.observers.registry import register_observer


class VideoVQATask(VQATask):
    def samples(self, split: str = "test", n: int = 400, seed: int = 0, frames: int = 4,
                limit: int | None = None) -> list[Sample]:
        from tokencodec.data.vqa import VideoVQADataset

        data = VideoVQADataset(split, min(n, limit) if limit else n, seed, frames)
        return [Sample(f"{split}/{s.index}/{s.qtype}", content_digest(s.frames, s.question), s.frames, s) for s in data]

    @staticmethod
    def masks(payload) -> tuple[np.ndarray, np.ndarray]:
        return payload.object_masks.reshape(-1), payload.relevant_masks.reshape(-1)


@register_observer("diagnostic-video")
class DiagnosticVideoObserver(Observer):
    """The diagnostic video MLLM on its video questions (see the module docstring)."""

    task_class = VideoVQATask
    video = True
    runner_stages = ("pre-llm", "llm")
    runner_rates = ("tokens_in", "tokens", "tokens_avg_layers", "flops", "kv_bytes", "latency_pred_s")

    def __init__(self, weights: str | None = None, attn_implementation: str = "sdpa", spatial: str = "per-frame",
                 positions: str | None = None, latency_device: str | None = None):
        from tokencodec.models.diagnostic import VIDEO_WEIGHTS_DIR

        if spatial not in ("per-frame", "joint"):
            raise ValueError(f"observer diagnostic-video: spatial={spatial!r}; allowed: 'per-frame', 'joint'")
        if positions not in (None, "original", "renumber"):
            raise ValueError(f"observer diagnostic-video: positions={positions!r}; allowed: None (each method's "
                             "official layout), 'original', 'renumber'")
        folder = str(VIDEO_WEIGHTS_DIR) if weights is None else weights
        runner = DiagnosticRunner(folder, attn_implementation, spatial, positions, latency_device)
        runner.video = True
        runner.stages = self.runner_stages      # in-tower methods act per image: not on the frames of a clip
        super().__init__(VideoVQATask(runner.mllm.answers), runner)
