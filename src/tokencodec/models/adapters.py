"""One entry point that picks the adapter for a model: ``tokencodec.compress(model, method, budget)``.

As peft's ``get_peft_model`` does, the adapter is chosen from the model's class (its MRO, so
subclasses match), from a table kept as data; each adapter is a context manager that hooks the
model on entry and restores it on exit (:class:`~tokencodec.models.hooks.ModelPatch`):

    with tokencodec.compress(model, "visionzip", Budget(keep=64)) as patch:
        model.generate(**inputs)
    patch.record    # what was kept: tokens per layer, kept batch, sequence positions

For a bare CLIP/SigLIP tower the stage decides: "pre-llm" methods compress the tower's output
(:class:`VisionTokenCompressor`), ToMe ("vision-encoder") merges inside every layer
(:class:`ToMeVisionPatch`, budget ``Budget(r=...)``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

# model class name → (module, adapter class); towers are resolved by method stage below
ADAPTERS: dict[str, tuple[str, str]] = {
    "LlavaForConditionalGeneration": ("tokencodec.models.llava", "LlavaTokenCompression"),
    "LlavaModel": ("tokencodec.models.llava", "LlavaTokenCompression"),
    "Qwen2VLForConditionalGeneration": ("tokencodec.models.qwen2_vl", "Qwen2VLTokenCompression"),
    "Qwen2VLModel": ("tokencodec.models.qwen2_vl", "Qwen2VLTokenCompression"),
    "Qwen2_5_VLForConditionalGeneration": ("tokencodec.models.qwen2_vl", "Qwen2VLTokenCompression"),
    "Qwen2_5_VLModel": ("tokencodec.models.qwen2_vl", "Qwen2VLTokenCompression"),
    "EfficientNetLite0": ("tokencodec.models.efficientnet_lite0", "EfficientNetTokenCompression"),
}
TOWERS = ("CLIPVisionModel", "CLIPVisionTransformer", "SiglipVisionModel", "SiglipVisionTransformer")


@dataclass
class CompressionRecord:
    """What one forward kept, the same fields whatever the adapter (None where a model has no such thing)."""

    kept: Any = None                          # the final TokenBatch (a list of them, one per image, on Qwen2-VL)
    tokens_per_layer: list[int] | None = None  # visual tokens each LLM (or encoder) layer saw
    sequence_index: Tensor | None = None      # [B, S'] the caller's slot of each slot the LLM saw
    position_ids: Tensor | None = None        # the position ids the LLM was given
    extra: dict[str, Any] = field(default_factory=dict)


def adapter_class(model: nn.Module, method=None) -> type:
    """The adapter class for ``model`` (and, for a bare vision tower, the method's stage)."""
    from tokencodec.tokens.compress import get_method

    for cls in type(model).__mro__:
        if cls.__name__ in ADAPTERS:
            module, name = ADAPTERS[cls.__name__]
            return getattr(importlib.import_module(module), name)
        if cls.__name__ in TOWERS:
            from tokencodec.models import vision_tower

            m = get_method(method) if isinstance(method, str) else method
            return vision_tower.ToMeVisionPatch if m is not None and m.stage == "vision-encoder" \
                else vision_tower.VisionTokenCompressor
    known = ", ".join([*ADAPTERS, *TOWERS])
    raise TypeError(f"no token-compression adapter for {type(model).__name__}; supported: {known}")


def compress(model: nn.Module, method, budget, **options):
    """The adapter for ``model``, set up to run ``method`` at ``budget``; use it as a context manager."""
    cls = adapter_class(model, method)
    from tokencodec.models.vision_tower import ToMeVisionPatch

    if cls is ToMeVisionPatch:
        from tokencodec.tokens.compress import Budget

        r = budget.r if isinstance(budget, Budget) else budget
        return cls(model, r, **options)
    return cls(model, method, budget, **options)


def _first(obj, *names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


def record_of(patch) -> CompressionRecord:
    """The common record of any adapter after a forward (reads each adapter's own attributes)."""
    kept = _first(patch, "kept", "last_kept", "last_batch")
    if kept is None and hasattr(patch, "token_batch") and getattr(patch, "last_hidden", None) is not None:
        kept = patch.token_batch()
    per_layer = _first(patch, "tokens_per_layer", "token_counts")
    return CompressionRecord(kept=kept, tokens_per_layer=list(per_layer) if per_layer else None,
                             sequence_index=_first(patch, "sequence_index", "last_gather"),
                             position_ids=getattr(patch, "last_position_ids", None))


__all__ = ["ADAPTERS", "CompressionRecord", "adapter_class", "compress", "record_of"]
