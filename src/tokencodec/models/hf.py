"""Real Hugging Face MLLMs by hub name or local folder: load, prompt, generate under a token method, count the cost.

The one path every real-model entry point shares (the lmms-eval plugin, the ``hf-mllm`` study observer):

    mllm = HFMLLM.load("llava-hf/llava-1.5-7b-hf", device="cuda")       # or a folder; safetensors only
    out = mllm.generate([image], "Is there a dog?", method="visionzip", budget=Budget(keep=64))
    out.text, out.rates    # tokens, tokens_avg_layers, flops (LLM prefill, macs2), latency_s, peak_bytes

Families: LLaVA (``LlavaForConditionalGeneration``: prompt ``USER: <image>\\n… ASSISTANT:``, the
LLaVA-1.5 format, unless the processor has a chat template) and Qwen2-VL / Qwen2.5-VL (the
``<|im_start|>`` chat format; the image processor and tokenizer are used apart and the
``<|image_pad|>`` token is repeated once per merged patch, as ``Qwen2VLProcessor`` does: that
processor insists on a video processor, which needs torchvision). The method runs through
:func:`tokencodec.compress` (hooks, no fork), so every registered method a family supports works.

Rates per call: ``tokens`` (visual tokens at the LLM's last layer, as every tokencodec observer counts
them; the same at every layer for pre-LLM methods), ``tokens_avg_layers``,
``flops`` (LLM prefill only, ``macs2``: 2 FLOPs per multiply-add, the convention of FastV-style
papers; the vision tower and projector are not counted), ``latency_s`` (the whole ``generate``,
CUDA-synchronised on a GPU) and ``peak_bytes`` (``torch.cuda.max_memory_allocated`` on CUDA,
the process's resident set on CPU).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

FAMILIES = {"llava": "LlavaForConditionalGeneration", "qwen2_vl": "Qwen2VLForConditionalGeneration",
            "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
FLOPS_CONVENTION = "LLM prefill only, macs2 (2 FLOPs per multiply-add), no vision tower or projector"
# image placeholders a benchmark's prompt may already carry (LLaVA's, Qwen2-VL's)
PLACEHOLDERS = ("<|vision_start|><|image_pad|><|vision_end|>", "<|image_pad|>", "<image>")


class ModelNotFoundError(FileNotFoundError):
    """The weights are not where we looked; the message says where and how to get them."""


def _looks_local(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


def resolve_source(name_or_path: str) -> tuple[str, bool]:
    """(what from_pretrained reads, whether it is a local folder); ModelNotFoundError when absent."""
    if _looks_local(name_or_path):
        path = Path(name_or_path).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"model folder {path}: no config.json there (a save_pretrained folder, "
                                     "with model.safetensors, is expected)")
        return str(path), True
    return name_or_path, False


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def check_available(name_or_path: str) -> None:
    """Before any download or load: can ``name_or_path`` be loaded here? ``ModelNotFoundError`` (one line: the
    model, where it looked, what to do) when it is a hub name that is not in the local hub cache and the hub is
    off (``HF_HUB_OFFLINE``) or unreachable, so an offline run fails at once instead of after the hub client's
    retries. The cache is read with ``huggingface_hub.try_to_load_from_cache`` (no network); only for a model
    that is not cached, with no proxy configured, one TCP connection to the hub's host is tried."""
    source, local = resolve_source(str(name_or_path))
    if local:
        return
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return
    where = f"not in the hub cache ({constants.HF_HUB_CACHE})"
    remedy = f"download it where there is network (hf download {source}) or pass a local folder"
    if _offline():
        raise ModelNotFoundError(f"model {source!r}: {where} and HF_HUB_OFFLINE is set; {remedy}")
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return                                   # a proxy may reach the hub where a direct connection cannot
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=5).close()
    except OSError as err:
        raise ModelNotFoundError(f"model {source!r}: {where} and {url.hostname} cannot be reached "
                                 f"({err.strerror or type(err).__name__}); {remedy}") from None


@dataclass
class Generation:
    text: str
    rates: dict[str, float]
    record: Any = None                      # the adapter's CompressionRecord (None without a method)
    tokens_per_layer: list[int] = field(default_factory=list)     # visual tokens each LLM layer saw


