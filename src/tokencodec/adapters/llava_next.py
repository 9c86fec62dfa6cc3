"""Visual-token compression for HF ``LlavaNextForConditionalGeneration`` (LLaVA-NeXT / LLaVA-1.6 AnyRes), by hooks.

The LLaVA-1.5 adapter (:class:`~tokencodec.adapters.llava.LlavaTokenCompression`) with what AnyRes changes:
an image is a base view plus rows × cols crops, each a CLIP view of side² patches (576 at 336 px), and the
model packs them for the LLM as base patches, then the stitched crop grid cut to the image's aspect ratio
with one ``image_newline`` token after each row (:mod:`tokencodec.adapters.anyres`). So each image's span
in the prompt has its own length L (the processor expands ``<image>`` to it), which the adapter learns from
``image_sizes``: a wrapper around the model's ``get_image_features`` reads them once per forward (the one
documented host read; the model itself reads them there too). Everything else is as on LLaVA-1.5: q/k hooks
on the tower for the signals, the compression at the projector, the sequence cut at the language model's
input, in-LLM stages by :class:`~tokencodec.adapters.llm_stages.LLMStages`, ``generate`` with the pruned
KV cache, chains ``[(pre-LLM or ToMe, budget), (in-LLM, budget)]``.

**Pre-LLM methods, ``crops=``** (default: the method's ``crops`` declaration, i.e. what its official
LLaVA-NeXT code does):

- ``"per-crop"`` (VisionZip, VisPruner, CDPruner: official; every other pre-LLM method and ToMe: no official
  NeXT code, the same extension): the method runs on every view alone, with its CLS and tower signals, at the
  budget **per view** (``Budget(keep=T)``: T per view, the official knob: "32 × 5 = 160"; a ratio: of side²).
  The kept tokens are laid out in the **spatial span** as the official code does (no unpadding, no newline
  tokens): the base view's tokens first (the method's order for methods whose order matters,
  ``positions="renumber"``; raster order for the others), then the crops' tokens in raster order over the
  stitched crop grid. A method may put only the leading part of each crop's output onto the grid
  (``grid_tokens``): VisionZip's dominant tokens go there, then every crop's CLS, then every crop's contextual
  tokens, crop after crop (official ``restore_image_features_sorted``); PruMerge(+) keeps each crop's
  LLaVA-1.5 order, crop after crop. A method that sends the CLS (VisionZip) sends one per view. Positions
  are contiguous (``"renumber"``, the official LLaVA path): the spatial span is not the prompt's layout, so no
  token has an original position there; ``positions="original"`` is refused.
- ``"joint"`` (DivPrune: official): the method runs once per image over the **packed span**, the L tokens the
  LLM would see (newline tokens included, as image tokens that may be dropped), in the LLM's embedding space
  (the newline exists only there: ``features`` does not apply), as a 1 × L grid, at a budget over L. Positions
  follow the method (``"renumber"``: contiguous, DivPrune official; ``"original"``: each kept token keeps its
  packed slot's position, RoPE gaps). Methods that read tower signals are refused here: a newline token has
  no CLS attention or keys.

**In-LLM methods** (fastv, sparsevlm, pyramiddrop, dart, holitom-llm) see the whole packed span as the image
span, newline tokens included and counted as image tokens (PyramidDrop's and DART's official LLaVA-NeXT code
take the image features from the span start to the text: the newlines are among them); ratios are of L.
Positions as on LLaVA-1.5 (each method's declaration). A batch's rows must hold spans of one length (images
of one size, or sizes that give the same L): ``HFMLLM`` groups prompts by image size for them.

**Batches.** Pre-LLM, rows may hold images of different sizes: each row's span is cut on its own and the
rows are left-padded to one width (:func:`~tokencodec.adapters.llm_pruning.ragged_span_index`; padded slots
are masked out, renumbered rows shift by a constant, which RoPE does not see). ``sequence_index`` maps each
LLM slot to the caller's slot it takes its identity from (a spatial-span token whose patch unpadding cut,
and a CLS, stand at their image's first slot).

**Record** (:meth:`record`): as on LLaVA-1.5; ``kept`` holds every token of each image's span in order (a
sent CLS included, standing for no patch), its grid ``(1, N0)`` over the widest image's uncompressed span
(spatial: views·side²; joint: L), ``positions`` the slot there; ``extra["views"]`` the views per image (the
tower ran on them: the cost's ``images``), ``extra["spans"]`` each image's packed length L,
``extra["crops"]``, ``extra["visual_tokens"]`` (pre-LLM alone) each row's real token count, and, where the
method ranked projected tokens, ``extra["projector_tokens"]`` each row's (views·side²; ``projector_tokens`` the
widest row's).

Supported: one image per sample; ``vision_feature_select_strategy`` "default" with CLIP ("full" with SigLIP);
a Llama-style LM. Refused with a message: video (``frames``), several images in one sample, images encoded
outside the patch (``mm_encoder_outputs`` passed in), CDPruner (its per-image relevance space is not wired
over views yet) and FlowCut (its official NeXT code cuts a second time after LLM layer 1, not wired yet).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from tokencodec.adapters import llm_pruning as lp
from tokencodec.adapters.anyres import AnyResLayout, layout_for
from tokencodec.adapters.llava import LlavaTokenCompression
from tokencodec.adapters.vision_tower import TOWER_SIGNALS, method_signals
from tokencodec.metrics.host_sync import model_call
from tokencodec.tokens import batch as batch_module
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget
from tokencodec.tokens.transfer import on_device, to_device

CROPS = ("per-crop", "joint")


# -- index tables of a batch of layouts (host-built, cached per device) --------------------------------------

@on_device
def view_tables(layouts: tuple[AnyResLayout, ...]) -> dict[str, Tensor]:
    """Per view of the batch (views of all images, in the tower's order): its patches' spatial and packed slots
    [V, side²], whether it is a crop [V], its crop index [V] (0 for a base view)."""
    spatial = torch.cat([lay.spatial_slot.view(lay.views, -1) for lay in layouts])
    packed = torch.cat([lay.packed_slot.view(lay.views, -1) for lay in layouts])
    local = torch.cat([torch.arange(lay.views) for lay in layouts])
    return {"spatial": spatial, "packed": packed, "crop": local > 0, "crop_index": (local - 1).clamp_min(0)}


@on_device
def image_entries(views: tuple[int, ...], per_view: int) -> tuple[Tensor, Tensor]:
    """[B, M] the flat entries (``per_view`` per view, views in order) of each image, left-aligned and padded
    with entry 0, and [B, M] which are real; M = the most entries of an image."""
    width = max(views) * per_view
    start = torch.tensor([0, *views[:-1]]).cumsum(0) * per_view
    j = torch.arange(width)[None]
    real = j < torch.tensor(views)[:, None] * per_view
    return torch.where(real, start[:, None] + j, 0), real


@on_device
def packed_gather(layouts: tuple[AnyResLayout, ...], rows: tuple[int, ...]) -> Tensor:
    """[len(rows), L] for images ``rows`` (all of one packed length L): the flat view-patch index of each packed
    slot among all the batch's views, the newline as the row after them all."""
    offsets = torch.tensor([0, *[lay.views for lay in layouts]]).cumsum(0) * layouts[0].side ** 2
    newline = int(offsets[-1])
    return torch.stack([torch.where(layouts[i].packed >= 0, layouts[i].packed + offsets[i], newline) for i in rows])


class LlavaNextTokenCompression(LlavaTokenCompression):
    """Compress LLaVA-NeXT's image tokens with ``method`` at ``budget`` (or a chain) while the context is active.

    Options as :class:`~tokencodec.adapters.llava.LlavaTokenCompression` (no ``frames``/``spatial``), plus
    ``crops`` ("per-crop" | "joint"; default: the method's declaration, its official LLaVA-NeXT code).
    """

    supported = ("LlavaNextForConditionalGeneration", "LlavaNextModel")
    # not wired on NeXT yet: CDPruner's relevance space (per image, and an image is several views) and FlowCut,
    # whose official NeXT code adds a second cut after LLM layer 1 (tower-only pruning would not be its default)
    supplies = {**LlavaTokenCompression.supplies, "vision-encoder": TOWER_SIGNALS, "pre-llm": TOWER_SIGNALS}
    video = False

    def __init__(self, model: nn.Module, method, budget: Budget | int | float | None = None, *,
                 crops: str | None = None, layers: int | Sequence[int] | None = None, positions: str | None = None,
                 query: str | None = None, stage_keep: Sequence[int] | None = None, features: str | None = None,
                 signal_layer: int | None = None, prop_attn: bool | None = None):
        if crops not in (None, *CROPS):
            raise ValueError(f"crops must be 'per-crop' or 'joint', not {crops!r}")
        self._crops_option, self._positions_option = crops, positions
        self._llm_options = (layers, stage_keep)
        self.crops: str | None = None
        super().__init__(model, method, budget, layers=layers, positions=positions, query=query,
                         stage_keep=stage_keep, features=features, signal_layer=signal_layer, prop_attn=prop_attn)
        if not getattr(self.llava.config, "image_grid_pinpoints", None):
            raise ValueError("the model's config has no image_grid_pinpoints (not an AnyRes LLaVA-NeXT)")
        self.view_tokens = self.n                      # side² patches per view (self.n becomes the span per forward)
        self.side = self.grid[0]
        self._layouts: tuple[AnyResLayout, ...] | None = None    # this forward's images, from image_sizes
        self._views: list[int] = []
        self._spans: list[int] = []
        self._row_tokens: Tensor | None = None
        self._is_image: Tensor | None = None

    # -- set-up -----------------------------------------------------------------------------------------------
    def _init_llm(self, layers, stage_keep, query) -> None:
        # the counts come per prefill (each image size its own span); at set-up the plan only checks the layers,
        # against a span as long as the largest image's
        cfg = self.llava.config
        size = cfg.vision_config.image_size
        crops = max((h * w for h, w in getattr(cfg, "image_grid_pinpoints", None) or ()), default=0) // size ** 2
        self.llm_tokens = max(self.llm_tokens, (1 + crops) * (self.n + self.grid[0] + 1))
        super()._init_llm(layers, stage_keep, query)

    def _init_pre(self, cfg, tower, features, signal_layer, prop_attn, embedding_options) -> None:
        m = self.pre_method
        self.crops = self._crops_option or ("per-crop" if m.stage == "vision-encoder" else getattr(m, "crops",
                                                                                                   "per-crop"))
        if self.crops == "joint":
            if m.stage == "vision-encoder":
                raise ValueError(f"{m.name} merges inside the tower, view by view: crops='joint' does not apply")
            if features not in (None, "projected") or signal_layer is not None:
                raise ValueError("crops='joint' runs on the packed span in the LLM's space (its newline tokens "
                                 "exist only there): features= and signal_layer= do not apply")
            if method_signals(m, tower):
                raise ValueError(f"{m.name} reads tower signals {list(method_signals(m, tower))}, which the newline "
                                 "tokens of the packed span do not have; use crops='per-crop'")
            if self.pre_budget.r is not None:
                raise ValueError(f"{m.name} takes a token budget (keep or ratio), not r")
            self.features, self._capture = "projected", None
            self.stage_keep = ()
            return
        if self._positions_option == "original":
            raise ValueError("crops='per-crop' lays the kept tokens out in the spatial span (the official "
                             "LLaVA-NeXT code's), where no token has an original position: positions='renumber' "
                             "only (crops='joint' keeps the packed span's positions)")
        super()._init_pre(cfg, tower, features, signal_layer, prop_attn, embedding_options)
        self.pre_positions = "renumber"

    def _install(self) -> None:
        super()._install()
        original = self.llava.get_image_features

        @functools.wraps(original)       # generate() reads its signature to pass pixel_values and image_sizes
        @model_call                      # the model's own reads below it are the model's
        def get_image_features(*args, **kwargs):
            self._note_image_sizes(kwargs.get("image_sizes", args[1] if len(args) > 1 else None))
            return original(*args, **kwargs)

        self.swap(self.llava, "get_image_features", get_image_features)

    def restore(self) -> None:
        try:
            super().restore()
        finally:
            self._layouts = self._is_image = None

    def _note_image_sizes(self, sizes) -> None:
        if sizes is None:
            raise ValueError("LLaVA-NeXT needs image_sizes with pixel_values (the processor returns them)")
        rows = sizes.tolist() if isinstance(sizes, Tensor) else [list(s) for s in sizes]   # the forward's one read
        self._layouts = tuple(layout_for(self.llava.config, size) for size in rows)

    # -- the image span of each row ---------------------------------------------------------------------------
    def _find_spans(self, is_image: Tensor) -> Tensor:
        self._is_image = is_image           # the span lengths come with image_sizes; checked at the LLM's input
        return is_image.to(torch.int8).argmax(1)

    def _span_lengths(self, rows: int) -> list[int]:
        return list(self._spans)

    def _on_lm(self, module, args, kwargs):
        if self._pending is not None:
            self._start_prefill(kwargs["inputs_embeds"].shape[0])
        return super()._on_lm(module, args, kwargs)

    def _start_prefill(self, rows: int) -> None:
        layouts, self._layouts = self._layouts, None
        if layouts is None:
            raise RuntimeError("no image sizes seen: pass pixel_values and image_sizes to the patched model (images "
                               "encoded outside the patch, mm_encoder_outputs, are not supported)")
        if len(layouts) != rows:
            raise ValueError(f"{len(layouts)} images for {rows} samples; LLaVA-NeXT adapters take one image per sample")
        self._views, self._spans = [lay.views for lay in layouts], [lay.length for lay in layouts]
        if batch_module.CHECK_VALUES:                                   # a debug check: one read
            starts = lp.span_slots(self._pending, max(self._spans)).clamp_max(self._is_image.shape[1] - 1)
            counts = self._is_image.sum(1)
            inside = self._is_image.gather(1, starts).cumsum(1)[torch.arange(rows), torch.tensor(self._spans) - 1]
            if counts.tolist() != self._spans or inside.tolist() != self._spans:
                raise ValueError(f"every sample must hold one image: its {self._spans} contiguous image tokens (id "
                                 f"{self.image_token_id}) for image sizes {[lay.image_size for lay in layouts]}; "
                                 f"got counts {counts.tolist()}")
        self.n = max(self._spans)
        if self.llm_method is None:
            return
        if self.pre_method is None:
            if len(set(self._spans)) > 1:
                raise NotImplementedError(f"in-LLM methods need one span length per batch (images of one size); "
                                          f"got spans {self._spans}: run those images in separate batches")
            n, self.grid = self.n, (1, self.n)
        else:
            out, projected, _, span_mask = self._pre
            if span_mask is not None:
                raise NotImplementedError(f"a chain needs the same count in every image; {self.pre_method.name} "
                                          f"sent different counts (views {self._views}, or adaptive counts)")
            n = projected.shape[1]
        self.llm_tokens = n
        self.stage_plan = self._plan(*self._llm_options)          # the method's counts for this span
        self.stage_keep = tuple(s.keep for s in self.stage_plan)

    # -- pre-LLM: compress at the projector -------------------------------------------------------------------
    def _on_projector(self, module, args, output):
        layouts = self._layouts
        if layouts is None:
            raise RuntimeError("the projector ran without image_sizes: call the model's forward or generate")
        if sum(lay.views for lay in layouts) != output.shape[0]:
            raise ValueError(f"{output.shape[0]} views for images of {[lay.views for lay in layouts]} views")
        if self.crops == "joint":
            self._pre = self._joint_span(output, layouts)
            return None
        if self._tower is not None:
            out = self._tower.token_batch()
            order = lp.sort_by_rep(out.positions)
            out, projected = out.take(order), lp.take(output, order)
            self._pre = self._spatial_span(out, projected, None, None, layouts, grid=None, method_order=False)
            pad = output.new_zeros(output.shape[0], self.view_tokens - output.shape[1], output.shape[2])
            return torch.cat([output, pad], 1)      # the model packs side² tokens per view; the span is cut later
        captured = self._capture.captured()
        hidden, m = captured.hidden, self.pre_method
        cls = hidden[:, 0] if hidden.shape[1] == self.view_tokens + 1 else None
        inputs = output if self.features == "projected" else args[0]
        out = m(TokenBatch.from_grid(inputs, (self.side, self.side), cls_token=cls, **captured.signals),
                self.pre_budget)
        projected = out.features if self.features == "projected" else module.forward(out.features)
        cls_sent = bool(getattr(m, "sends_cls", False)) and cls is not None
        cls_proj = module.forward(cls[:, None].to(args[0].dtype))[:, 0] if cls_sent else None
        cls_own = (cls_proj if self.features == "projected" else cls) if cls_sent else None
        grid = m.grid_tokens(self.pre_budget, self.view_tokens, cls is not None)
        self._pre = self._spatial_span(out, projected, cls_proj, cls_own, layouts, grid,
                                       method_order=getattr(m, "positions", "original") == "renumber")
        return None

    def _spatial_span(self, out: TokenBatch, projected: Tensor, cls_proj: Tensor | None, cls_own: Tensor | None,
                      layouts: tuple[AnyResLayout, ...], grid: int | None, method_order: bool):
        """Per-view outputs → each image's span in the official spatial layout: (kept, projected, rep, span_mask)."""
        dev, (v, k), s2 = projected.device, out.positions.shape, self.view_tokens
        tables = view_tables(dev, layouts)
        rep = out.positions.clamp_min(0)
        real = out.mask if out.mask is not None else torch.ones(v, k, dtype=torch.bool, device=dev)
        j = torch.arange(k, device=dev)[None]
        order = j if method_order else rep
        spatial = tables["spatial"].gather(1, rep)
        crop, crop_index = tables["crop"][:, None], tables["crop_index"][:, None]
        # sort keys, in groups: [base CLS, base tokens], [crop grid tokens by stitched raster], [crop CLS], [the crops'
        # other tokens, crop after crop]; padding last
        most = max(lay.views for lay in layouts)
        g1, g2 = 1 + s2, 1 + s2 + most * s2
        g3 = g2 + most
        on_grid = j < (k if grid is None else grid)
        key = torch.where(~crop, 1 + order, torch.where(on_grid, g1 + spatial - s2, g3 + crop_index * s2 + order))
        key = torch.where(real, key, torch.iinfo(torch.long).max)
        sent = cls_proj is not None
        first_patch = tables["spatial"][:, :1]
        entries = {"key": key, "proj": projected, "own": out.features, "spatial": spatial, "real": real,
                   "rep": tables["packed"].gather(1, rep).clamp_min(0), "sizes": out.sizes.float(),
                   "patch": rep, "tok": torch.ones_like(real)}
        if sent:                                     # one CLS per view, first in its view's entries
            ones = torch.ones(v, 1, dtype=torch.bool, device=dev)
            head = {"key": torch.where(crop, g2 + crop_index, 0), "proj": cls_proj[:, None].to(projected.dtype),
                    "own": cls_own[:, None].to(out.features.dtype), "spatial": first_patch, "real": ones,
                    "rep": torch.zeros_like(first_patch), "sizes": torch.ones(v, 1, device=dev),
                    "patch": torch.zeros_like(first_patch), "tok": ~ones}
            entries = {name: torch.cat([head[name], x], 1) for name, x in entries.items()}
        per_view = k + int(sent)
        flat = {name: x.flatten(0, 1) for name, x in entries.items()}
        index, exists = image_entries(dev, tuple(lay.views for lay in layouts), per_view)
        key = flat["key"][index].masked_fill(~exists, torch.iinfo(torch.long).max)
        order = key.argsort(dim=1, stable=True)
        index = index.gather(1, order)
        valid = flat["real"][index] & exists.gather(1, order)
        ragged = out.mask is not None or len({lay.views for lay in layouts}) > 1
        n0 = max(lay.views for lay in layouts) * s2
        # sources on the image's spatial span: a view's source columns moved to its patches' spatial slots
        src = out.source
        cols = tables["spatial"][:, None].expand(v, k, s2)
        src = src.new_zeros(v, k, n0).scatter(2, cols, src)
        if sent:
            src = torch.cat([src.new_zeros(v, 1, n0), src], 1)
        source = (src.flatten(0, 1)[index] != 0) & valid[..., None]
        kept = TokenBatch(features=flat["own"][index], grid=(1, n0), sizes=flat["sizes"][index] * valid,
                          source=source, positions=torch.where(valid, flat["spatial"][index], -1),
                          mask=valid if ragged else None)
        self.cls_sent = sent
        self._row_tokens = valid.sum(1)
        return kept, flat["proj"][index], flat["rep"][index], valid if ragged else None

    def _joint_span(self, output: Tensor, layouts: tuple[AnyResLayout, ...]):
        """The method on each image's packed span (LLM space, newlines included): (kept, projected, rep, span_mask)."""
        m, dev = self.pre_method, output.device
        table = torch.cat([output.flatten(0, 1), self.llava.image_newline[None].to(output.dtype)])
        groups: dict[int, list[int]] = {}
        for i, lay in enumerate(layouts):              # images of one packed length share one call
            groups.setdefault(lay.length, []).append(i)
        outs = []
        for length, rows in groups.items():
            x = table[packed_gather(dev, layouts, tuple(rows))]
            out = m(TokenBatch.from_grid(x, (1, length)), self.pre_budget)
            if getattr(m, "positions", "original") != "renumber":     # causal order agrees with the positions
                out = out.take(lp.sort_by_rep(out.positions.clamp_min(0), out.mask))
            outs.append((rows, out))
        width, n0 = max(o.num_tokens for _, o in outs), max(lay.length for lay in layouts)
        ragged = len(outs) > 1 and len({o.num_tokens for _, o in outs}) > 1 or any(o.mask is not None for _, o in outs)
        b = len(layouts)
        feats = output.new_zeros(b, width, output.shape[-1])
        positions = torch.full((b, width), -1, dtype=torch.long, device=dev)
        sizes = torch.zeros(b, width, device=dev)
        source = torch.zeros(b, width, n0, dtype=torch.bool, device=dev)
        valid = torch.zeros(b, width, dtype=torch.bool, device=dev)
        for rows, out in outs:                       # a host loop over the groups (one per image size)
            r, kk, length = to_device(torch.tensor(rows), dev), out.num_tokens, out.num_original
            real = out.mask if out.mask is not None else torch.ones_like(out.positions, dtype=torch.bool)
            feats[r, :kk] = out.features.to(feats.dtype)
            positions[r, :kk] = torch.where(real, out.positions, -1)
            sizes[r, :kk] = out.sizes.float() * real
            source[r, :kk, :length] = (out.source != 0) & real[..., None]
            valid[r, :kk] = real
        kept = TokenBatch(features=feats, grid=(1, n0), sizes=sizes, source=source, positions=positions,
                          mask=valid if ragged else None)
        self.cls_sent = False
        self._row_tokens = valid.sum(1)
        return kept, feats, positions.clamp_min(0), valid if ragged else None

    def _sent_batch(self, out: TokenBatch, rep: Tensor) -> TokenBatch:
        return replace(out, cls=None)                 # a sent CLS is already one of the span's tokens

    def record(self):
        rec = super().record()
        rec.extra.update(views=list(self._views), spans=list(self._spans), crops=self.crops)
        if self.pre_method is not None:
            if self.llm_method is None:
                rec.extra["visual_tokens"] = self._row_tokens
            if self.features == "projected":            # ranked after projecting every view's patches: per row
                rec.extra["projector_tokens"] = [v * self.view_tokens for v in self._views]
                rec.projector_tokens = max(rec.extra["projector_tokens"], default=None)
        return rec


__all__ = ["CROPS", "LlavaNextTokenCompression"]
