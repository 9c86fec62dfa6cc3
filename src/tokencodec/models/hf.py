"""Real Hugging Face MLLMs by hub name or local folder: load, prompt, generate under a token method, count the cost.

The one path every real-model entry point shares (the lmms-eval plugin, the ``hf-mllm`` study observer):

    mllm = HFMLLM.load("llava-hf/llava-1.5-7b-hf", device="cuda")       # or a folder; safetensors only
    out = mllm.generate([image], "Is there a dog?", method="visionzip", budget=Budget(keep=64))
    out.text, out.rates    # tokens_in, tokens, tokens_avg_layers, flops, kv_bytes, latency_s, peak_bytes
    outs = mllm.generate_batch([([im1], "Is there a dog?"), ([im2], "What colour?")], "visionzip", Budget(keep=64))

Families are those of the adapter registry that can be loaded from a checkpoint
(:func:`tokencodec.adapters.registry.hf_classes`: LLaVA, LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL, LLaVA-OneVision), each
prompted by its entry in :mod:`tokencodec.models.prompts` (the processor's chat template when it has one). The
method runs through :func:`tokencodec.compress` (hooks, no fork), so every registered method a family supports works.

Rates per call come from :class:`~tokencodec.metrics.rates.CostModel` (the one cost path): visual tokens
entering the LLM and at its last layer, their average over layers, prefill FLOPs of the vision tower,
projector and LLM (``macs2``; :data:`FLOPS_CONVENTION`), KV-cache bytes; plus ``latency_s`` (the whole
``generate``, CUDA-synchronised on a GPU, ÷ the batch size; ``batch_latency_s`` the batch's) and ``peak_bytes``
(``torch.cuda.max_memory_allocated`` on CUDA, the process's resident set on CPU). A batch is left-padded
and each sample's rates are its own (:meth:`HFMLLM.generate_batch`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from tokencodec.models.prompts import PLACEHOLDERS, PROMPTS

FLOPS_CONVENTION = "macs2 (2 FLOPs per multiply-add), prefill of the vision tower, projector and LLM"
# families whose in-LLM stages need one image size per batch (one span length): prompts are grouped by size
SAME_SIZE_IN_LLM = ("qwen2_vl", "qwen2_5_vl", "llava_next")


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
    record: Any = None                      # the adapter's CompressionRecord of the batch (None without a method)
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
        return self.inputs_batch([(images, question)])

    def inputs_batch(self, items: Sequence[tuple[list, str]]) -> dict:
        """Model inputs for several ``(images, question)`` prompts, as :meth:`inputs` makes one: left-padded
        with the tokenizer's pad token (its EOS when it has none) to the longest, ``attention_mask`` 0 on
        the padding, each prompt's images in order (LLaVA through its processor with a list of texts,
        Qwen2-VL through its image processor and tokenizer)."""
        if not items:
            raise ValueError("inputs_batch: no prompts given")
        images, texts = [], []
        for sample_images, question in items:
            if any(isinstance(im, str | bytes) for im in sample_images):
                raise NotImplementedError("visuals given as paths (video or file tasks) are not supported; "
                                          "pass images")
            images.append([np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im)
                           for im in sample_images])
            for placeholder in PLACEHOLDERS:
                question = question.replace(placeholder, "")
            texts.append(self.prompt(question.strip(), len(sample_images)))
        if len(items) > 1 and self.tokenizer.pad_token is None:      # padding needs a pad token
            self.tokenizer.pad_token = self.tokenizer.eos_token
        out = self.format.inputs(self, images, texts)
        return {k: v.to(self.device) for k, v in out.items()}

    def generate(self, images: list, question: str, method=None, budget=None, max_new_tokens: int = 16,
                 **method_options) -> Generation:
        """Greedy answer to ``question`` about ``images``, with ``method`` (a name or TokenMethod) at ``budget``."""
        return self.generate_batch([(images, question)], method, budget, max_new_tokens, **method_options)[0]

    def generate_batch(self, items: Sequence[tuple[list, str]], method=None, budget=None, max_new_tokens: int = 16,
                       **method_options) -> list[Generation]:
        """Greedy answers to several ``(images, question)`` prompts in one left-padded batch, one
        :class:`Generation` per prompt, in order.

        Each sample's rates are its own: its text tokens (the padding left out), its visual tokens (the
        record's per-layer counts; where rows keep different counts, each row's count: Qwen2-VL pre-LLM's
        ``extra["visual_tokens"]``, LLaVA pre-LLM's padded ``kept.mask``) and its images' patches. The
        batch is timed once: ``latency_s`` is the batch's wall time ÷ its size (the per-sample cost at this
        batch size), ``batch_latency_s`` the batch's wall time, ``batch_size`` its size; ``peak_bytes`` is
        the batch's. Qwen2-VL in-LLM methods need one image size per batch: prompts whose image sizes
        differ run in sub-batches of equal sizes (each timed on its own), as do LLaVA-NeXT's in-LLM methods and
        chains. LLaVA-NeXT's vision tower runs on each image's AnyRes views (base + crops): its FLOPs count them
        (the record's ``extra["views"]``, or the image sizes without a method)."""
        if not items:
            raise ValueError("generate_batch: no prompts given")
        out: list[Generation | None] = [None] * len(items)
        for group in self._batch_groups(items, method):
            for i, g in zip(group, self._generate_group([items[i] for i in group], method, budget, max_new_tokens,
                                                        method_options), strict=True):
                out[i] = g
        return out

    def _batch_groups(self, items, method) -> list[list[int]]:
        """Indices of ``items`` that can share one forward: all of them, except for a Qwen2-VL in-LLM method
        (its adapter needs the same image grid in every sample: grouped by image sizes, in order)."""
        from tokencodec.tokens.compress import get_method

        stage = None
        if method is not None and method != "none":
            last = method[-1][0] if isinstance(method, list | tuple) else method    # a chain: its last step
            stage = (get_method(last) if isinstance(last, str) else last).stage
        # a family whose adapter needs one layout per batch (LLaVA-OneVision's AnyRes) groups under any method
        one_layout = getattr(self.format, "one_layout_per_batch", False) and method not in (None, "none")
        if not (self.family in SAME_SIZE_IN_LLM and stage == "llm" or one_layout):
            return [list(range(len(items)))]
        groups: dict[tuple, list[int]] = {}
        for i, (images, _) in enumerate(items):
            sizes = tuple(im.size[::-1] if hasattr(im, "convert") else np.asarray(im).shape[:2] for im in images)
            groups.setdefault(sizes, []).append(i)
        return list(groups.values())

    def _generate_group(self, items, method, budget, max_new_tokens, method_options) -> list[Generation]:
        import torch

        from tokencodec.adapters.registry import compress
        from tokencodec.metrics.cost import measure_latency

        kw = self.inputs_batch(items)
        padded_len = kw["input_ids"].shape[1]
        out: dict = {}
        gen = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.tokenizer.pad_token_id)

        def run() -> None:
            with torch.inference_mode():
                if method is None or method == "none":
                    out["ids"] = self.model.generate(**kw, **gen)
                    return
                with compress(self.model, method, budget, **method_options) as patch:
                    out["ids"] = self.model.generate(**kw, **gen)
                out["record"] = patch.record()

        # one timed call for the batch: synchronised and peak memory on CUDA, peak RSS on CPU (the project's
        # one timer)
        timing = measure_latency(run, warmup=0, repeats=1, device=self.device)
        record, b = out.get("record"), len(items)
        # per-sample counts, read once after generate (never inside the hooks)
        visual = (kw["input_ids"] == self.image_token_id).sum(1).tolist()
        real = kw["attention_mask"].sum(1).tolist() if "attention_mask" in kw else [padded_len] * b
        patches = self.vision_patches_per_sample(kw, [len(images) for images, _ in items])
        views = self.views_per_sample(record, items)
        layers = self.model.config.get_text_config().num_hidden_layers
        cost = self.cost_model
        gens = []
        for i in range(b):
            text = self.tokenizer.decode(out["ids"][i, padded_len:], skip_special_tokens=True).strip()
            per_layer = sample_tokens_per_layer(record, i, visual[i], layers)
            own = None if record is None else replace(record, tokens_per_layer=per_layer)
            if own is not None and record.extra.get("projector_tokens") is not None:     # one count per row
                own = replace(own, projector_tokens=record.extra["projector_tokens"][i])
            rates = {**cost.of_record(own, visual[i], real[i] - visual[i], vision_patches=patches[i],
                                      images=views[i]),
                     "latency_s": timing.median_s / b, "batch_latency_s": timing.median_s, "batch_size": float(b),
                     "peak_bytes": float(timing.peak_bytes)}
            gens.append(Generation(text, rates, record, per_layer))
        return gens

    def views_per_sample(self, record, items) -> list[float]:
        """Images the vision tower ran on per sample (an image's AnyRes views on LLaVA-NeXT and LLaVA-OneVision),
        which multiply its cost: the adapter's ``extra["views"]`` when a method ran (per image, or one count for
        the batch's shared layout), else the family's prompt entry, else one per image."""
        counts = [len(images) for images, _ in items]
        views = None if record is None else record.extra.get("views")
        if isinstance(views, list | tuple):                     # per image, images in sample order
            bounds = np.cumsum([0, *counts])
            return [float(sum(views[a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        if views is not None:                                   # one layout for the whole batch
            return [float(views)] * len(items)
        counted = getattr(self.format, "views", None)
        if counted is None:
            return [1.0] * len(items)
        images = [[np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in sample]
                  for sample, _ in items]
        return [float(v) for v in counted(self, images)]

    @staticmethod
    def vision_patches_per_sample(inputs: dict, images_per_sample: Sequence[int]) -> list[int | None]:
        """Patches the vision encoder ran on for each sample (Qwen2-VL's ``image_grid_thw`` rows, in sample
        order), None per sample where they do not depend on the image."""
        grid = inputs.get("image_grid_thw")
        if grid is None:
            return [None] * len(images_per_sample)
        per_image = grid.prod(-1).tolist()
        bounds = np.cumsum([0, *images_per_sample])
        return [int(sum(per_image[a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def sample_tokens_per_layer(record, i: int, n_visual: int, layers: int) -> list[int]:
    """The visual tokens each LLM layer saw for sample ``i`` of a batch, from the adapter's record.

    The record's ``tokens_per_layer`` is the batch's (the widest row). Rows keep different counts only
    before the LLM: Qwen2-VL's pre-LLM adapter gives each row's count (``extra["visual_tokens"]``), LLaVA's
    a padded ``kept`` whose mask marks each row's tokens (plus the CLS it sent, ``extra["cls_sent"]``).
    In-LLM stages keep one count in every row."""
    if record is None or not record.tokens_per_layer:
        return [n_visual] * layers
    visual = record.extra.get("visual_tokens")         # [B] on the device
    if visual is not None:
        return [int(visual[i])] * layers
    mask = getattr(record.kept, "mask", None)
    if mask is not None and not record.stages:
        return [int(mask[i].sum()) + int(bool(record.extra.get("cls_sent")))] * layers
    return [int(n) for n in record.tokens_per_layer]


__all__ = ["FLOPS_CONVENTION", "Generation", "HFMLLM", "ModelNotFoundError", "check_available", "families",
           "resolve_source", "sample_tokens_per_layer"]
