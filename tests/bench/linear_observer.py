"""A cheap stand-in observer for engine tests: 16 tokens per sample, a fixed linear head."""

from __future__ import annotations

import numpy as np
import torch

from tokencodec.metrics.machine import agreement, kl_divergence
from tokencodec.observers.base import Observer, Prepared, Runner, Sample, Task
from tokencodec.tokens.batch import TokenBatch


class LinearTask(Task):
    measures = ("agreement", "kl")

    def samples(self, n: int = 3) -> list[Sample]:
        rng = np.random.default_rng(0)
        return [Sample(f"s{i}", f"digest{i}", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i) for i in range(n)]

    def score(self, sample, output, reference):
        return {"agreement": agreement(output, reference), "kl": kl_divergence(output, reference)}


class LinearRunner(Runner):
    rates = ("tokens",)
    stages = ("pre-llm",)

    def __init__(self):
        self.head = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
        self.prepares = 0

    def _tokens(self, image: np.ndarray) -> TokenBatch:
        x = torch.from_numpy(image.astype(np.float32)).reshape(16, -1)[:, :8] / 255  # 4×4 tokens of 8 channels
        return TokenBatch.from_grid(x[None], (4, 4))

    def _logits(self, batch: TokenBatch):
        w = batch.sizes[..., None]
        return ((batch.features * w).sum(1) / w.sum(1)) @ self.head

    def prepare(self, sample):
        self.prepares += 1
        tokens = self._tokens(sample.image)
        return Prepared(self._logits(tokens), tokens)

    def run(self, sample, image, method, budget, prepared, pixels_changed):
        tokens = self._tokens(image) if pixels_changed else prepared.tokens
        if method is not None:
            tokens = method(tokens, budget)
        return self._logits(tokens), {"tokens": float(tokens.counts().float().mean())}


class LinearObserver(Observer):
    name = "linear"

    def __init__(self):
        super().__init__(LinearTask(), LinearRunner())
