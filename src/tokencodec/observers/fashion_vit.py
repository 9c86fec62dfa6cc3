"""The Fashion-MNIST ViT as a machine observer: a CLS classifier on real labelled images.

Tokens are the 196 patch tokens of a 4-layer CLIP-architecture ViT trained here
(:mod:`tokencodec.models.fashion_vit`). A "pre-llm" method compresses the patch tokens after
encoder layer ``prune_layer`` (default 1: the last two layers and the CLS head see the kept set,
:class:`~tokencodec.adapters.vision_tower.TowerTokenPruning`); ToMe merges inside every layer
(:class:`~tokencodec.adapters.vision_tower.ToMeVisionPatch`), its keep ratio turned into a per-layer
``r`` schedule that ends at the budget (as even as ToMe's r ≤ n/2 rule allows); a layer-wise pruner with a
keep budget (FlowCut, :class:`~tokencodec.adapters.encoder_pruning.EncoderPruningPatch`) scores in layers
0 … ``prune_layer`` and makes its last cut after ``prune_layer``, so the same layers see the kept set. Distortions:
``accuracy`` (the true label), ``top1_agreement`` / ``top5_agreement`` / ``kl`` against the
uncompressed model on the original image. Rates: patch tokens at the last layer, patch tokens
averaged over layers, analytic encoder FLOPs (``macs2``, CLS included). Pixel codecs code the
28×28 image (greyscale replicated to RGB; the runner reads it back as the channel mean).

Data: ``split="test"`` (the 10 000 test images, for reporting) or ``"val"`` (the 5 000 training
images held out when the model was trained, for tuning), a ``seed``-ed subset of ``limit`` of them.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from tokencodec.metrics.machine import classification_metrics
from tokencodec.observers.base import Observer, Prepared, Runner, Sample, SplitInference, Task, content_digest
from tokencodec.observers.registry import register_observer

TRAIN_DATA_SEED = 0     # the seed scripts/train_fashion_vit.py split train/val with


class FashionMNISTTask(Task):
    """Fashion-MNIST classification: ground-truth accuracy and fidelity to the uncompressed model."""

    measures = ("accuracy", "top1_agreement", "top5_agreement", "kl")

    def samples(self, split: str = "test", limit: int | None = 500, seed: int = 0) -> list[Sample]:
        from tokencodec.data.fashion_mnist import CLASSES, load_fashion_mnist

        if split not in ("test", "val"):
            raise ValueError(f"split={split!r}: allowed 'test' (report) or 'val' (tune)")
        images, labels = load_fashion_mnist("test" if split == "test" else "train")
        pool = np.arange(len(images)) if split == "test" else \
            np.random.default_rng(TRAIN_DATA_SEED).permutation(len(images))[:5000]
        if limit is not None:
            if limit < 1:
                raise ValueError(f"limit={limit!r}: give at least 1 image (or none for the whole split)")
            pool = np.random.default_rng(seed).permutation(pool)[:limit]
        out = []
        for i in sorted(int(j) for j in pool):
            rgb = np.repeat(images[i][..., None], 3, axis=2)
            name = CLASSES[labels[i]].replace("/", "-")          # "T-shirt/top": ids split on "/"
            out.append(Sample(f"{split}/{i:05d}/{name}", content_digest(rgb), rgb, int(labels[i])))
        return out

    def score(self, sample, output, reference) -> dict[str, float]:
        return {"accuracy": float(int(output.argmax()) == sample.payload), **classification_metrics(output, reference)}

    def group(self, sample_id: str) -> str:
        return sample_id.rsplit("/", 1)[-1]      # ids are split/index/class


class FashionViTRunner(Runner):
    stages = ("vision-encoder", "pre-llm")

    def __init__(self, weights: str | None = None, prune_layer: int = 1):
        from tokencodec.metrics.cost import VisionShape
        from tokencodec.metrics.rates import CostModel
        from tokencodec.models.fashion_vit import FashionViT, weights_folder

        self.model = FashionViT.from_pretrained(weights)
        depth = self.model.config.num_hidden_layers
        if not 0 <= prune_layer < depth - 1:
            raise ValueError(f"prune_layer={prune_layer!r}: allowed 0 to {depth - 2} (a later layer must run "
                             "on the kept tokens)")
        self.prune_layer, self.depth = prune_layer, depth
        self.shape = VisionShape.from_config(self.model.config)
        self.cost = CostModel(self.shape, prefix_tokens=1)      # the CLS is processed, not counted as a token
        folder = weights_folder() if weights is None else weights
        with open(f"{folder}/model.safetensors", "rb") as f:
            self.weights_id = hashlib.sha256(f.read()).hexdigest()[:12]

    def key(self) -> str:
        return f"fashion-vit-{self.weights_id}-L{self.prune_layer}"

    def supports(self, method_cls) -> str | None:
        return FashionViTObserver.method_support(method_cls)

    @staticmethod
    def _pixels(image: np.ndarray) -> torch.Tensor:
        from tokencodec.models.fashion_vit import preprocess

        grey = image.mean(2) if image.ndim == 3 else image
        return preprocess(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[None])

    @torch.inference_mode()
    def prepare(self, sample: Sample) -> Prepared:
        return Prepared(reference=self.model(self._pixels(sample.image))[0].float())

    @torch.inference_mode()
    def run(self, sample, image, method, budget, prepared, pixels_changed):
        import tokencodec

        x = self._pixels(image)
        if method is None:
            logits, per_layer = self.model(x), [self.shape.num_tokens] * self.depth
        else:
            if method.stage != "vision-encoder":
                options = {"layer": self.prune_layer}              # pruned after prune_layer
            elif method.knob == "keep":                            # FlowCut: its last cut is before its `layer`
                options = {"layer": self.prune_layer + 1}
            else:
                options = {}                                       # ToMe merges in every layer (its keep schedule)
            with tokencodec.compress(self.model, method, budget, **options) as patch:
                logits = self.model(x)
            per_layer = patch.record().tokens_per_layer
        return logits[0].float(), self.cost.point(per_layer)


class FashionViTSplit(SplitInference):
    """The sender runs the ViT's first two layers on the 28×28 greyscale image and sends the CLS and K patch
    tokens of layer 1; the receiver runs the last two layers and the head on them (the tower runs on a blank
    image whose layer-1 output is replaced whole)."""

    receiver = "classify"
    input_size = 28
    defaults = {"method": "random", "keep": 98, "profile": "vq-1024"}
    layer = 1              # the observer's default prune_layer: the sender runs layers 0 and 1

    def __init__(self):
        from tokencodec.models.fashion_vit import FashionViT

        self.vit = FashionViT.from_pretrained()

    def tokens(self) -> int:
        return (self.vit.config.image_size // self.vit.config.patch_size) ** 2

    @torch.inference_mode()
    def send(self, image: np.ndarray, method, budget):
        import tokencodec
        from tokencodec.models.fashion_vit import preprocess

        grey = np.rint(image.mean(2) if image.ndim == 3 else image).astype(np.uint8)
        if grey.shape != (28, 28):
            raise ValueError(f"image of shape {image.shape}; the Fashion-MNIST ViT takes 28×28 greyscale")
        return tokencodec.compress(self.vit.vision_tower, method, budget, layer=self.layer).compress(
            preprocess(grey[None]))

    @torch.inference_mode()
    def classify(self, tokens, top: int) -> list[tuple[str, float]]:
        import tokencodec
        from tokencodec.data.fashion_mnist import CLASSES
        from tokencodec.models.fashion_vit import preprocess
        from tokencodec.tokens.replay import Replay

        if tokens.prefix is None:
            raise ValueError("a fashion-vit file without its CLS (the profile has no prefix token)")
        replay = Replay(tokens.features, tokens.positions, tokens.prefix[0])
        blank = preprocess(np.zeros((1, 28, 28), dtype=np.uint8))
        with tokencodec.compress(self.vit, replay, replay.budget, layer=self.layer):
            p = self.vit(blank)[0].float().softmax(-1)
        best = p.topk(min(top, len(CLASSES)))
        return [(CLASSES[i], float(v)) for v, i in zip(best.values, best.indices, strict=True)]


@register_observer("fashion-vit")
class FashionViTObserver(Observer):
    """The Fashion-MNIST ViT (trained here, weights shipped) on real labelled images."""

    split = FashionViTSplit
    task_class = FashionMNISTTask
    runner_stages = ("vision-encoder", "pre-llm")
    runner_rates = ("tokens_in", "tokens", "tokens_avg_layers", "flops")

    @classmethod
    def method_fits(cls, method_cls) -> str | None:
        from tokencodec.adapters.registry import family_named
        from tokencodec.tokens.signals import resolve_request

        if method_cls.stage not in cls.runner_stages:
            return f"it acts at stage {method_cls.stage!r}; a ViT classifier has no LLM"
        try:        # what the ViT-classifier family's adapters supply (tower signals, FlowCut's per-layer ones)
            resolve_request(method_cls, family_named("ViT classifier").supplies, True, "the ViT")
        except ValueError as err:
            return str(err)
        return None

    def __init__(self, weights: str | None = None, prune_layer: int = 1):
        super().__init__(FashionMNISTTask(), FashionViTRunner(weights, prune_layer))


__all__ = ["FashionMNISTTask", "FashionViTObserver", "FashionViTRunner"]
