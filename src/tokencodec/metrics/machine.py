"""Machine-observer metrics: how far a model's output on compressed input is from the truth and
from the same model on uncompressed input. Pure functions of outputs; no model here.

Two references are kept apart on purpose (bridges.md, fair-comparison rules): ``accuracy`` is
against the ground truth, ``agreement`` against the uncompressed model, because errors that cancel
can leave accuracy unchanged while the model's answers move.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


def accuracy(predicted: int | str, truth: int | str) -> float:
    return float(predicted == truth)


def agreement(logits: Tensor, reference: Tensor) -> float:
    """1 when the top-1 answers agree (rows averaged for a batch)."""
    return float((logits.argmax(-1) == reference.argmax(-1)).float().mean())


def topk_agreement(logits: Tensor, reference: Tensor, k: int = 5) -> float:
    """1 when the uncompressed model's top-1 is among the compressed model's top-k."""
    k = min(k, logits.shape[-1])
    top = reference.argmax(-1)
    return float((logits.topk(k, -1).indices == top[..., None]).any(-1).float().mean())


def kl_divergence(logits: Tensor, reference: Tensor) -> float:
    """KL(reference ‖ compressed) in nats, from logits (float64 so tiny values do not vanish)."""
    log_p, log_q = reference.double().log_softmax(-1), logits.double().log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum(-1).mean())


def feature_mse(features: Tensor, reference: Tensor) -> float:
    """Mean squared error between two feature tensors of one shape."""
    if features.shape != reference.shape:
        raise ValueError(f"feature shapes differ: {tuple(features.shape)} vs reference {tuple(reference.shape)}")
    return float(((features.double() - reference.double()) ** 2).mean())


def recall(covered: np.ndarray, wanted: np.ndarray) -> float:
    """Share of the ``wanted`` cells that ``covered`` includes (1 when nothing is wanted)."""
    total = int(np.asarray(wanted).sum())
    return float((np.asarray(covered) & np.asarray(wanted)).sum() / total) if total else 1.0


def classification_metrics(logits: Tensor, reference: Tensor) -> dict[str, float]:
    """The three fidelity measures of a classifier against its uncompressed self."""
    return {"top1_agreement": agreement(logits, reference), "top5_agreement": topk_agreement(logits, reference, 5),
            "kl": kl_divergence(logits, reference)}


__all__ = ["accuracy", "agreement", "classification_metrics", "feature_mse", "kl_divergence", "recall",
           "topk_agreement"]
