"""In-LLM visual-token pruning (FastV, SparseVLM, PyramidDrop, DART) for HF Qwen2-VL and Qwen2.5-VL.

``Qwen2VLLLMCompression(model, "fastv", Budget(keep=64))`` is a reversible context manager like the
pre-LLM :class:`~tokencodec.adapters.qwen2_vl.Qwen2VLTokenCompression`; ``tokencodec.compress`` picks
it for methods of stage "llm". The stage machinery is the LLaVA adapter's
(:class:`~tokencodec.adapters.llm_stages.LLMStages`): the methods' own plans and signal declarations,
q/k recomputed from each scoring layer's input, the sequence cut before the pruning layer, the
decode masks sliced per pruned layer. This file only finds the image span and starts each prefill.

**M-RoPE.** Qwen2-VL's text model folds its three position axes into one cos/sin pair [B, S, d]
(``mrope_section`` interleaved by its rotary embedding) and its attention applies the plain rotary
function, so gathering cos/sin at the kept slots keeps every token's own (t, h, w) rotation; the
decoder layers get no per-token ``position_ids`` (None unless packed). The kept tokens keep their
original positions (``positions="original"``, the only layout here: renumbering 3-D ids has no
official counterpart). Layer 0 caches the whole prompt, so during ``generate`` the model's own
positions (cache length + ``rope_deltas``) are the unpruned ones; only the pruned layers' mask
columns are sliced.

Supported: one image per sample, the same number of merged tokens in every sample (one span
each, found from ``input_ids``), 2-D or no attention mask, eager or SDPA. Refused with a message:
video, several images in one sample, different image sizes in one batch, ``inputs_embeds`` without
``input_ids``, adding images to a non-empty cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tokencodec.adapters import llm_pruning as lp
from tokencodec.adapters.base import Adapter
from tokencodec.adapters.hf_compat import cache_from
from tokencodec.adapters.llm_stages import LLM_SIGNALS, LLMStages, Run
from tokencodec.adapters.qwen2_vl import resolve
from tokencodec.tokens.compress.base import Budget, TokenMethod, get_method

NOMINAL_TOKENS = 576    # plans are made per prefill for the real N; this one only checks the layers at set-up


class Qwen2VLLLMCompression(LLMStages, Adapter):
    """Prune Qwen2-VL's visual tokens inside the LLM with an "llm" method; see the module docstring.

    Options as on LLaVA: ``layers`` (override the method's layer(s)), ``query`` (FastV "last" | "all"),
    ``stage_keep`` (explicit per-stage counts); ``positions`` may only be "original".
    """

    method_stages = ("llm",)
    supplies = {"llm": LLM_SIGNALS}

    def __init__(self, model: nn.Module, method: str | TokenMethod, budget: Budget | int | float, *,
                 layers: int | Sequence[int] | None = None, query: str | None = None,
                 stage_keep: Sequence[int] | None = None, positions: str | None = None):
        self.core, self.visual, self.lm = resolve(model)
        super().__init__(model)
        self.llm_method = get_method(method) if isinstance(method, str) else method
        if self.llm_method.stage != "llm":
            raise ValueError(f"method {self.llm_method.name!r} acts at stage {self.llm_method.stage!r}; "
                             "Qwen2VLLLMCompression runs 'llm' methods (pre-LLM ones: Qwen2VLTokenCompression, "
                             "or tokencodec.compress, which picks the adapter)")
        if positions not in (None, "original"):
            raise ValueError(f"positions={positions!r}: on Qwen2-VL the kept tokens keep their M-RoPE ids "
                             "(positions='original'); renumbering 3-D positions is not supported")
        self.method, self.budget = self.llm_method, Budget.coerce(budget)
        self.llm_budget = self.budget
        self.layers = self._check_lm(self.lm)
        self.positions = "original"
        self.grid, self.llm_tokens = (1, NOMINAL_TOKENS), NOMINAL_TOKENS
        self._options = (layers, stage_keep)
        self._init_llm(layers, None, query)       # the layers to hook; counts come per prefill
        self._stage_layers = [(s.layer, s.score_layer) for s in self.stage_plan]
        self._run: Run | None = None
        self._pending: tuple[Tensor, int, tuple[int, int]] | None = None
        self._grid_thw: Tensor | None = None
        self.tokens_per_layer: list[int] | None = None
        self.kept = None
        self.sequence_index: Tensor | None = None

    def _install(self) -> None:
        self.add_pre_hook(self.core, self._on_core, with_kwargs=True)
        self.add_pre_hook(self.visual, self._on_visual, with_kwargs=True)
        self.add_pre_hook(self.lm, self._on_lm, with_kwargs=True)
        self.add_hook(self.lm, self._after_lm)
        self._install_layer_hooks()

    def restore(self) -> None:
        super().restore()
        self._run = self._pending = self._grid_thw = None

    def _on_visual(self, module, args, kwargs):
        # generate() encodes the images before its prefill call, which then carries no image_grid_thw
        self._grid_thw = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]

    # -- Qwen2VLModel: where the image span is ------------------------------------------------------
    def _on_core(self, module, args, kwargs):
        if args:
            raise TypeError("call the Qwen2-VL model with keyword arguments while it is patched")
        encoded = kwargs.get("mm_encoder_outputs") or {}
        if kwargs.get("pixel_values_videos") is not None or encoded.get("video") is not None:
            raise NotImplementedError("video inputs are not supported by Qwen2VLLLMCompression yet (images only)")
        self._pending = None
        ids = kwargs.get("input_ids")
        has_images = kwargs.get("pixel_values") is not None or encoded.get("image") is not None
        if not has_images:
            return None
        if ids is None:
            raise NotImplementedError("pass input_ids with the images: the image span is found from input_ids")
        cache = cache_from(kwargs)
        if cache is not None and cache.get_seq_length() > 0:
            raise NotImplementedError("adding images to a non-empty KV cache is not supported")
        grid = kwargs.get("image_grid_thw")
        grid = self._grid_thw if grid is None else grid
        is_image = ids == self.core.config.image_token_id
        m = self.visual.spatial_merge_size
        if grid is None or grid.shape[0] != ids.shape[0]:
            raise ValueError("Qwen2VLLLMCompression needs one image per sample; got "
                             f"{0 if grid is None else grid.shape[0]} images for {ids.shape[0]} samples")
        # the counts, span starts and grids decide the shapes of the plan: one read of all three (the forward's
        # one host sync)
        b = ids.shape[0]
        first = is_image.to(torch.int8).argmax(1)
        values = torch.cat([is_image.sum(1), first, grid.flatten().to(ids.device)]).tolist()
        counts, starts = values[:b], values[b:2 * b]
        grids = [tuple(values[2 * b + 3 * i:2 * b + 3 * i + 3]) for i in range(b)]
        n = counts[0]
        if any(c != n for c in counts):
            raise ValueError("Qwen2VLLLMCompression needs the same number of image tokens in every sample; got "
                             f"{counts} image tokens")
        t, h, w = grids[0]
        if any(g != grids[0] for g in grids) or t * (h // m) * (w // m) != n:
            raise ValueError(f"every image in the batch must have the same grid; got {grids}")
        start = lp.image_spans(is_image, n)
        if start is None:
            raise ValueError("the image tokens of each sample must be contiguous (one image per sample)")
        self._pending = (start, n, (t * (h // m), w // m), min(starts))
        return None

    # -- language model: start a prefill, follow its decode steps -----------------------------------
    def _on_lm(self, module, args, kwargs):
        cache = cache_from(kwargs)
        if self._pending is not None:
            (start, n, grid, first), self._pending = self._pending, None
            embeds, mask = kwargs["inputs_embeds"], kwargs.get("attention_mask")
            if isinstance(mask, dict) or (mask is not None and mask.dim() != 2):
                raise NotImplementedError("Qwen2VLLLMCompression needs a 2-D attention mask [B, S] (or None)")
            self.grid, self.llm_tokens = grid, n
            self.stage_plan = self._plan(*self._options)           # the method's counts for this N
            self.stage_keep = tuple(s.keep for s in self.stage_plan)
            run = self._begin_run(start, n, embeds, mask)
            run.text_width = embeds.shape[1] - n - first          # text slots after the earliest span
            if self.signal.query == "raters":
                run.raters = self._raters(embeds, run)
            return None
        self._followup(cache)           # decode steps need nothing here: layer 0 caches the whole prompt
        return None


__all__ = ["Qwen2VLLLMCompression"]
