"""Machine observers for token sweeps: what runs once per sample (and is cached), and how a
compressed TokenBatch is judged against the uncompressed model.

An observer splits a model at the point where token compression acts: ``encode`` runs the part
before it once per sample and returns the full TokenBatch plus the uncompressed model's output;
``judge`` runs the part after it on a compressed batch and returns per-sample distortions.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tokencodec.registry import Registry
from tokencodec.tokens.batch import TokenBatch


@dataclass(frozen=True)
class Sample:
    id: str
    digest: str       # content hash: cached encodings are never reused for other content
    payload: Any


@dataclass
class Encoded:
    tokens: TokenBatch  # the full token batch (B = 1), with the signals methods need
    reference: Any      # the uncompressed model's output


class Observer(ABC):
    name: str = ""
    measures: tuple[str, ...] = ()  # distortion measures ``judge`` returns
    rates: tuple[str, ...] = ("tokens",)

    @abstractmethod
    def samples(self, **data: Any) -> list[Sample]: ...

    @abstractmethod
    def encode(self, sample: Sample) -> Encoded: ...

    @abstractmethod
    def judge(self, sample: Sample, batch: TokenBatch, reference: Any) -> dict[str, float]: ...

    def cost(self, batch: TokenBatch) -> dict[str, float]:
        return {"tokens": float(batch.counts().float().mean())}

    def run(self, sample: Sample, method, budget, encoded: Encoded) -> dict[str, float]:
        """Rates and distortions of one (sample, method, budget). The default compresses the cached
        tokens; observers whose methods act inside the model (in-LLM pruning) override it."""
        batch = method(encoded.tokens, budget)
        return {**self.cost(batch), **self.judge(sample, batch, encoded.reference)}

    def supports(self, method_cls) -> bool:
        return True

    def cache_key(self) -> str:
        """Identifies the model and its configuration, for the encoding cache."""
        return self.name


OBSERVERS: Registry[type[Observer]] = Registry("observer")


def _digest(array: np.ndarray, *extra: Any) -> str:
    h = hashlib.sha256(np.ascontiguousarray(array).tobytes())
    h.update(repr((array.shape, *extra)).encode())
    return h.hexdigest()[:16]


def centre_and_corner_crops(image: np.ndarray, crops: int) -> list[tuple[str, np.ndarray]]:
    """The whole image, then up to 4 square crops (corners) of 60 % of the shorter side."""
    out = [("full", image)]
    h, w, _ = image.shape
    s = int(0.6 * min(h, w))
    corners = [("tl", 0, 0), ("tr", 0, w - s), ("bl", h - s, 0), ("br", h - s, w - s)]
    out += [(name, image[y:y + s, x:x + s]) for name, y, x in corners[:crops]]
    return out


@OBSERVERS.register("efficientnet-lite0")
class EfficientNetObserver(Observer):
    """The pretrained ImageNet EfficientNet-Lite0 on natural photos.

    Tokens are the final feature map (7×7 at 224 px); the compressed tokens are pooled by size and
    classified. Fidelity is judged against the uncompressed model on the same image: top-1
    agreement, top-5 agreement (the uncompressed top-1 is among the compressed top-5) and
    KL(uncompressed ‖ compressed) in nats. The backbone's FLOPs do not depend on the kept tokens,
    so the rates are the token count and the measured time of compression plus head.
    """

    name = "efficientnet-lite0"
    measures = ("top1_agreement", "top5_agreement", "kl")

    def __init__(self, size: int = 224, weights: str | None = None):
        from tokencodec.models.efficientnet_lite0 import EfficientNetLite0

        self.size = size
        self.model = EfficientNetLite0.from_pretrained(weights)

    def cache_key(self) -> str:
        return f"{self.name}-{self.size}"

    def samples(self, dataset: str | list[str] = "embedded", limit: int | None = None,
                crops: int = 0) -> list[Sample]:
        """Images of one or more data sets (``limit`` per data set), each whole and as corner crops."""
        from tokencodec.data import load_dataset

        out = []
        for name in [dataset] if isinstance(dataset, str) else dataset:
            for item in load_dataset(name, limit):
                for crop_name, image in centre_and_corner_crops(item.image, crops):
                    out.append(Sample(f"{item.name}/{crop_name}", _digest(image, self.size), image))
        return out

    def supports(self, method_cls) -> bool:
        from tokencodec.models.efficientnet_lite0 import supports

        return supports(method_cls)

    @torch.inference_mode()
    def encode(self, sample: Sample) -> Encoded:
        from tokencodec.models.efficientnet_lite0 import classify_batch, image_tokens, preprocess

        tokens = image_tokens(self.model, preprocess(sample.payload, self.size))
        return Encoded(tokens, classify_batch(self.model, tokens).float())

    @torch.inference_mode()
    def judge(self, sample: Sample, batch: TokenBatch, reference: Tensor) -> dict[str, float]:
        from tokencodec.models.efficientnet_lite0 import classify_batch

        logits = classify_batch(self.model, batch).float()
        top = reference.argmax(-1)
        log_p, log_q = reference.log_softmax(-1), logits.log_softmax(-1)
        return {
            "top1_agreement": float((logits.argmax(-1) == top).float().mean()),
            "top5_agreement": float((logits.topk(5, -1).indices == top[:, None]).any(-1).float().mean()),
            "kl": float((log_p.exp() * (log_p - log_q)).sum(-1).mean()),
        }
