"""The Fashion-MNIST ViT on video made by camera motion: a reconstructing receiver for temporal tokens.

Each sample is a real Fashion-MNIST test image panned ``step`` pixels per frame over ``frames``
frames (:func:`tokencodec.data.camera_motion.pan`, black fill as the data set's background; the
direction drawn per sample from ``seed``); the default 2 px is one patch of the 14×14 token grid.
The ViT (``fashion-vit``'s weights) classifies every frame; split inference at ``prune_layer``: the
sender runs layers 0‥prune_layer on each frame and sends tokens, the receiver runs the rest.

How each kind of method sends (``tokens``: tokens sent per frame, averaged over the video, **the CLS
included**: every frame the receiver runs needs its layer-``prune_layer`` CLS, which has already read
the whole frame, so it is counted):

- **video methods that rebuild frames** (``temporal``): key frames whole, predicted frames only their
  changed tokens; the receiver rebuilds every frame's grid from the reference
  (:class:`~tokencodec.adapters.vision_tower.TowerVideoCoding`) and runs the later layers on all of it.
  With ``search`` > 0 the receiver also needs each predicted token's motion vector (one of
  (2r+1)² offsets, log2 9 ≈ 3.2 bits at r = 1): side information that costs bits, not tokens.
- **frame sampling** (methods that send ``whole_frames``: uniform-frames): m = K/196 frames are sent
  whole; a frame in between takes the prediction of the last sent frame before it (the receiver
  holds its answer). Which frames: the method's choice on the clip's layout (a content-blind rule).
- **spatial methods** run on each frame at K/T tokens (``TowerTokenPruning``), the later layers on the
  kept set.

Measures per video, averaged over its frames: ``accuracy`` (true label), ``top1_agreement``,
``top5_agreement``, ``kl`` (against the uncompressed model on the same frame). Rates: ``tokens`` and
``flops`` (the receiver's encoder FLOPs per frame, ``macs2``; temporal coding saves bits on the wire,
not the receiver's compute, and the FLOPs say so). Pixel codecs do not apply (a sample is a clip).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from tokencodec.metrics.machine import classification_metrics
from tokencodec.observers.base import Observer, Prepared, Sample, content_digest
from tokencodec.observers.fashion_vit import FashionMNISTTask, FashionViTRunner
from tokencodec.observers.registry import register_observer
from tokencodec.tokens.compress.base import BudgetError


class FashionVideoTask(FashionMNISTTask):
    """Fashion-MNIST items under a camera pan; every frame classified."""

    def samples(self, split: str = "test", limit: int | None = 200, seed: int = 0, frames: int = 4,
                step: int = 2) -> list[Sample]:
        from tokencodec.data.camera_motion import DIRECTIONS, pan

        out = []
        for s in super().samples(split, limit, seed):
            rng = np.random.default_rng((seed, int(s.id.split("/")[1])))
            direction = tuple(DIRECTIONS)[rng.integers(len(DIRECTIONS))]
            clip = pan(s.image, frames, step, direction)
            out.append(Sample(f"{s.id.rsplit('/', 1)[0]}/{direction}/{s.id.rsplit('/', 1)[1]}",
                              content_digest(clip), clip, s.payload))
        return out

    def score(self, sample, output, reference) -> dict[str, float]:
        correct = (output.argmax(-1) == sample.payload).float().mean()
        return {"accuracy": float(correct), **classification_metrics(output, reference)}


class FashionViTVideoRunner(FashionViTRunner):
    stages = ("pre-llm",)
    video = True
    rates = ("tokens", "flops")

    def __init__(self, weights: str | None = None, prune_layer: int = 1):
        from dataclasses import replace

        super().__init__(weights, prune_layer)
        self.cost = replace(self.cost, prefix_tokens=0)          # tokens per frame count the CLS here

    def _point(self, tokens_per_layer) -> dict[str, float]:
        rates = self.cost.point(tokens_per_layer)
        return {k: rates[k] for k in self.rates}

    def key(self) -> str:
        return "video-" + super().key()

    def supports(self, method_cls) -> str | None:
        return FashionViTVideoObserver.method_support(method_cls)

    @staticmethod
    def _clip(clip: np.ndarray) -> torch.Tensor:
        from tokencodec.models.fashion_vit import preprocess

        if clip.ndim != 4:
            raise ValueError(f"expected a clip T×H×W×3, got shape {clip.shape}; pixel codecs do not apply to "
                             "the video observer")
        return preprocess(np.clip(np.rint(clip.mean(3)), 0, 255).astype(np.uint8))

    @torch.inference_mode()
    def prepare(self, sample: Sample) -> Prepared:
        return Prepared(reference=self.model(self._clip(sample.image)).float())

    @torch.inference_mode()
    def run(self, sample, image, method, budget, prepared, pixels_changed):
        """Rates per frame: tokens (CLS included, as this observer has always counted them) and FLOPs."""
        import tokencodec
        from tokencodec.tokens.batch import TokenBatch
        from tokencodec.tokens.frames import per_frame_budget

        x = self._clip(image)
        t, n = x.shape[0], self.shape.num_patches
        full = self._point([n + 1] * self.depth)
        if method is None:
            return self.model(x).float(), full
        if method.whole_frames:                        # frame sampling: the receiver holds the last answer
            # the choice is read from an all-zero clip of the right layout: frame sampling is content-blind
            side = math.isqrt(n)
            probe = TokenBatch.from_grid(torch.zeros(1, t * n, 1), (side, side), frames=t)
            positions = method(probe, budget).positions[0]
            sent = sorted({int(p) // n for p in positions})
            if len(positions) != len(sent) * n:
                raise BudgetError(f"{method.name} must send whole frames of {n} tokens; it sent {len(positions)}")
            logits = self.model(x[sent]).float()
            holder = [max(i for i, f in enumerate(sent) if f <= frame) for frame in range(t)]
            return logits[holder], {k: v * len(sent) / t for k, v in full.items()}   # frames not sent cost nothing
        if method.rebuilds_frames:                     # every frame runs whole; the wire carries what was sent
            with tokencodec.compress(self.model, method, budget, layer=self.prune_layer, frames=t) as patch:
                logits = self.model(x).float()
            return logits, {"tokens": (float(patch.record().extra["sent"].sum()) + t) / t, "flops": full["flops"]}
        with tokencodec.compress(self.model, method, per_frame_budget(budget, t, n), layer=self.prune_layer) as patch:
            logits = self.model(x).float()
        return logits, self._point(patch.record().tokens_per_layer)


@register_observer("fashion-vit-video")
class FashionViTVideoObserver(Observer):
    """The Fashion-MNIST ViT classifying every frame of camera-pan clips (see the module docstring)."""

    task_class = FashionVideoTask
    video = True
    runner_stages = ("pre-llm",)
    runner_rates = ("tokens", "flops")

    @classmethod
    def method_fits(cls, method_cls) -> str | None:
        from tokencodec.observers.fashion_vit import FashionViTObserver

        if method_cls.stage != "pre-llm":
            return f"it acts at stage {method_cls.stage!r}; the video observer runs 'pre-llm' methods"
        return FashionViTObserver.method_fits(method_cls)

    def __init__(self, weights: str | None = None, prune_layer: int = 1):
        super().__init__(FashionVideoTask(), FashionViTVideoRunner(weights, prune_layer))


__all__ = ["FashionVideoTask", "FashionViTVideoObserver", "FashionViTVideoRunner"]
