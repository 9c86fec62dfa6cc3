"""Semantic-guided bit allocation for a standard pixel codec, training-free: the model decides where bits go.

Route: **pre-filtering before a standard encoder**, so the file is a plain JPEG XL / JPEG 2000 file
and any standard decoder reads it. The importance map is the machine's own: the CLS attention of
the diagnostic MLLM's vision tower at its last layer (the signal VisionZip and PruMerge read, here
summed over heads), one value per 8×8 patch of the 64×64 image. Patches whose attention is above
the image's mean attention are kept as they are; every other patch is replaced by its mean colour,
which costs the encoder almost nothing. On the validation split this rule keeps 14.4 % of the
patches and 99.7 % of the object patches (``docs/studies/semantic-allocation``).

``jpegxl-semantic`` and ``jpeg2000-semantic`` take the inner codec's qualities; ``settings`` records
the inner codec, the rule and the model's weights id. Images that are not the model's 64×64 input
are refused (the importance map is the model's view of its own input).
"""

from __future__ import annotations

import functools
import hashlib
from typing import ClassVar

import numpy as np

from tokencodec.codecs.base import Codec, CodecError, get_codec, register_codec

PATCH = 8
SIZE = 64
_MODEL = None


def _diagnostic():
    global _MODEL
    if _MODEL is None:      # loaded once per process: every encode reads the same tower
        from tokencodec.models.diagnostic import DiagnosticMLLM

        _MODEL = DiagnosticMLLM.from_pretrained()
    return _MODEL


@functools.cache
def _weights_id() -> str:
    """The importance model's weights, as 12 hex digits of their SHA-256 (read once per process)."""
    from tokencodec.models.diagnostic import WEIGHTS_DIR

    return hashlib.sha256((WEIGHTS_DIR / "model.safetensors").read_bytes()).hexdigest()[:12]


def importance(image: np.ndarray) -> np.ndarray:
    """[8, 8] CLS attention of the diagnostic tower's last layer for a 64×64 image."""
    import torch

    from tokencodec.adapters.vision_tower import capture_signals
    from tokencodec.models.diagnostic import preprocess

    with torch.inference_mode():
        cap = capture_signals(_diagnostic().model.model, preprocess(image[None]), layer=-1, signals=["cls_attention"])
    return cap.signals["cls_attention"][0].float().numpy().reshape(SIZE // PATCH, SIZE // PATCH)


def important_patches(image: np.ndarray) -> np.ndarray:
    """[8, 8] bool: patches whose attention is above the image's mean attention."""
    a = importance(image)
    return a > a.mean()


def flatten_unimportant(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The image with every patch outside ``keep`` replaced by its mean colour."""
    g = SIZE // PATCH
    blocks = image.reshape(g, PATCH, g, PATCH, 3).astype(np.float32)
    means = blocks.mean(axis=(1, 3), keepdims=True)
    out = np.where(keep[:, None, :, None, None], blocks, np.broadcast_to(means, blocks.shape))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(image.shape)


class SemanticPrefilter(Codec):
    inner: ClassVar[str] = ""
    machine_guided = True

    def __init__(self):
        self.codec = get_codec(self.inner)

    @property
    def quality_range(self):          # the inner codec's knob
        return self.codec.quality_range

    @property
    def quality_meaning(self):
        return f"{self.inner} quality, after semantic pre-filtering"

    @property
    def default_qualities(self):
        return self.codec.default_qualities

    @property
    def extension(self):
        return self.codec.extension

    def settings(self):
        return {"inner": self.inner, "inner_settings": self.codec.settings(), "patch": PATCH,
                "importance": "diagnostic-mllm tower, last layer, CLS attention summed over heads",
                "rule": "keep patches above the mean attention, others to their mean colour",
                "weights": _weights_id()}

    def versions(self):
        return self.codec.versions()

    def _encode(self, image, quality):
        if image.shape != (SIZE, SIZE, 3):
            raise CodecError(f"{self.name}: the importance map is the diagnostic MLLM's, whose input is "
                             f"{SIZE}×{SIZE}; got an image of shape {image.shape}")
        return self.codec.encode(flatten_unimportant(image, important_patches(image)), quality)

    def _decode(self, data):
        return self.codec.decode(data)          # a standard file: the inner codec's decoder reads it


@register_codec("jpegxl-semantic")
class JPEGXLSemantic(SemanticPrefilter):
    inner = "jpegxl"


@register_codec("jpeg2000-semantic")
class JPEG2000Semantic(SemanticPrefilter):
    inner = "jpeg2000"


__all__ = ["JPEG2000Semantic", "JPEGXLSemantic", "SemanticPrefilter", "flatten_unimportant", "important_patches",
           "importance"]
