"""Machine observers for token sweeps: what runs once per sample (and is cached), and how a
compressed TokenBatch is judged against the uncompressed model.

An observer splits a model at the point where token compression acts: ``encode`` runs the part
before it once per sample and returns the full TokenBatch plus the uncompressed model's output;
``judge`` runs the part after it on a compressed batch and returns per-sample distortions.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
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

    def group(self, sample_id: str) -> str | None:
        """The subgroup a sample is reported in (e.g. its question type); ``None``: no per-group tables."""
        return None


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


def scaled_layers(layers: Sequence[int], depth: int, reference_depth: int = 32) -> list[int]:
    """Map a method's LLaVA-1.5 layers (of 32) onto an LLM of ``depth`` layers: same relative depth,
    at least layer 1 (layer 0 must see every token to score them), strictly increasing, < depth."""
    out: list[int] = []
    for layer in layers:
        k = max(1, round(layer * depth / reference_depth), (out[-1] + 1) if out else 1)
        if k < depth:
            out.append(k)
    if not out:
        raise ValueError(f"an LLM of {depth} layers is too shallow for pruning at layers {list(layers)}")
    return out


@OBSERVERS.register("diagnostic-mllm")
class DiagnosticObserver(Observer):
    """The diagnostic MLLM (LLaVA layout, trained here on the procedural VQA task).

    Every method runs through the real :class:`~tokencodec.models.llava.LlavaTokenCompression`
    adapter, so in-LLM methods work too; only the uncompressed reference answer is cached (the
    vision tower runs again for each method, which keeps the measured path the adapter's own).
    In-LLM methods' layers are mapped from LLaVA-1.5's 32 layers to this LLM's depth at the same
    relative depth (:func:`scaled_layers`). Distortions: ``accuracy`` (against the ground truth),
    ``agreement`` (same answer as the uncompressed model), ``object_recall`` and
    ``relevant_recall`` (fraction of the patches holding any object / the objects the answer depends
    on that some kept token stands for). Rates: visual tokens reaching the LLM's last layer,
    visual tokens averaged over layers, and analytic prefill FLOPs (vision + projector + LLM,
    convention ``macs2``).
    """

    name = "diagnostic-mllm"
    measures = ("accuracy", "agreement", "object_recall", "relevant_recall")
    rates = ("tokens", "tokens_avg_layers", "flops")

    def __init__(self, weights: str | None = None, attn_implementation: str = "sdpa"):
        from tokencodec.metrics.cost import MLLMShape
        from tokencodec.models.diagnostic import WEIGHTS_DIR, DiagnosticMLLM

        self.mllm = DiagnosticMLLM.from_pretrained(weights, attn_implementation=attn_implementation)
        self.shape = MLLMShape.from_config(self.mllm.model.config)
        self.depth = self.mllm.model.config.text_config.num_hidden_layers
        folder = WEIGHTS_DIR if weights is None else weights
        with open(f"{folder}/model.safetensors", "rb") as f:
            self.weights_id = hashlib.sha256(f.read()).hexdigest()[:12]

    def cache_key(self) -> str:
        return f"{self.name}-{self.weights_id}"

    def samples(self, split: str = "test", n: int = 700, seed: int = 0, types: list[str] | None = None,
                limit: int | None = None) -> list[Sample]:
        from tokencodec.data.vqa import VQADataset

        data = VQADataset(split, min(n, limit) if limit else n, seed, types)
        return [Sample(f"{split}/{s.index}/{s.qtype}", _digest(s.image, s.question), s) for s in data]

    def supports(self, method_cls) -> bool:
        return method_cls.stage in ("pre-llm", "llm")

    def group(self, sample_id: str) -> str:
        return sample_id.rsplit("/", 1)[-1]  # ids are split/index/question-type

    @torch.inference_mode()
    def encode(self, sample: Sample) -> Encoded:
        logits = self.mllm.answer_logits([sample.payload.image], [sample.payload.question])
        return Encoded(None, logits[0])

    def _adapter_options(self, method) -> dict[str, Any]:
        if method.stage != "llm":
            return {}
        layers = getattr(method, "layers", None) or (getattr(method, "layer", None),)
        layers = [k for k in layers if k is not None]
        if method.name == "sparsevlm":  # its layers are where it scores; it prunes the layer after each
            return {"layers": [k - 1 for k in scaled_layers([k + 1 for k in layers], self.depth)]}
        return {"layers": scaled_layers(layers, self.depth)}

    @torch.inference_mode()
    def run(self, sample: Sample, method, budget, encoded: Encoded) -> dict[str, float]:
        from tokencodec.metrics.cost import prefill_flops, tokens_per_layer_summary
        from tokencodec.models.llava import LlavaTokenCompression

        s = sample.payload
        kw = self.mllm.inputs([s.image], [s.question])
        last = int(kw.pop("last")[0])
        with LlavaTokenCompression(self.mllm.model, method, budget, **self._adapter_options(method)) as patch:
            logits = self.mllm.model(**kw).logits
        slot = int((patch.sequence_index[0] == last).nonzero()[0, 0])  # logits are shorter after pruning
        answer = logits[0, slot, self.mllm.answer_ids].float()
        pred = int(answer.argmax())
        covered = patch.kept.source[0].any(0).reshape(s.object_mask.shape).numpy()
        per_layer = patch.tokens_per_layer
        image_slots = int((kw["input_ids"][0] == self.mllm.model.config.image_token_id).sum())
        text_tokens = int(kw["attention_mask"][0].sum()) - image_slots
        summary = tokens_per_layer_summary(per_layer)
        return {
            "tokens": float(per_layer[-1]),
            "tokens_avg_layers": float(summary.avg),
            "flops": float(prefill_flops(self.shape, per_layer, text_tokens).total),
            "accuracy": float(self.mllm.answers[pred] == s.answer),
            "agreement": float(pred == int(encoded.reference.argmax())),
            "object_recall": _recall(covered, s.object_mask),
            "relevant_recall": _recall(covered, s.relevant_mask),
        }

    def judge(self, sample, batch, reference):  # run() does the judging inside the model
        raise NotImplementedError


def _recall(covered: np.ndarray, wanted: np.ndarray) -> float:
    total = int(wanted.sum())
    return float((covered & wanted).sum() / total) if total else 1.0
