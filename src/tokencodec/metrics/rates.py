"""The one cost path: an adapter's record (visual tokens per layer) → a point's rates.

:class:`CostModel` is where every token and compute rate of a point is computed — ``tokens_in``, ``tokens``,
``tokens_avg_layers``, ``flops`` (a named convention and the parts counted), ``kv_bytes`` and, with a device
profile, the roofline ``latency_pred_s`` — for every observer runner, ``HFMLLM`` and the lmms-eval cost
records; :meth:`CostModel.provenance` is what a results file records about them. The counting itself is in
:mod:`tokencodec.metrics.cost` (FLOPs, KV bytes) and :mod:`tokencodec.metrics.roofline` (latency).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from typing import Any

from tokencodec.metrics.cost import (
    CONVENTIONS,
    MLLMShape,
    TokensPerLayer,
    VisionShape,
    _check,
    kv_cache_bytes,
    prefill_flops,
    tokens_per_layer_summary,
    vit_flops,
)

RATE_DEFINITIONS: dict[str, str] = {
    "tokens_in": "visual tokens entering the consumer's first layer (the LLM; a ViT classifier's later layers)",
    "tokens": "visual tokens at the consumer's last layer (the same as tokens_in unless pruned inside it)",
    "tokens_avg_layers": "visual tokens averaged over the consumer's layers (equivalent tokens)",
    "flops": "analytic prefill FLOPs of the parts counted, under the named convention",
    "kv_bytes": "KV-cache bytes after prefill at dtype_bytes per value, batch 1 (LLM consumers only)",
    "latency_pred_s": "roofline-predicted prefill time on the named device profile (when one is given)",
}


@dataclass(frozen=True)
class CostModel:
    """How a runner's points are costed: the one place where a record's counts become a point's rates.

    ``shape`` is an :class:`MLLMShape` (a ViT, a projector and an LLM: the consumer is the LLM), a
    :class:`VisionShape` (a ViT classifier: the consumer is the encoder itself) or None (a CNN head: token
    counts only). ``parts`` are the FLOPs parts summed into ``flops`` (``("llm",)`` matches papers that count
    the LLM only). ``prefix_tokens`` are tokens every consumer layer sees that are not visual (a ViT's CLS),
    left out of the token counts but not of the FLOPs. ``device`` names a roofline profile
    (:mod:`tokencodec.metrics.roofline`): the rates then include ``latency_pred_s``.
    """

    shape: MLLMShape | VisionShape | None
    convention: str = "macs2"
    parts: tuple[str, ...] | None = None       # default: every part the model has
    prefix_tokens: int = 0
    dtype_bytes: int = 2
    device: str | None = None                  # a roofline profile (metrics/roofline.py): adds latency_pred_s
    recipe: str = "hf-llava"                   # the implementation that prediction assumes (roofline.RECIPES)

    def __post_init__(self) -> None:
        _check(self.convention)
        allowed = ("vision", "projector", "llm") if isinstance(self.shape, MLLMShape) else ("vision",)
        if self.parts is None:
            object.__setattr__(self, "parts", allowed)
        if self.shape is not None and not set(self.parts) <= set(allowed):
            raise ValueError(f"FLOPs parts {list(self.parts)}: allowed {list(allowed)} for this model")

    @property
    def rates(self) -> tuple[str, ...]:
        """The rates :meth:`point` returns."""
        if self.shape is None:
            return ("tokens",)
        names = ("tokens_in", "tokens", "tokens_avg_layers", "flops")
        if isinstance(self.shape, MLLMShape):
            names += ("kv_bytes",) + (("latency_pred_s",) if self.device else ())
        return names

    def point(self, tokens_per_layer: TokensPerLayer, text_tokens: int = 0, *,
              vision_tokens_per_layer: TokensPerLayer | None = None, projector_tokens: int | None = None,
              vision_patches: int | None = None, images: float = 1) -> dict[str, float]:
        """The rates of one forward from the visual tokens each consumer layer saw (a
        :class:`~tokencodec.adapters.base.CompressionRecord`'s ``tokens_per_layer``; :meth:`of_record`).

        ``vision_tokens_per_layer``: tokens per encoder layer when a method changed them (ToMe), else all;
        ``projector_tokens``: tokens the projector ran on (default: those entering the LLM);
        ``vision_patches``: the encoder's patches where they depend on the image (Qwen2-VL);
        ``images``: images the vision encoder ran on (a T-frame video: T).
        """
        if self.shape is None:
            count = tokens_per_layer if isinstance(tokens_per_layer, Integral | float) else tokens_per_layer[-1]
            return {"tokens": float(count)}
        layers = self.shape.text.num_layers if isinstance(self.shape, MLLMShape) else self.shape.num_layers
        per_layer = tokens_per_layer_summary(tokens_per_layer, layers).per_layer
        p = self.prefix_tokens
        rates = {"tokens_in": float(per_layer[0] - p), "tokens": float(per_layer[-1] - p),
                 "tokens_avg_layers": float(sum(per_layer) / len(per_layer) - p)}
        if isinstance(self.shape, MLLMShape):
            flops = prefill_flops(self.shape, per_layer, text_tokens, convention=self.convention,
                                  vision_tokens_per_layer=vision_tokens_per_layer, projector_tokens=projector_tokens,
                                  vision_patches=vision_patches)
            parts = dict(flops.parts, vision=flops.parts["vision"] * images)
            rates["kv_bytes"] = float(kv_cache_bytes(self.shape.text, per_layer, text_tokens, self.dtype_bytes))
        else:
            parts = {"vision": vit_flops(self.shape, per_layer, self.convention).total * images}
        rates["flops"] = float(sum(parts[name] for name in self.parts))
        if self.device and isinstance(self.shape, MLLMShape):
            rates.update(self._prediction(per_layer, text_tokens, vision_tokens_per_layer, projector_tokens,
                                          vision_patches).rates())
        return {k: rates[k] for k in self.rates}

    def _prediction(self, per_layer, text_tokens, vision_tokens_per_layer, projector_tokens, vision_patches):
        """The roofline prefill at batch 1 (a video's frames are not multiplied in: one image's tower)."""
        from tokencodec.metrics.roofline import predict_prefill

        if vision_tokens_per_layer is None and vision_patches is not None:
            vision_tokens_per_layer = vision_patches
        return predict_prefill(self.shape, vision_tokens_per_layer, per_layer, text_tokens, 1, self.device,
                               self.dtype_bytes, recipe=self.recipe, projector_tokens=projector_tokens)

    def of_record(self, record, n_visual: int, text_tokens: int = 0, *, vision_patches: int | None = None,
                  images: float = 1) -> dict[str, float]:
        """The rates of a forward from its adapter's :class:`~tokencodec.adapters.base.CompressionRecord`
        (None: no method ran, ``n_visual`` tokens reached every layer)."""
        layers = self.shape.text.num_layers if isinstance(self.shape, MLLMShape) else self.shape.num_layers
        if record is None or not record.tokens_per_layer:
            return self.point([n_visual] * layers, text_tokens, vision_patches=vision_patches, images=images)
        return self.point(record.tokens_per_layer, text_tokens, vision_tokens_per_layer=record.vision_tokens_per_layer,
                          projector_tokens=record.projector_tokens, vision_patches=vision_patches, images=images)

    def provenance(self) -> dict[str, Any]:
        """What a results file records about its rates: convention, parts, token definitions, device."""
        out: dict[str, Any] = {"rates": {k: RATE_DEFINITIONS[k] for k in self.rates if k in RATE_DEFINITIONS}}
        if self.shape is not None:
            out.update(flops_convention=self.convention, flops_convention_text=CONVENTIONS[self.convention],
                       flops_parts=list(self.parts), prefix_tokens_excluded=self.prefix_tokens,
                       model_shape=_shape_json(self.shape))
            if isinstance(self.shape, MLLMShape):
                out["kv_dtype_bytes"] = self.dtype_bytes
        if self.device and isinstance(self.shape, MLLMShape):
            from tokencodec.metrics.roofline import RECIPES, get_profile

            out.update(latency_device_profile=get_profile(self.device).as_dict(), latency_recipe=self.recipe,
                       latency_recipe_text=RECIPES[self.recipe].description)
        return out


def _shape_json(shape) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(shape)


__all__ = ["RATE_DEFINITIONS", "CostModel"]
