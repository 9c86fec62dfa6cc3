"""How each Hugging Face MLLM family is prompted: one entry per family, read by :class:`~tokencodec.models.hf.HFMLLM`.

An entry turns a question and its images into the model's inputs the way the family's own processor
does. The key is the checkpoint's ``config.model_type``; the transformers class that loads it comes
from the adapter registry (:func:`tokencodec.adapters.registry.hf_classes`), so adding a family is its
adapter file, its registry line and one entry here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE = "<image>"
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


class LlavaFormat:
    """LLaVA-1.5: ``USER: <image>\\n… ASSISTANT:`` (unless the processor has a chat template); the processor
    expands ``<image>`` into the image tokens."""

    needs_processor = True

    @staticmethod
    def text(question: str, n_images: int) -> str:
        return "USER: " + f"{IMAGE}\n" * n_images + question + " ASSISTANT:"

    @staticmethod
    def inputs(mllm, images: list[np.ndarray], text: str) -> dict[str, Any]:
        return dict(mllm.processor(images=images or None, text=text, return_tensors="pt"))


class QwenVLFormat:
    """Qwen2-VL / Qwen2.5-VL: the ``<|im_start|>`` chat format. The image processor and tokenizer are used
    apart and ``<|image_pad|>`` is repeated once per merged patch, as ``Qwen2VLProcessor`` does (that
    processor insists on a video processor, which needs torchvision); ``mm_token_type_ids`` (1 on image
    tokens) is returned as the processor returns it, so ``model(**inputs)`` computes M-RoPE."""

    needs_processor = False

    @staticmethod
    def text(question: str, n_images: int) -> str:
        return f"<|im_start|>user\n{QWEN_IMAGE * n_images}{question}<|im_end|>\n<|im_start|>assistant\n"

    @staticmethod
    def inputs(mllm, images: list[np.ndarray], text: str) -> dict[str, Any]:
        import torch

        out = dict(mllm.image_processor(images=images, return_tensors="pt")) if images else {}
        if images:
            merge = mllm.image_processor.merge_size ** 2
            counts = (out["image_grid_thw"].prod(-1) // merge).tolist()
            pad = "<|image_pad|>"
            parts = text.split(pad)
            if len(parts) - 1 != len(counts):
                raise ValueError(f"the prompt holds {len(parts) - 1} {pad} for {len(counts)} images")
            text = parts[0] + "".join(pad * n + rest for n, rest in zip(counts, parts[1:], strict=True))
        out.update(mllm.tokenizer(text, return_tensors="pt"))
        out["mm_token_type_ids"] = (out["input_ids"] == mllm.image_token_id).to(torch.long)
        return out


PROMPTS: dict[str, type] = {"llava": LlavaFormat, "qwen2_vl": QwenVLFormat, "qwen2_5_vl": QwenVLFormat}
# image placeholders a benchmark's prompt may already carry (LLaVA's, Qwen2-VL's)
PLACEHOLDERS = (QWEN_IMAGE, "<|image_pad|>", IMAGE)

__all__ = ["PLACEHOLDERS", "PROMPTS", "LlavaFormat", "QwenVLFormat"]
