"""The adapter contract: what every model adapter declares, and the one record every adapter fills.

An adapter is a :class:`~tokencodec.adapters.hooks.ModelPatch` (hooks installed on entry, undone on
exit) that runs a token method inside one model family. It declares, as class attributes read
without a model:

- ``method_stages``: the method stages it runs ("vision-encoder", "pre-llm", "llm");
- ``supplies``: per method stage, the :class:`~tokencodec.tokens.signals.Signal` set it computes;
- ``video``: whether it runs video methods (whole clips), and ``rebuilds_frames_only`` for adapters
  that run only the video methods whose receiver rebuilds frames;

and answers ``supports(method_cls, has_cls)`` from those alone, so the support matrix, study checks
and ``tokencodec.compress`` agree. The family it serves (model classes, CLS, HF classes) is the
registry's business (:mod:`tokencodec.adapters.registry`).

After a forward, ``record()`` returns a :class:`CompressionRecord` under the same field names for
every adapter; the cost of a point is computed from it in one place
(:func:`tokencodec.metrics.cost.point_rates`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor

from tokencodec.adapters.hooks import ModelPatch
from tokencodec.tokens.signals import CLS_SIGNALS, Signal, resolve_request

YES, FALLBACK, NO, VIDEO = "yes", "fallback", "—", "video"


@dataclass
class CompressionRecord:
    """What one forward kept, the same fields whatever the adapter (None where a model has no such thing).

    ``tokens_per_layer`` counts the visual tokens each layer of the *consumer* saw: the LLM's layers for
    an MLLM adapter, the encoder's layers (CLS included) for a bare tower, nothing for a CNN head.
    ``vision_tokens_per_layer`` counts the tokens each vision-encoder layer processed when a method
    changes them (ToMe), None when every layer saw them all.
    """

    kept: Any = None                                  # the final TokenBatch (a list, one per image, on Qwen2-VL)
    tokens_per_layer: list[int] | None = None
    vision_tokens_per_layer: list[int] | None = None
    projector_tokens: int | None = None               # tokens the projector ran on (None: those entering the LLM)
    sequence_index: Tensor | None = None              # [B, S'] the caller's slot of each slot the LLM saw
    position_ids: Tensor | None = None                # the position ids the LLM was given
    stages: list = field(default_factory=list)        # in-LLM stage records (StageRecord), in order
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_in(self) -> int | None:
        """Visual tokens entering the consumer (its first layer)."""
        return None if not self.tokens_per_layer else int(self.tokens_per_layer[0])

    @property
    def tokens(self) -> int | None:
        """Visual tokens at the consumer's last layer (the count every observer reports as ``tokens``)."""
        return None if not self.tokens_per_layer else int(self.tokens_per_layer[-1])


class Adapter(ModelPatch):
    """Base of every model adapter; see the module docstring."""

    method_stages: ClassVar[tuple[str, ...]] = ()
    supplies: ClassVar[dict[str, frozenset[Signal]]] = {}
    video: ClassVar[bool] = False
    rebuilds_frames_only: ClassVar[bool] = False

    @classmethod
    def supports(cls, method_cls, has_cls: bool = True) -> str:
        """"yes", "fallback" (CLS signals replaced by the no-CLS stand-in), "video" or "—"."""
        if method_cls.video:
            if not cls.video or (cls.rebuilds_frames_only and not method_cls.rebuilds_frames):
                return NO
            return VIDEO
        if method_cls.stage not in cls.method_stages:
            return NO
        try:
            resolve_request(method_cls, cls.supplies.get(method_cls.stage, frozenset()), has_cls, cls.__name__)
        except ValueError:
            return NO
        uses_cls = method_cls.needs_cls or bool(set(method_cls.needs) & CLS_SIGNALS)
        return FALLBACK if uses_cls and not has_cls else YES

    @classmethod
    def build(cls, model, method, budget, **options) -> Adapter:
        """An instance for ``model``; an adapter whose knob is not a keep budget converts it here."""
        return cls(model, method, budget, **options)

    def record(self) -> CompressionRecord:
        raise NotImplementedError(f"{type(self).__name__} does not report a CompressionRecord")


__all__ = ["FALLBACK", "NO", "VIDEO", "YES", "Adapter", "CompressionRecord"]
