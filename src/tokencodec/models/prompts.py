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


def expand_placeholders(text: str, placeholder: str, counts: list[int]) -> str:
    """``text`` with its i-th ``placeholder`` repeated ``counts[i]`` times (the image's tokens), as the families'
    processors expand them; a ValueError when the prompt holds another number of placeholders."""
    parts = text.split(placeholder)
    if len(parts) - 1 != len(counts):
        raise ValueError(f"the prompt holds {len(parts) - 1} {placeholder} for {len(counts)} images")
    return parts[0] + "".join(placeholder * n + rest for n, rest in zip(counts, parts[1:], strict=True))


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
            texts = [expand_placeholders(text, "<|image_pad|>", [next(counts) for _ in sample])
                     for sample, text in zip(images, texts, strict=True)]
        out.update(mllm.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt"))
        out["mm_token_type_ids"] = (out["input_ids"] == mllm.image_token_id).to(torch.long)
        return out


class LlavaOnevisionFormat:
    """LLaVA-OneVision: the Qwen ``<|im_start|>`` chat format with ``<image>``. The image processor and tokenizer
    are used apart and ``<image>`` is repeated once per token of the image's packed AnyRes layout (base view,
    then the high-resolution rows each closed by a newline), as ``LlavaOnevisionProcessor`` does (that
    processor needs a video processor, which needs torchvision; video prompts are not built here). A batch
    shares one layout per forward under a method (the adapter's), so it is grouped by image size."""

    needs_processor = False
    one_layout_per_batch = True

    @staticmethod
    def text(question: str, n_images: int) -> str:
        return f"<|im_start|>user {IMAGE * n_images}\n{question}<|im_end|>\n<|im_start|>assistant\n"

    @staticmethod
    def inputs(mllm, images: list[list[np.ndarray]], texts: list[str]) -> dict[str, Any]:
        from tokencodec.adapters.llava_onevision import anyres_layout

        flat = [im for sample in images for im in sample]
        out = dict(mllm.image_processor(images=images, return_tensors="pt")) if flat else {}
        expanded = []
        for sample, text in zip(images, texts, strict=True):
            if len(sample) > 1:      # several images: base view and one newline each (the processor's rule)
                config = mllm.model.config.vision_config
                counts = [(config.image_size // config.patch_size) ** 2 + 1] * len(sample)
            else:
                counts = [anyres_layout(mllm.model.config, im.shape[:2]).span for im in sample]
            expanded.append(expand_placeholders(text, IMAGE, counts))
        out.update(mllm.tokenizer(expanded, padding=True, padding_side="left", return_tensors="pt"))
        return out

    @staticmethod
    def views(mllm, images: list[list[np.ndarray]]) -> list[int]:
        """Tower images per sample (its AnyRes views; one per image when a prompt holds several)."""
        from tokencodec.adapters.llava_onevision import anyres_layout

        return [len(sample) if len(sample) != 1 else anyres_layout(mllm.model.config, sample[0].shape[:2]).views
                for sample in images]


class LlavaNextFormat(LlavaFormat):
    """LLaVA-NeXT: LLaVA's format (its processor, LlavaNextProcessor, expands ``<image>`` to the image's AnyRes
    count and returns ``image_sizes``; with the PIL image processor it needs no torchvision); chat templates
    come with checkpoints. The tower runs on each image's views (base + crops)."""

    @staticmethod
    def views(mllm, images: list[list[np.ndarray]]) -> list[int]:
        from tokencodec.adapters.anyres import layout_for

        return [sum(layout_for(mllm.model.config, im.shape[:2]).views for im in sample) for sample in images]


PROMPTS: dict[str, type] = {"llava": LlavaFormat, "llava_next": LlavaNextFormat, "qwen2_vl": QwenVLFormat,
                            "qwen2_5_vl": QwenVLFormat, "llava_onevision": LlavaOnevisionFormat}
# image placeholders a benchmark's prompt may already carry (LLaVA's, Qwen2-VL's)
PLACEHOLDERS = (QWEN_IMAGE, "<|image_pad|>", IMAGE)

__all__ = ["PLACEHOLDERS", "PROMPTS", "LlavaFormat", "LlavaOnevisionFormat", "QwenVLFormat"]
