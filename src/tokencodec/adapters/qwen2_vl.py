"""Pre-LLM visual-token compression for HF Qwen2-VL (and Qwen2.5-VL), as a reversible context manager.

``Qwen2VLTokenCompression(model, method, budget)`` hooks a ``Qwen2VLForConditionalGeneration`` (or
``Qwen2VLModel``; the Qwen2.5-VL classes likewise) on entry and removes every hook on exit. Written
against transformers 5.23. Tested on tiny random Qwen2-VL and Qwen2.5-VL models (forward, batches,
``generate``); images only.

**Where.** "pre-llm" methods act on the PatchMerger outputs: one token per 2×2 patch group, on the
grid (h/2, w/2) of each image (from ``image_grid_thw``), in raster order. Each image is its own
``TokenBatch`` of batch size 1, so images of different sizes work; a ``ratio`` budget is applied per
image (round(ratio·Nᵢ) each) and a ``keep`` count means that count for every image.

**Signals** (computed from the hooked ``qkv`` output of the last vision block, so SDPA/flash work,
no ``output_attentions``; there is no CLS token):

- ``mean_attention`` [1, N]: the attention each patch receives in the last block, softmax(QKᵀ/√d)
  with the block's 2-D RoPE applied to q and k as the model does, averaged over heads and over all
  query rows of its image (EffiVLM-Bench / this repo's ``vision_tower`` convention), then averaged
  over the 4 patches of each 2×2 group (LightCompress's Qwen2.5-VL hook and the VisPruner author's
  advice; LightCompress sums over query rows instead, which only rescales each image). On
  Qwen2.5-VL the group scores are un-windowed back to raster order; if the last block is a windowed
  one the attention is that within its window.
- ``keys`` [1, N, d_head]: the last block's keys before RoPE (content only, like CLIP's ``k_proj``
  keys), averaged over heads and over the 2×2 group; ``rope_keys=True`` uses the rotated keys.
- ``keys_full`` [1, N, D]: the same with the heads concatenated.

Methods with ``needs_cls=True`` get ``mean_attention`` in place of the CLS signals when they declare
a ``cls_fallback`` (VisionZip, PruMerge); otherwise a clear error is raised.

**Into the LLM.** Every output token of the method sits at the sequence slot of its representative
merged token (``TokenBatch.positions``), carrying its (t, h, w) M-RoPE position; the other image
slots are dropped. So the LLM sees the kept tokens in the raster order of their representatives,
whatever order the method emits (VisionZip's [dominant, contextual], PruMerge's attention order):
with the original positions kept, causal order then agrees with position order. Two tokens with one
representative are an error.

**Positions.** The model computes the 3-D position ids and ``rope_deltas`` from the *unpruned*
``input_ids`` / ``image_grid_thw`` with its own ``get_rope_index`` (or ``generate`` does); the hook on
the language model then gathers inputs_embeds, attention_mask and position_ids at the kept slots,
so every kept token keeps its original position. Rows of a batch may keep different counts: they
are left-padded to the longest (zero embeddings, mask 0, position 0). ``model.model.rope_deltas`` is
left as computed from the unpruned sequence, and ``generate`` grows the unpruned position ids, so
new tokens get exactly the positions they get without pruning. During decoding the (unpruned-length)
attention mask is mapped onto the pruned KV cache; a manual decode step without ``position_ids`` or
mask gets positions from the unpruned length (cache length + dropped tokens) plus ``rope_deltas``.

**Outputs.** Logits cover the pruned sequence (``logits[:, -1]`` is still the last token). After each
forward: ``last_kept`` (the kept ``TokenBatch`` per image), ``last_visual_tokens`` [B] (image tokens
reaching the LLM per sample), ``last_keep_mask`` [B, S] (which input slots reached the LLM),
``last_gather`` [B, S'] (the unpruned slot of each LLM slot, −1 for padding), ``last_position_ids``
[3, B, S'] (M-RoPE ids given to the LLM).

**Hooks.** Forward pre-hooks on the top model (rejects ``labels``), on the ``Qwen2VLModel`` (notes
prefill/decode, fixes mask-less decode positions) and on the language model (the pruning); a hook
on the tower and on the last block's ``attn``/``qkv`` (signals); and ``get_image_features`` swapped
for a wrapper that marks image encodings, because ``generate()`` encodes the images *before* its
prefill call and passes them as ``mm_encoder_outputs`` (accepted when encoded under this patch).
While patched, ``get_image_features`` returns the compressed tokens in their representatives'
slots (the other slots hold the original merged tokens, dropped later).

In-LLM methods (stage "llm": FastV, SparseVLM, PyramidDrop, DART) run through
:class:`~tokencodec.adapters.qwen2_vl_llm.Qwen2VLLLMCompression`, which ``tokencodec.compress`` picks.

**Not supported yet** (each raises with a message): in-ViT merging
(ToMe: the 2×2 merger and 2-D RoPE need the intact grid), adaptive budgets that pad the TokenBatch,
video inputs, ``mm_encoder_outputs`` encoded outside the patch (and so beam search or
``num_return_sequences`` > 1, which copy them), ``inputs_embeds`` without ``input_ids``, ``labels``,
4-D/precomputed attention masks, adding images to a non-empty cache.

Sequence surgery comes from :mod:`~tokencodec.adapters.llm_pruning`, the module the LLaVA adapter and
the in-LLM stages use too; here with its multi-span layout (a row may hold several images and rows
keep different counts, re-padded on the left: :func:`left_aligned_gather`).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import tokencodec.tokens.compress  # noqa: F401  (fills METHODS)
from tokencodec.adapters.base import Adapter, CompressionRecord
from tokencodec.adapters.hf_compat import cache_from
from tokencodec.adapters.llm_pruning import gather_seq, left_aligned_gather, prune_mask
from tokencodec.metrics.host_sync import model_call
from tokencodec.tokens import batch as batch_module  # CHECK_VALUES, read at call time
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, TokenMethod, get_method
from tokencodec.tokens.signals import Signal, resolve_request

QWEN_SIGNALS = frozenset({Signal.MEAN_ATTENTION, Signal.KEYS, Signal.KEYS_FULL})   # computed from the last block
SIGNALS = tuple(s.value for s in Signal if s in QWEN_SIGNALS)   # the same, by name
SUPPORTED = ("Qwen2VLForConditionalGeneration", "Qwen2VLModel",
             "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLModel")


# -- which methods, which signals -----------------------------------------------------------------

def method_signals(method: TokenMethod) -> tuple[str, ...]:
    """The signals to compute for ``method``; raise naming what is wrong if it cannot run here."""
    if method.stage == "llm":
        raise ValueError(f"method {method.name!r} prunes inside the LLM (stage 'llm'): use "
                         "tokencodec.adapters.qwen2_vl_llm.Qwen2VLLLMCompression (tokencodec.compress picks it)")
    if method.stage != "pre-llm":
        raise NotImplementedError(f"method {method.name!r} acts at stage {method.stage!r}; merging inside "
                                  "the Qwen2-VL ViT breaks its 2×2 PatchMerger and 2-D RoPE, so only "
                                  "'pre-llm' methods are supported")
    return resolve_request(method, QWEN_SIGNALS, has_cls=False, adapter="the Qwen2-VL vision tower")


# -- signals: pure functions of the last block's qkv output --------------------------------------

def split_qkv(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor]:
    """q, k [P, H, d] from the fused ``qkv`` Linear output [P, 3·D] (the model's own layout)."""
    q, k, _ = qkv.reshape(qkv.shape[0], 3, heads, -1).permute(1, 0, 2, 3).unbind(0)
    return q, k


def received_attention(q: Tensor, k: Tensor, bounds: list[int]) -> Tensor:
    """Per patch [P]: attention received within its chunk (``bounds``: the block's cu_seqlens, on the host),
    mean over heads and query rows (float32). One head at a time so memory stays O(n²) for large images.
    """
    out = torch.empty(q.shape[0], dtype=torch.float32, device=q.device)
    scale = q.shape[-1] ** -0.5
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        total = torch.zeros(e - s, dtype=torch.float32, device=q.device)
        for h in range(q.shape[1]):
            logits = (q[s:e, h].float() @ k[s:e, h].float().T) * scale
            total += logits.softmax(-1).mean(0)
        out[s:e] = total / q.shape[1]
    return out


def group_mean(x: Tensor, unit: int) -> Tensor:
    """Mean over consecutive groups of ``unit`` patches (the merger's 2×2 groups), [P/unit, ...]."""
    return x.reshape(x.shape[0] // unit, unit, *x.shape[1:]).mean(1)


def merged_signals(names: tuple[str, ...], q: Tensor, k_raw: Tensor, k_rot: Tensor, bounds: list[int],
                   unit: int, order: Tensor | None = None, rope_keys: bool = False) -> dict[str, Tensor]:
    """Signals per merged token [M, ...]; ``bounds`` the block's cu_seqlens (host ints); ``order`` maps window
    order back to raster order (Qwen2.5)."""
    k = k_rot if rope_keys else k_raw
    make = {
        "mean_attention": lambda: group_mean(received_attention(q, k_rot, bounds), unit),
        "keys": lambda: group_mean(k.float().mean(1), unit).to(k.dtype),
        "keys_full": lambda: group_mean(k.float().flatten(1), unit).to(k.dtype),
    }
    out = {name: make[name]() for name in names}
    return {n: v if order is None else v[order] for n, v in out.items()}


# -- the adapter ----------------------------------------------------------------------------------

@dataclass
class _Prompt:
    """What one prefill pruned, kept for the decode steps that follow it."""

    full_len: int        # S of the unpruned prompt
    gather: Tensor       # [B, S'] unpruned column per LLM slot, −1 = padding
    padded: bool = False  # some row is shorter than the longest (left-padded with −1)


def resolve(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(Qwen2VLModel-like core, vision tower, language model) or TypeError naming what is supported."""
    core = model.model if type(model).__name__.endswith("ForConditionalGeneration") else model
    if type(model).__name__ not in SUPPORTED or not all(hasattr(core, a) for a in ("visual", "language_model")):
        raise TypeError(f"unsupported model {type(model).__name__}; supported: {', '.join(SUPPORTED)}")
    return core, core.visual, core.language_model


class Qwen2VLTokenCompression(Adapter):
    """Prune/merge Qwen2-VL's merged visual tokens with a "pre-llm" method; see the module docstring.

    ``method``: a registered name or a ``TokenMethod``; ``budget``: ``Budget``, an int (keep count per
    image) or a float (keep ratio per image). ``rope_keys``: use RoPE-rotated keys for ``keys``.
    """

    method_stages = ("pre-llm",)
    supplies = {"pre-llm": QWEN_SIGNALS}

    def __init__(self, model: nn.Module, method: str | TokenMethod, budget: Budget | int | float,
                 rope_keys: bool = False):
        self.core, self.visual, self.llm = resolve(model)
        super().__init__(model)
        self.method = get_method(method) if isinstance(method, str) else method
        self.signals = method_signals(self.method)
        self.budget = Budget.coerce(budget)
        self.rope_keys = rope_keys
        attn = self.visual.blocks[-1].attn
        self._heads = attn.num_heads
        self._rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb_vision
        self._unit = self.visual.spatial_merge_size ** 2
        self._clear()
        self._reset_results()

    def _clear(self) -> None:
        """Internal state only; the ``last_*`` results of the last forward survive exit."""
        self._encoding_images = 0           # >0 while get_image_features runs
        self._store: dict = {}              # the last block's qkv, cu_seqlens, rope of the running tower
        self._encoded = None                # (tower output, keep mask over merged tokens) of the last image encoding
        self._phase: str | None = None      # what the next LLM call is: "prefill" | "decode" | None
        self._input_ids: Tensor | None = None
        self._prompt: _Prompt | None = None

    def record(self) -> CompressionRecord:
        """Per image kept batches; ``tokens_per_layer`` counts the visual tokens of the busiest sample (every
        LLM layer sees them all); ``extra["visual_tokens"]`` [B] has each sample's count."""
        per_sample = self.last_visual_tokens
        per_layer = None if per_sample is None else [int(per_sample.max())] * len(self.llm.layers)
        return CompressionRecord(kept=self.last_kept, tokens_per_layer=per_layer,
                                 sequence_index=self.last_gather, position_ids=self.last_position_ids,
                                 extra={"visual_tokens": per_sample})

    def _reset_results(self) -> None:
        self.last_kept: list[TokenBatch] = []
        self.last_visual_tokens: Tensor | None = None
        self.last_keep_mask: Tensor | None = None
        self.last_gather: Tensor | None = None
        self.last_position_ids: Tensor | None = None

    # -- hooks ----------------------------------------------------------------------------------
    def _install(self) -> None:
        if self.model is not self.core:
            self.add_pre_hook(self.model, self._check_top, with_kwargs=True)
        self.add_pre_hook(self.core, self._on_core, with_kwargs=True)
        # the model's forward and generate()'s pre-encoding both go through get_image_features
        self.swap(self.core, "get_image_features", self._image_features(self.core.get_image_features))
        if self.signals:
            attn = self.visual.blocks[-1].attn
            self.add_pre_hook(attn, self._on_attn, with_kwargs=True)
            self.add_hook(attn.qkv, self._on_qkv)
        self.add_hook(self.visual, self._on_visual, with_kwargs=True)
        self.add_pre_hook(self.llm, self._on_llm, with_kwargs=True)

    def restore(self) -> None:
        super().restore()
        self._clear()

    def _image_features(self, original):
        @functools.wraps(original)  # generate() reads its signature to pick the encoder's kwargs
        @model_call                  # the model's own reads inside it are not this adapter's (HostSyncs)
        def get_image_features(*args, **kwargs):
            self._encoding_images += 1
            try:
                return original(*args, **kwargs)
            finally:
                self._encoding_images -= 1
        return get_image_features

    @staticmethod
    def _check_top(module, args, kwargs):
        if kwargs.get("labels") is not None:
            raise NotImplementedError("labels are not supported while visual tokens are pruned (the logits "
                                      "cover the pruned sequence); compute the loss outside")

    def _on_core(self, module, args, kwargs):
        if args:
            raise TypeError("call the Qwen2-VL model with keyword arguments while it is patched")
        encoded = kwargs.get("mm_encoder_outputs") or {}
        if kwargs.get("pixel_values_videos") is not None or encoded.get("video") is not None:
            raise NotImplementedError("video inputs are not supported by Qwen2VLTokenCompression yet (images only)")
        has_images = kwargs.get("pixel_values") is not None or encoded.get("image") is not None
        if encoded.get("image") is not None and (self._encoded is None or encoded["image"] is not self._encoded[0]):
            raise NotImplementedError("mm_encoder_outputs must come from get_image_features run under this patch "
                                      "(as generate() does); features encoded elsewhere, or copied by beam "
                                      "search / num_return_sequences > 1, cannot be pruned")
        cache = cache_from(kwargs)
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:  # a new sequence
            self._prompt, self._phase = None, None
            if kwargs.get("pixel_values") is not None or encoded.get("image") is None:
                self._reset_results()  # (generate() encoded the images already: keep last_kept)
            if has_images:
                if kwargs.get("input_ids") is None:
                    raise NotImplementedError("pass input_ids with the images: the image slots are found "
                                              "from input_ids (inputs_embeds alone are not supported)")
                if kwargs.get("pixel_values") is not None:
                    self._encoded = None  # the tower runs inside this call
                self._phase, self._input_ids = "prefill", kwargs["input_ids"]
            return None
        if self._prompt is None:
            return None  # a cache this patch did not prune
        if has_images:
            raise NotImplementedError("adding images to a non-empty KV cache is not supported")
        self._phase = "decode"
        if kwargs.get("position_ids") is None and kwargs.get("attention_mask") is None:
            # the model would count positions from the (pruned) cache length; count them unpruned
            p = self._prompt
            x = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
            start = past - p.gather.shape[1] + p.full_len
            pos = torch.arange(start, start + x.shape[1], device=p.gather.device).view(1, 1, -1)
            delta = self.core.rope_deltas.to(pos.device)
            return args, dict(kwargs, position_ids=(pos + delta[None]).expand(3, p.gather.shape[0], -1))
        return None

    def _on_attn(self, module, args, kwargs):
        if self._encoding_images:
            self._store["cu_seqlens"] = kwargs["cu_seqlens"]
            self._store["rope"] = kwargs["position_embeddings"]

    def _on_qkv(self, module, args, output):
        if self._encoding_images:
            self._store["qkv"] = output

    def _signals(self, grid_thw: Tensor, bounds: list[int]) -> dict[str, Tensor]:
        if not self.signals:
            return {}
        s, self._store = self._store, {}
        q, k = split_qkv(s["qkv"], self._heads)
        cos, sin = s["rope"]
        q_rot, k_rot = self._rope(q, k, cos, sin)
        order = None
        if hasattr(self.visual, "window_size"):  # Qwen2.5-VL: blocks run in window order
            from transformers.vision_utils import get_vision_window_index

            window_index, _ = get_vision_window_index(grid_thw, self.visual.spatial_merge_size,
                                                      self.visual.window_size, self.visual.patch_size)
            order = torch.argsort(window_index.to(q.device))
        return merged_signals(self.signals, q_rot, k, k_rot, bounds, self._unit, order, self.rope_keys)

    def _on_visual(self, module, args, kwargs, output):
        if not self._encoding_images:
            return None  # a direct call of the tower: leave it alone
        grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
        merged = output.pooler_output
        # the images' grids (and the attention chunks, for attention signals) shape the per-image batches:
        # one read of both, the forward's one host sync
        cu = self._store.get("cu_seqlens") if self.signals else None
        values = torch.cat([grid.flatten().to(merged.device), *(() if cu is None else (cu.to(merged.device),))])
        values = values.tolist()
        grids = [tuple(values[3 * i:3 * i + 3]) for i in range(grid.shape[0])]
        signals = self._signals(grid, values[3 * grid.shape[0]:])
        m = self.visual.spatial_merge_size
        new, keep, kept_batches, start = [], [], [], 0
        for t, h, w in grids:
            n = t * (h // m) * (w // m)
            feats = merged[start:start + n]
            batch = TokenBatch.from_grid(feats[None], (h // m, w // m), frames=t,
                                         **{k: v[start:start + n][None] for k, v in signals.items()})
            kept = self.method(batch, self.budget)
            slot, mask = place_tokens(feats, kept, self.method.name)
            new.append(slot)
            keep.append(mask)
            kept_batches.append(kept)
            start += n
        self.last_kept = kept_batches
        output.pooler_output = torch.cat(new)
        # merged and kept tokens per image, known from shapes: the LLM's row widths follow without a read
        sizes = [(t * (h // m) * (w // m), k.num_tokens) for (t, h, w), k in zip(grids, kept_batches, strict=True)]
        self._encoded = (output, torch.cat(keep), sizes)
        return output

    def _on_llm(self, module, args, kwargs):
        phase, self._phase = self._phase, None  # one LLM call per model call
        if phase == "prefill":
            return self._prefill(kwargs)
        if phase == "decode":
            p = self._prompt
            mask = kwargs.get("attention_mask")
            if isinstance(mask, dict):
                raise NotImplementedError("precomputed (dict) attention masks are not supported")
            if mask is None and not p.padded:
                return None
            if mask is None:  # generate() drops an all-ones mask; the pruned rows may still need padding
                cache = cache_from(kwargs)
                past = cache.get_seq_length() if cache is not None else 0
                full = p.full_len + past - p.gather.shape[1] + kwargs["inputs_embeds"].shape[1]
                mask = torch.ones(p.gather.shape[0], full, dtype=torch.long, device=p.gather.device)
            return args, dict(kwargs, attention_mask=prune_mask(mask, p.gather, p.full_len))
        return None

    def _prefill(self, kwargs):
        if self._encoded is None:
            raise RuntimeError("the images were not encoded under this patch; cannot prune")
        embeds, pos, mask = kwargs["inputs_embeds"], kwargs.get("position_ids"), kwargs.get("attention_mask")
        if pos is None:
            raise ValueError("no 3-D position ids reached the LLM; pass mm_token_type_ids with the inputs")
        if isinstance(mask, dict) or (mask is not None and mask.dim() != 2):
            raise NotImplementedError("Qwen2VLTokenCompression needs a 2-D attention mask [B, S] (or None)")
        ids = self._input_ids.to(embeds.device)
        image = ids == self.core.config.image_token_id
        _, kept_mask, sizes = self._encoded
        keep = torch.ones_like(image).masked_scatter(image, kept_mask.to(embeds.device))  # row-major over [B, S]
        if len(sizes) == ids.shape[0]:      # one image per row (images come in row order): widths known here
            counts = [ids.shape[1] - n + k for n, k in sizes]
            if batch_module.CHECK_VALUES and keep.sum(1).tolist() != counts:
                raise ValueError("Qwen2VLTokenCompression: as many images as rows, but not one image per row")
        else:                               # several images in a row: the row widths are read (one host sync)
            counts = keep.sum(1).tolist()
        gather = left_aligned_gather(keep, counts)
        self._prompt = _Prompt(full_len=ids.shape[1], gather=gather, padded=min(counts) < max(counts))
        new_pos = gather_seq(pos, gather, axis=1)
        self.last_keep_mask, self.last_gather = keep, gather
        self.last_visual_tokens = (keep & image).sum(1)
        self.last_position_ids = _mrope_rows(new_pos)
        kwargs = dict(kwargs, inputs_embeds=gather_seq(embeds, gather), position_ids=new_pos,
                      attention_mask=prune_mask(mask, gather, ids.shape[1]))
        return (), kwargs


def place_tokens(feats: Tensor, kept: TokenBatch, name: str) -> tuple[Tensor, Tensor]:
    """Each kept token at its representative's slot: (features [N, D], keep mask [N])."""
    if kept.mask is not None:
        raise NotImplementedError(f"method {name!r} returned a padded batch; adaptive budgets are not "
                                  "supported on Qwen2-VL yet")
    rep = kept.positions[0]
    if batch_module.CHECK_VALUES and rep.unique().numel() != rep.numel():     # a value check: a host read
        raise ValueError(f"method {name!r} gave two tokens the same representative; each kept token needs "
                         "its own slot (and M-RoPE position)")
    slot = feats.index_copy(0, rep, kept.features[0].to(feats.dtype))
    mask = torch.zeros(feats.shape[0], dtype=torch.bool, device=feats.device).index_fill_(0, rep, True)
    return slot, mask


def _mrope_rows(pos: Tensor | None) -> Tensor | None:
    """The 3 M-RoPE rows of position ids given as [3, B, S] or [4, B, S] (text row first)."""
    if pos is None:
        return None
    return pos[1:] if pos.dim() == 3 and pos.shape[0] == 4 else pos


__all__ = ["QWEN_SIGNALS", "SIGNALS", "Qwen2VLTokenCompression", "group_mean", "left_aligned_gather", "merged_signals",
           "method_signals", "prune_mask", "received_attention"]
