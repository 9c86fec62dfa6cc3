"""The signals a token method may request, as one typed vocabulary shared by methods and adapters.

A method declares ``needs = (Signal.CLS_ATTENTION, Signal.KEYS)``; each adapter declares the set it
computes (its ``supplies``, :mod:`tokencodec.adapters`) and calls :func:`resolve_request`, which applies
the no-CLS fallback and names what is missing. ``Signal`` is a ``StrEnum``, so ``batch.signals["keys"]`` and
``Signal.KEYS`` are the same key. In-LLM methods state what they read with
:class:`~tokencodec.tokens.compress.base.LLMSignal` instead, because there the request has options
(whose attention rows, text keys too).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Signal(StrEnum):
    """One signal an adapter puts into ``TokenBatch.signals`` (per token) or ``.context``; see DESCRIPTIONS."""

    CLS_ATTENTION = "cls_attention"
    CLS_ATTENTION_SINGLE_HEAD = "cls_attention_single_head"
    MEAN_ATTENTION = "mean_attention"
    KEYS = "keys"
    KEYS_FULL = "keys_full"
    TEXT_ATTENTION = "text_attention"
    NORMED_FEATURES = "normed_features"
    RATER_ATTENTION = "rater_attention"
    TEXT_KEYS = "text_keys"
    TEXT_FEATURES = "text_features"
    POOLER_ATTENTION = "pooler_attention"
    FRAME_FEATURES = "frame_features"
    IMAGE_EMBEDDING = "image_embedding"
    TEXT_EMBEDDING = "text_embedding"
    TEXT_EMBEDDING_MASK = "text_embedding_mask"
    CLS_VALUE_ATTENTION = "cls_value_attention"
    VALUES = "values"

    def __repr__(self) -> str:      # messages list requests as plain names: ['keys'], not <Signal.KEYS: 'keys'>
        return repr(self.value)


DESCRIPTIONS: dict[Signal, str] = {
    Signal.CLS_ATTENTION: "signals [B, N]: CLS row of softmax(QKᵀ/√d_head) over the patches, summed over heads",
    Signal.CLS_ATTENTION_SINGLE_HEAD: "signals [B, N]: CLS row of a full-width single-head softmax(q·kᵀ/√D)",
    Signal.MEAN_ATTENTION: "signals [B, N]: attention each patch receives, mean over heads and query rows",
    Signal.KEYS: "signals [B, N, Dk]: the layer's keys averaged over heads",
    Signal.KEYS_FULL: "signals [B, N, D]: the layer's keys with the heads concatenated",
    Signal.TEXT_ATTENTION: "signals [B, N]: text-to-image attention (FastV: the last prompt token's row)",
    Signal.NORMED_FEATURES: "signals [B, N, D]: hidden states after the LLM's final norm (DART)",
    Signal.RATER_ATTENTION: "context [B, R, N]: attention of SparseVLM's rater text tokens over the image",
    Signal.TEXT_KEYS: "context [B, M, Dk]: keys of the text tokens after the image (DART's text pivots)",
    Signal.TEXT_FEATURES: "context [B, M, D]: normed hidden states of those text tokens (DART)",
    Signal.POOLER_ATTENTION: ("signals [B, N]: attention of the tower's attention-pooling head (SigLIP's MAP "
                              "probe) over the patches, softmax, mean over heads, resized onto the token grid "
                              "the way the features are (FastVID's saliency)"),
    Signal.FRAME_FEATURES: ("context [B, T, D']: one global feature per frame, the output of the tower's "
                            "attention-pooling head (SigLIP: post_layernorm + head on the feature layer's "
                            "output; FastVID's segmentation)"),
    Signal.IMAGE_EMBEDDING: ("signals [B, N, E]: each patch in CLIP's joint image–text space: the feature layer's "
                             "patch hidden states through the tower's post_layernorm, then (in float32) "
                             "CLIPVisionModelWithProjection.visual_projection (CDPruner)"),
    Signal.TEXT_EMBEDDING: ("context [B, M, E]: text_embeds of CLIPTextModelWithProjection (same checkpoint as the "
                            "tower) for the raw question, no chat template; tokenised without truncation, zero-padded "
                            "to a multiple of 77 and encoded as M chunks of 77 (CDPruner)"),
    Signal.TEXT_EMBEDDING_MASK: ("context [B, M] bool, optional: which text_embedding chunks are real when questions "
                                 "of different lengths share a batch (absent: all M)"),
    Signal.CLS_VALUE_ATTENTION: ("signals [B, N]: per head softmax over all tokens (CLS included) of the CLS value "
                                 "dotted with each token's value, no 1/√d_head, averaged over heads, CLS entry "
                                 "dropped (FlowCut's semantic term)"),
    Signal.VALUES: "signals [B, N, Dk]: the layer's values averaged over heads (FlowCut's value norm)",
}

CLS_SIGNALS = frozenset({Signal.CLS_ATTENTION, Signal.CLS_ATTENTION_SINGLE_HEAD})
NO_CLS_FALLBACK = Signal.MEAN_ATTENTION       # the usual stand-in where an encoder has no CLS token


def as_signals(names: Iterable[str], who: str = "a method") -> tuple[Signal, ...]:
    """``names`` as Signals, or a ValueError naming the unknown ones and the vocabulary."""
    names = tuple(names)
    unknown = [n for n in names if n not in Signal._value2member_map_]
    if unknown:
        raise ValueError(f"{who} requests unknown signals {unknown}; known: {[s.value for s in Signal]}")
    return tuple(Signal(n) for n in names)


def resolve_request(method, supplied: frozenset[Signal], has_cls: bool, adapter: str) -> tuple[Signal, ...]:
    """What ``adapter`` must compute for ``method``: its ``needs``, CLS signals swapped for the fallback
    where there is no CLS (if the method declares ``cls_fallback``); errors name what is wrong."""
    needs = as_signals(method.needs, f"method {method.name!r}")
    if not has_cls and (method.needs_cls or set(needs) & CLS_SIGNALS):
        if not method.cls_fallback:
            raise ValueError(f"method {method.name!r} needs a CLS token and declares no cls_fallback; "
                             f"{adapter} has none")
        needs = tuple(dict.fromkeys(NO_CLS_FALLBACK if s in CLS_SIGNALS else s for s in needs))
    missing = [s.value for s in needs if s not in supplied]
    if missing:
        raise ValueError(f"method {method.name!r} needs signals {missing}; {adapter} supplies "
                         f"{sorted(s.value for s in supplied)}")
    return needs


__all__ = ["CLS_SIGNALS", "DESCRIPTIONS", "NO_CLS_FALLBACK", "Signal", "as_signals",
           "resolve_request"]
