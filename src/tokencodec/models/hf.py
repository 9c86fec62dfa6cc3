"""Real Hugging Face MLLMs by hub name or local folder: load, prompt, generate under a token method, count the cost.

The one path every real-model entry point shares (the lmms-eval plugin, the ``hf-mllm`` study observer):

    mllm = HFMLLM.load("llava-hf/llava-1.5-7b-hf", device="cuda")       # or a folder; safetensors only
    out = mllm.generate([image], "Is there a dog?", method="visionzip", budget=Budget(keep=64))
    out.text, out.rates    # tokens_in, tokens, tokens_avg_layers, flops, kv_bytes, latency_s, peak_bytes

Families are those of the adapter registry that can be loaded from a checkpoint
(:func:`tokencodec.adapters.registry.hf_classes`: LLaVA, Qwen2-VL, Qwen2.5-VL), each prompted by its entry
in :mod:`tokencodec.models.prompts` (the processor's chat template when it has one). The method runs
through :func:`tokencodec.compress` (hooks, no fork), so every registered method a family supports works.

Rates per call come from :class:`~tokencodec.metrics.rates.CostModel` (the one cost path): visual tokens
entering the LLM and at its last layer, their average over layers, prefill FLOPs of the vision tower,
projector and LLM (``macs2``; :data:`FLOPS_CONVENTION`), KV-cache bytes; plus ``latency_s`` (the whole
``generate``, CUDA-synchronised on a GPU) and ``peak_bytes`` (``torch.cuda.max_memory_allocated`` on
CUDA, the process's resident set on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokencodec.models.prompts import PLACEHOLDERS, PROMPTS

FLOPS_CONVENTION = "macs2 (2 FLOPs per multiply-add), prefill of the vision tower, projector and LLM"


def families() -> dict[str, str]:
    """``config.model_type`` → transformers class, for the registry's families that have a prompt entry."""
    from tokencodec.adapters.registry import hf_classes

    return {t: c for t, c in hf_classes().items() if t in PROMPTS}


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
    family: str                             # a key of families() (the checkpoint's config.model_type)
    source: str
    processor: Any = None                   # LLaVA's processor (it expands <image>)
    info: dict[str, str] = field(default_factory=dict)
    latency_device: str | None = None       # a roofline profile name: rates then include latency_pred_s

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
        family, known = config.model_type, families()
        if family not in known:
            raise ValueError(f"model {source!r} is a {family!r}; supported families: {', '.join(known)}")
        torch_dtype = {"auto": "auto", "float32": torch.float32, "float16": torch.float16,
                       "bfloat16": torch.bfloat16}.get(dtype)
        if torch_dtype is None:
            raise ValueError(f"dtype {dtype!r}: allowed auto, float32, float16, bfloat16")
        model = getattr(transformers, known[family]).from_pretrained(
            source, dtype=torch_dtype, use_safetensors=True, attn_implementation=attn_implementation)
        model = model.to(device).eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        image_processor = transformers.AutoImageProcessor.from_pretrained(source)
        processor = transformers.AutoProcessor.from_pretrained(source) if PROMPTS[family].needs_processor else None
        return cls(model, tokenizer, image_processor, family, source, processor,
                   {"model": source, "family": family, "local": str(local), "dtype": str(model.dtype)})

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    @property
    def format(self):
        """The family's prompt entry (:mod:`tokencodec.models.prompts`)."""
        return PROMPTS[self.family]

    @property
    def cost_model(self):
        """The one cost path for this checkpoint (``device``: a roofline profile for ``latency_pred_s``)."""
        from tokencodec.metrics.cost import MLLMShape
        from tokencodec.metrics.rates import CostModel

        recipe = "hf-qwen2-vl" if self.family.startswith("qwen") else "hf-llava"
        return CostModel(MLLMShape.from_config(self.model.config), recipe=recipe, device=self.latency_device)

    def prompt(self, question: str, n_images: int = 1) -> str:
        template = getattr(self.processor or self.tokenizer, "chat_template", None)
        if template:
            content = [{"type": "image"}] * n_images + [{"type": "text", "text": question}]
            owner = self.processor or self.tokenizer
            return owner.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False)
        return self.format.text(question, n_images)

    def inputs(self, images: list, question: str) -> dict:
        """Model inputs for one prompt with ``images`` (PIL images or uint8 arrays) and a question, the keys the
        family's own processor returns (so ``model(**inputs)`` works).

        Image placeholders already in the question (some benchmark prompts carry ``<image>``) are removed:
        the images go before the question, as LLaVA-1.5 and Qwen2-VL were trained."""
        if any(isinstance(im, str | bytes) for im in images):
            raise NotImplementedError("visuals given as paths (video or file tasks) are not supported; pass images")
        images = [np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in images]
        for placeholder in PLACEHOLDERS:
            question = question.replace(placeholder, "")
        out = self.format.inputs(self, images, self.prompt(question.strip(), len(images)))
        return {k: v.to(self.device) for k, v in out.items()}

    def generate(self, images: list, question: str, method=None, budget=None, max_new_tokens: int = 16,
                 **method_options) -> Generation:
        """Greedy answer to ``question`` about ``images``, with ``method`` (a name or TokenMethod) at ``budget``."""
        import torch

        from tokencodec.adapters.registry import compress
        from tokencodec.metrics.cost import measure_latency

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
                out["record"] = patch.record()

        # one timed call: synchronised and peak memory on CUDA, peak RSS on CPU (the project's one timer)
        timing = measure_latency(run, warmup=0, repeats=1, device=self.device)
        record = out.get("record")
        text = self.tokenizer.decode(out["ids"][0, prompt_len:], skip_special_tokens=True).strip()
        rates = {**self.cost_model.of_record(record, n_visual, prompt_len - n_visual,
                                             vision_patches=self.vision_patches(kw)),
                 "latency_s": timing.median_s, "peak_bytes": float(timing.peak_bytes)}
        layers = self.model.config.get_text_config().num_hidden_layers
        per_layer = record.tokens_per_layer if record is not None and record.tokens_per_layer else [n_visual] * layers
        return Generation(text, rates, record, [int(n) for n in per_layer])

    @staticmethod
    def vision_patches(inputs: dict) -> int | None:
        """Patches the vision encoder ran on, where they depend on the image (Qwen2-VL's ``image_grid_thw``)."""
        grid = inputs.get("image_grid_thw")
        return None if grid is None else int(grid.prod(-1).sum())


__all__ = ["FLOPS_CONVENTION", "Generation", "HFMLLM", "ModelNotFoundError", "families", "resolve_source"]
