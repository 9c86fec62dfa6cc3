"""One entry point that picks the adapter for a model: ``tokencodec.compress(model, method, budget)``.

As peft's ``get_peft_model`` does, the adapter is chosen from the model's class (its MRO, so
subclasses match), from a table kept as data; each adapter is a context manager that hooks the
model on entry and restores it on exit (:class:`~tokencodec.models.hooks.ModelPatch`):

    with tokencodec.compress(model, "visionzip", Budget(keep=64)) as patch:
        model.generate(**inputs)
    patch.record    # what was kept: tokens per layer, kept batch, sequence positions

On LLaVA ``method`` may be a chain, ``[("tome", Budget(r=4)), ("fastv", 64)]`` (budget None); on
Qwen2-VL an in-LLM method picks :class:`Qwen2VLLLMCompression`. For a bare CLIP/SigLIP tower the
stage decides: "pre-llm" methods compress the tower's output
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
# in-LLM methods on a model whose pre-LLM adapter is another class
LLM_STAGE: dict[str, tuple[str, str]] = {
    name: ("tokencodec.models.qwen2_vl_llm", "Qwen2VLLLMCompression")
    for name in ("Qwen2VLForConditionalGeneration", "Qwen2VLModel", "Qwen2_5_VLForConditionalGeneration",
                 "Qwen2_5_VLModel")
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

    m = get_method(method) if isinstance(method, str) else method
    for cls in type(model).__mro__:
        if cls.__name__ in ADAPTERS:
            in_llm = m is not None and not isinstance(m, (list, tuple)) and m.stage == "llm"
            module, name = LLM_STAGE[cls.__name__] if in_llm and cls.__name__ in LLM_STAGE else ADAPTERS[cls.__name__]
            return getattr(importlib.import_module(module), name)
        if cls.__name__ in TOWERS:
            from tokencodec.models import vision_tower

            return vision_tower.ToMeVisionPatch if m is not None and m.stage == "vision-encoder" \
                else vision_tower.VisionTokenCompressor
    known = ", ".join([*ADAPTERS, *TOWERS])
    raise TypeError(f"no token-compression adapter for {type(model).__name__}; supported: {known}")


def compress(model: nn.Module, method, budget=None, **options):
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


__all__ = ["ADAPTERS", "LLM_STAGE", "CompressionRecord", "adapter_class", "compress", "record_of"]
