"""The one registry of model families and their adapters: ``tokencodec.compress(model, method, budget)``.

As peft keeps module locations per model family as data, each family is one line of :data:`FAMILIES`:
the model classes it covers (matched along the model's MRO, so subclasses match), whether its
encoder has a CLS token, the Hugging Face classes :class:`~tokencodec.models.hf.HFMLLM` loads for it
(by ``config.model_type``), and its adapters in the order :func:`compress` tries them. From this one
table come ``tokencodec.compress``, the support matrix (:mod:`tokencodec.adapters.support`),
``HFMLLM``'s families and the signals each family supplies. Adding a family is one adapter file and
one line here (and, for ``HFMLLM``, its prompt entry in :mod:`tokencodec.models.prompts`)::

    with tokencodec.compress(model, "visionzip", Budget(keep=64)) as patch:
        model.generate(**inputs)
    patch.record()   # CompressionRecord: tokens per layer, kept batch, sequence positions

On LLaVA ``method`` may be a chain, ``[("tome", Budget(r=4)), ("fastv", 64)]`` (budget None).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from tokencodec.adapters.base import NO, Adapter
from tokencodec.adapters.efficientnet import EfficientNetTokenCompression
from tokencodec.adapters.encoder_pruning import EncoderPruningPatch
from tokencodec.adapters.llava import LlavaTokenCompression
from tokencodec.adapters.llava_next import LlavaNextTokenCompression
from tokencodec.adapters.llava_onevision import LlavaOnevisionTokenCompression
from tokencodec.adapters.qwen2_vl import Qwen2VLTokenCompression
from tokencodec.adapters.qwen2_vl_llm import Qwen2VLLLMCompression
from tokencodec.adapters.vision_tower import (
    CLIPTowerCompressor,
    ToMeVisionPatch,
    TowerTokenPruning,
    TowerVideoCoding,
    VisionTokenCompressor,
)
from tokencodec.tokens.signals import Signal


@dataclass(frozen=True)
class Family:
    label: str                                  # its column in the support matrix
    model_classes: tuple[str, ...]              # class names it covers (any class in the model's MRO)
    adapters: tuple[type[Adapter], ...]         # tried in order by compress(); the first one explains a refusal
    has_cls: bool = True                        # its encoder has a CLS token (else the no-CLS fallback)
    hf_classes: dict[str, str] = field(default_factory=dict)   # config.model_type → transformers class

    def adapter_for(self, method) -> type[Adapter]:
        """The first adapter that runs ``method`` (a chain: the one that takes chains), else the first one."""
        if isinstance(method, (list, tuple)):
            return next((a for a in self.adapters if getattr(a, "chains", False)), self.adapters[0])
        return next((a for a in self.adapters if a.supports(method, self.has_cls) != NO), self.adapters[0])

    def supports(self, method_cls) -> str:
        """"yes" | "fallback" | "video" | "—": the best any of its adapters gives."""
        answers = [a.supports(method_cls, self.has_cls) for a in self.adapters]
        return next((s for s in ("yes", "fallback", "video") if s in answers), NO)

    @property
    def supplies(self) -> frozenset[Signal]:
        """The signals its adapters compute for methods."""
        return frozenset().union(*(s for a in self.adapters for s in a.supplies.values()))


TOWER_ADAPTERS = (VisionTokenCompressor, ToMeVisionPatch, EncoderPruningPatch, TowerVideoCoding)
FAMILIES: tuple[Family, ...] = (
    # a CLIP tower also supplies CLIP's joint image–text space (CDPruner), given its projection and the text
    Family("CLIP tower", ("CLIPVisionModel", "CLIPVisionTransformer", "CLIPVisionModelWithProjection"),
           TOWER_ADAPTERS + (CLIPTowerCompressor,)),
    Family("SigLIP tower", ("SiglipVisionModel", "SiglipVisionTransformer"), TOWER_ADAPTERS, has_cls=False),
    Family("LLaVA-1.5", ("LlavaForConditionalGeneration", "LlavaModel"), (LlavaTokenCompression,),
           hf_classes={"llava": "LlavaForConditionalGeneration"}),
    Family("LLaVA-NeXT", ("LlavaNextForConditionalGeneration", "LlavaNextModel"), (LlavaNextTokenCompression,),
           hf_classes={"llava_next": "LlavaNextForConditionalGeneration"}),
    Family("Qwen2-VL / Qwen2.5-VL", ("Qwen2VLForConditionalGeneration", "Qwen2VLModel",
                                     "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel"),
           (Qwen2VLTokenCompression, Qwen2VLLLMCompression), has_cls=False,
           hf_classes={"qwen2_vl": "Qwen2VLForConditionalGeneration",
                       "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}),
    Family("LLaVA-OneVision", ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel"),
           (LlavaOnevisionTokenCompression,), has_cls=False,
           hf_classes={"llava_onevision": "LlavaOnevisionForConditionalGeneration"}),
    # a ViT classifier (a CLIP tower and a head on the CLS): methods prune between layers, ToMe merges in them
    Family("ViT classifier", ("FashionViT",), (TowerTokenPruning, ToMeVisionPatch, EncoderPruningPatch,
                                               TowerVideoCoding)),
    Family("EfficientNet-Lite0", ("EfficientNetLite0",), (EfficientNetTokenCompression,), has_cls=False),
)


def family_of(model: nn.Module | type) -> Family:
    """The family of ``model`` (an instance or a class), from its MRO; TypeError lists what is supported."""
    cls = model if isinstance(model, type) else type(model)
    for base in cls.__mro__:
        for family in FAMILIES:
            if base.__name__ in family.model_classes:
                return family
    known = ", ".join(c for f in FAMILIES for c in f.model_classes)
    raise TypeError(f"no token-compression adapter for {cls.__name__}; supported: {known}")


def family_named(label: str) -> Family:
    for family in FAMILIES:
        if family.label == label:
            return family
    raise KeyError(f"no family {label!r}; known: {', '.join(f.label for f in FAMILIES)}")


def hf_classes() -> dict[str, str]:
    """``config.model_type`` → transformers class, for every family loadable from a checkpoint."""
    return {t: c for f in FAMILIES for t, c in f.hf_classes.items()}


def adapter_class(model: nn.Module, method=None) -> type[Adapter]:
    """The adapter class :func:`compress` uses for ``model`` and ``method`` (a name, a method or a chain)."""
    family = family_of(model)
    if isinstance(method, str):
        from tokencodec.tokens.compress import get_method

        method = get_method(method)
    return family.adapter_for(method) if method is not None else family.adapters[0]


def compress(model: nn.Module, method, budget=None, **options) -> Adapter:
    """The adapter for ``model``, set up to run ``method`` at ``budget``; use it as a context manager."""
    return adapter_class(model, method).build(model, method, budget, **options)


__all__ = ["FAMILIES", "Family", "adapter_class", "compress", "family_named", "family_of", "hf_classes"]
