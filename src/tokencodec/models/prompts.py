"""How each Hugging Face MLLM family is prompted: one entry per family, read by :class:`~tokencodec.models.hf.HFMLLM`.

An entry turns prompts and their images into the model's inputs the way the family's own processor
does: a batch of prompts, left-padded with the tokenizer's pad token (so that every row's last token
is its own last prompt token, as ``generate`` needs). The key is the checkpoint's ``config.model_type``;
the transformers class that loads it comes from the adapter registry
(:func:`tokencodec.adapters.registry.hf_classes`), so adding a family is its adapter file, its registry
line and one entry here.
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
    def inputs(mllm, images: list[list[np.ndarray]], texts: list[str]) -> dict[str, Any]:
        flat = [im for sample in images for im in sample]
        return dict(mllm.processor(images=flat or None, text=texts, padding=True, padding_side="left",
                                   return_tensors="pt"))


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
    def inputs(mllm, images: list[list[np.ndarray]], texts: list[str]) -> dict[str, Any]:
        import torch

        flat = [im for sample in images for im in sample]
        out = dict(mllm.image_processor(images=flat, return_tensors="pt")) if flat else {}
        if flat:
            merge = mllm.image_processor.merge_size ** 2
            counts = iter((out["image_grid_thw"].prod(-1) // merge).tolist())   # images in sample order
            pad = "<|image_pad|>"
            expanded = []
            for sample, text in zip(images, texts, strict=True):
                parts = text.split(pad)
                if len(parts) - 1 != len(sample):
                    raise ValueError(f"the prompt holds {len(parts) - 1} {pad} for {len(sample)} images")
                expanded.append(parts[0] + "".join(pad * next(counts) + rest for rest in parts[1:]))
            texts = expanded
        out.update(mllm.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt"))
        out["mm_token_type_ids"] = (out["input_ids"] == mllm.image_token_id).to(torch.long)
        return out


# LLaVA-NeXT: LLaVA's format (its processor, LlavaNextProcessor, expands <image> to the image's AnyRes count and
# returns image_sizes; with the PIL image processor it needs no torchvision); chat templates come with checkpoints
PROMPTS: dict[str, type] = {"llava": LlavaFormat, "llava_next": LlavaFormat, "qwen2_vl": QwenVLFormat,
                            "qwen2_5_vl": QwenVLFormat}
# image placeholders a benchmark's prompt may already carry (LLaVA's, Qwen2-VL's)
PLACEHOLDERS = (QWEN_IMAGE, "<|image_pad|>", IMAGE)

__all__ = ["PLACEHOLDERS", "PROMPTS", "LlavaFormat", "QwenVLFormat"]