@dataclass
class HFMLLM:
    model: Any
    tokenizer: Any
    image_processor: Any
    family: str                             # a key of FAMILIES
    source: str
    processor: Any = None                   # LLaVA's processor (it expands <image>)
    info: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, name_or_path: str, device: str = "cpu", dtype: str = "auto",
             attn_implementation: str = "sdpa") -> HFMLLM:
        """Load a checkpoint (safetensors only). A hub name is read from the local cache when offline."""
        import torch
        import transformers

        source, local = resolve_source(str(name_or_path))
        try:
            config = transformers.AutoConfig.from_pretrained(source)
        except OSError as err:
            from huggingface_hub.constants import HF_HUB_CACHE

            raise ModelNotFoundError(
                f"model {source!r}: not in the hub cache ({HF_HUB_CACHE}) and the hub could not be reached "
                f"({type(err).__name__}); download it where there is network (hf download {source}) or pass a "
                "local folder") from None
        family = config.model_type
        if family not in FAMILIES:
            raise ValueError(f"model {source!r} is a {family!r}; supported families: {', '.join(FAMILIES)}")
        torch_dtype = {"auto": "auto", "float32": torch.float32, "float16": torch.float16,
                       "bfloat16": torch.bfloat16}.get(dtype)
        if torch_dtype is None:
            raise ValueError(f"dtype {dtype!r}: allowed auto, float32, float16, bfloat16")
        model = getattr(transformers, FAMILIES[family]).from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, attn_implementation=attn_implementation)
        model = model.to(device).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        image_processor = transformers.AutoImageProcessor.from_pretrained(source)
        processor = transformers.AutoProcessor.from_pretrained(source) if family == "llava" else None
        return cls(model, tokenizer, image_processor, family, source, processor,
                   {"model": source, "family": family, "local": str(local), "dtype": str(model.dtype)})

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def prompt(self, question: str, n_images: int = 1) -> str:
        template = getattr(self.processor or self.tokenizer, "chat_template", None)
        if template:
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
            owner = self.processor or self.tokenizer
            return owner.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        if self.family == "llava":
            return "USER: " + "<image>\n" * n_images + question + " ASSISTANT:"
        vision = "<|vision_start|><|image_pad|><|vision_end|>" * n_images
        return f"<|im_start|>user\n{vision}{question}<|im_end|>\n<|im_start|>assistant\n"

    def inputs(self, images: list, question: str) -> dict:
        """Model inputs for one prompt with ``images`` (PIL images or uint8 arrays) and a question.

        Image placeholders already in the question (some benchmark prompts carry ``<image>``) are removed:
        the images go before the question, as LLaVA-1.5 and Qwen2-VL were trained."""
        if any(isinstance(im, str | bytes) for im in images):
            raise NotImplementedError("visuals given as paths (video or file tasks) are not supported; pass images")
        images = [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in images]
        for placeholder in PLACEHOLDERS:
            question = question.replace(placeholder, "")
        text = self.prompt(question.strip(), len(images))
        if self.family == "llava":
            out = self.processor(images=images or None, text=text, return_tensors="pt")
        else:
            out = dict(self.image_processor(images=images, return_tensors="pt")) if images else {}
            if images:
                merge = self.image_processor.merge_size ** 2
                counts = (out["image_grid_thw"].prod(-1) // merge).tolist()
                pad = "<|image_pad|>"
                parts = text.split(pad)
                if len(parts) - 1 != len(counts):
                    raise ValueError(f"the prompt holds {len(parts) - 1} {pad} for {len(counts)} images")
                text = parts[0] + "".join(pad * n + rest for n, rest in zip(counts, parts[1:], strict=True))
            out.update(self.tokenizer(text, return_tensors="pt"))
        return {k: v.to(self.device) for k, v in dict(out).items()}

    def generate(self, images: list, question: str, method=None, budget=None, max_new_tokens: int = 16,
                 **method_options) -> Generation:
        """Greedy answer to ``question`` about ``images``, with ``method`` (a name or TokenMethod) at ``budget``."""
        import torch

        from tokencodec.metrics.cost import measure_latency
        from tokencodec.models.adapters import compress, record_of

        kw = self.inputs(images, question)
        prompt_len = kw["input_ids"].shape[1]
        n_visual = int((kw["input_ids"] == self.image_token_id).sum())
        out: dict = {}

        def run() -> None:
            with torch.inference_mode():
                if method is None or method == "none":
                    out["ids"] = self.model.generate(**kw, max_new_tokens=max_new_tokens, do_sample=False)
                    return
                with compress(self.model, method, budget, **method_options) as patch:
                    out["ids"] = self.model.generate(**kw, max_new_tokens=max_new_tokens, do_sample=False)
                out["record"] = record_of(patch)

        # one timed call: synchronised and peak memory on CUDA, peak RSS on CPU (the project's one timer)
        timing = measure_latency(run, warmup=0, repeats=1, device=self.device)
        record = out.get("record")
        text = self.tokenizer.decode(out["ids"][0, prompt_len:], skip_special_tokens=True).strip()
        layers = self.model.config.get_text_config().num_hidden_layers
        per_layer = self._visual_per_layer(record, n_visual, layers)
        rates = {**self.cost(per_layer, prompt_len - n_visual), "latency_s": timing.median_s,
                 "peak_bytes": float(timing.peak_bytes)}
        return Generation(text, rates, record, [int(n) for n in per_layer])

    @staticmethod
    def _visual_per_layer(record, n_visual: int, layers: int) -> list[int]:
        if record is not None and record.tokens_per_layer:
            return list(record.tokens_per_layer)
        kept = None if record is None else record.kept
        if kept is not None:                 # pre-LLM methods: the kept set enters every layer
            n = sum(k.num_tokens for k in kept) if isinstance(kept, list) else kept.num_tokens
            return [int(n)] * layers
        return [n_visual] * layers

    def cost(self, visual_per_layer: list[int], text_tokens: int) -> dict[str, float]:
        """tokens, tokens_avg_layers and LLM prefill FLOPs (FLOPS_CONVENTION) for these visual counts."""
        from tokencodec.metrics.cost import TextShape, llm_prefill_flops

        shape = TextShape.from_config(self.model.config.get_text_config())
        flops = llm_prefill_flops(shape, visual_per_layer, text_tokens, False, "macs2")
        return {"tokens": float(visual_per_layer[-1]), "tokens_avg_layers": float(np.mean(visual_per_layer)),
                "flops": float(flops.total)}


__all__ = ["FAMILIES", "FLOPS_CONVENTION", "Generation", "HFMLLM", "ModelNotFoundError", "check_available",
           "resolve_source"]
