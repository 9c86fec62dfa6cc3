"""The signals a token method may request, as one typed vocabulary shared by methods and adapters.

A method declares ``needs = (Signal.CLS_ATTENTION, Signal.KEYS)``; each adapter declares the set it
computes (``VISION_TOWER``, ``QWEN2_VL``) and calls :func:`resolve_request`, which applies the no-CLS
fallback and names what is missing. ``Signal`` is a ``StrEnum``, so ``batch.signals["keys"]`` and
``Signal.KEYS`` are the same key. In-LLM methods state what they read with
:class:`~tokencodec.tokens.compress.base.LLMSignal` instead, because there the request has options
(whose attention rows, text keys too).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Signal(StrEnum):
    """One per-token signal [B, N, ...] put into ``TokenBatch.signals`` by an adapter."""

    CLS_ATTENTION = "cls_attention"                          # [B, N] CLS row, softmax per head, summed over heads
    CLS_ATTENTION_SINGLE_HEAD = "cls_attention_single_head"  # [B, N] CLS row of one full-width head (PruMerge)
    MEAN_ATTENTION = "mean_attention"                        # [B, N] attention received, mean over heads and rows
    KEYS = "keys"                                            # [B, N, d_head] keys averaged over heads
    KEYS_FULL = "keys_full"                                  # [B, N, D] keys with the heads concatenated
    TEXT_ATTENTION = "text_attention"                        # [B, N] in the LLM: text rows over the image span
    NORMED_FEATURES = "normed_features"                      # [B, N, D] in the LLM: hidden states after the final norm
    RATER_ATTENTION = "rater_attention"                      # context [B, R, N] in the LLM: SparseVLM's raters' rows

    def __repr__(self) -> str:      # messages list requests as plain names: ['keys'], not <Signal.KEYS: 'keys'>
        return repr(self.value)


CLS_SIGNALS = frozenset({Signal.CLS_ATTENTION, Signal.CLS_ATTENTION_SINGLE_HEAD})
NO_CLS_FALLBACK = Signal.MEAN_ATTENTION       # the usual stand-in where an encoder has no CLS token

# what each adapter computes before the LLM
VISION_TOWER = frozenset({*CLS_SIGNALS, Signal.MEAN_ATTENTION, Signal.KEYS, Signal.KEYS_FULL})
QWEN2_VL = frozenset({Signal.MEAN_ATTENTION, Signal.KEYS, Signal.KEYS_FULL})


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


__all__ = ["CLS_SIGNALS", "NO_CLS_FALLBACK", "QWEN2_VL", "VISION_TOWER", "Signal", "as_signals", "resolve_request"]
