"""The human observer: decoded pixels scored by PSNR and MS-SSIM against the original."""

from __future__ import annotations

from typing import Any

import numpy as np

from tokencodec.metrics import human
from tokencodec.observers.base import Observer, Prepared, Runner, Sample, Task, content_digest
from tokencodec.observers.registry import register_observer


def image_samples(dataset: str | list[str] = "embedded", limit: int | None = None) -> list[Sample]:
    """The images of one or more data sets (``limit`` per data set), keyed by their unique names."""
    from tokencodec.data import load_dataset

    out = []
    for name in [dataset] if isinstance(dataset, str) else list(dataset):
        for item in load_dataset(name, limit):
            out.append(Sample(item.name, content_digest(item.image), item.image))
    return out


class ImageFidelity(Task):
    measures = ("psnr-rgb", "ms-ssim-rgb")

    def samples(self, dataset: str | list[str] = "embedded", limit: int | None = None) -> list[Sample]:
        return image_samples(dataset, limit)

    def score(self, sample: Sample, output: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        return human.human_metrics(reference, output)

    def unavailable(self, sample: Sample) -> dict[str, str]:
        return human.unavailable(sample.image)


class Eye(Runner):
    """The identity: a person looks at the decoded pixels. No tokens, so no token methods."""

    rates = ()
    stages = ()

    def prepare(self, sample: Sample) -> Prepared:
        return Prepared(reference=sample.image)

    def run(self, sample, image, method, budget, prepared, pixels_changed) -> tuple[Any, dict[str, float]]:
        if image.shape != sample.image.shape:
            raise ValueError(f"{sample.id}: decoded shape {image.shape} differs from the original {sample.image.shape}")
        return image, {}


@register_observer("human")
class HumanObserver(Observer):
    """PSNR-RGB and MS-SSIM-RGB of decoded pixels (CompressAI's conventions, see metrics/human.py)."""

    task_class = ImageFidelity
    runner_stages = ()
    runner_rates = ()

    def __init__(self):
        super().__init__(ImageFidelity(), Eye())
