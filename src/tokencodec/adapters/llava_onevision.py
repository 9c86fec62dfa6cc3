"""Visual-token compression for HF ``LlavaOnevisionForConditionalGeneration`` (images and video), by hooks.

``with LlavaOnevisionTokenCompression(model, "holitom", Budget(ratio=0.15)) as tc: model.generate(...)``:
the LLaVA-1.5 adapter (:class:`~tokencodec.adapters.llava.LlavaTokenCompression`) with LLaVA-OneVision's
two layouts. Its language-model half is LLaVA's, unchanged (the span edit at the LLM's input, the decode
masks, :class:`~tokencodec.adapters.llm_stages.LLMStages` for in-LLM methods, chains); this file says
where OV's visual tokens are and what a method sees. Written against transformers 5.24.

**The tower.** SigLIP, no CLS: CLS signals are replaced by ``mean_attention`` where a method declares
the fallback. The features are ``hidden_states[vision_feature_layer]`` (−1 in the HF checkpoints, whose
26-layer tower is the official one with SigLIP's last layer already dropped: "the last kept layer");
signals come from that layer (or the method's ``signal_layer``).

**What a method sees: the tokens the LLM receives.** OV changes its features *after* its projector
(video frames are pooled, image crops unpadded and down-scaled), so the pre-projector grid is not the
LLM's: every pre-LLM method acts on the projected tokens of the layout below (``features="projected"``;
"vision" is refused), with its per-token signals (attention, keys) put through the same pooling or
packing as the features. Selection gives the same either way; merges happen in the LLM's embedding
space (the HoliTom authors' VisionZip port for OV video does the same: ``get_2dPool`` of the projected
frames, of the attention and of the keys).

- **Video** (``pixel_values_videos`` [B, T, 3, H, W]): each frame's 27×27 projected patches are pooled
  2×2 bilinearly to 14×14 = 196 tokens (``apply_pooling``), T·196 tokens per video, then **one newline
  token** after the video. Methods act on the T·196 frame tokens (a ``TokenBatch`` with ``frames=T``);
  the newline stays as it is, after the span (it is not a visual token of the budget or of the counts).
  Video methods (holitom, fastvid, temporal, uniform-frames) take the whole clip; a spatial method runs on
  each frame alone at K/T (``spatial="per-frame"``, default, :func:`~tokencodec.tokens.frames.compress_per_frame`)
  or on all T·196 at once (``spatial="joint"``). HoliTom reads ``mean_attention`` of the feature layer,
  pooled like the features (its card). FastVID reads ``pooler_attention`` and context ``frame_features``
  from SigLIP's attention-pooling head (``post_layernorm`` then ``head`` on the feature layer's output;
  the head's attention over the patches, head-averaged, pooled like the features; its pooled output per
  frame). OV's checkpoint has no head (``vision_use_head=False``; FastVID's official code loads it from
  ``google/siglip-so400m-patch14-384``): with a tower that has one (``vision_use_head=True``, or a
  ``SiglipMultiheadAttentionPoolingHead`` attached as the tower's ``head``) the adapter supplies both;
  without, only ``fastvid(saliency="cls", frame_feature="mean")`` runs and the default is refused with a
  message naming those options.
- **Images** (``pixel_values`` [B, P, 3, H, W], ``image_sizes``): AnyRes-max. The model sends the base view
  (27×27, no newline), then the crops stitched into one grid, unpadded to the image's aspect ratio and,
  above ``anyres_max_9``'s area, bilinearly down-scaled to h′×w′, each of its rows closed by a newline
  token. A spatial method runs **per view**: on the base view's grid and on the h′×w′ high-resolution grid
  alone (each its own ``TokenBatch``; a ratio on each, a count K split in proportion to their tokens).
  Every newline is kept (FasterVLM's official LLaVA-NeXT rule: "newline tokens are kept") and is counted
  in the tokens sent, not in the budget. No method's official code covers OV images (VisPruner's OV path
  is not wired; HoliTom and FastVID are video only); the per-view rule is the NeXT one (VisionZip per crop,
  CDPruner / VisPruner K per view) on OV's two grids, whose crops are no longer separate after unpadding.
  Order: ``positions="original"`` sorts the span by each token's slot (newlines at their row ends); with
  ``"renumber"`` the base view keeps the method's order, then the high-resolution tokens row by row (the
  method's order within a row), each row closed by its newline.

**In-LLM methods** rank the span as one set: a video's T·196 frame tokens (grid 14×14, ``frames=T``; the
newline after it is text, as ``holitom-llm``'s card says), an image's whole span (base, high-resolution
tokens and newlines: DivPrune's official LLaVA-1.6 code ranks the newlines too, one pool). Their counts
are planned per prefill from the span that enters the LLM (a chain's: the count the pre-LLM step sent).

**Per forward**: the record of the LLaVA adapter (``tokens_per_layer``: visual tokens each LLM layer saw,
an image's kept newlines included; ``kept``, ``sequence_index``, ``stages``) plus ``extra["views"]``
(tower images per sample: P AnyRes views or T frames, which multiply the tower's cost) and
``projector_tokens`` (views × 729: the projector runs before pooling / packing).

**Host syncs**: images, one read of ``image_sizes`` (and ``batch_num_images``) per encoding, which decide the
packed layout (the model reads them itself too); video: none (the layout follows from shapes).

Supported: one image or one video per sample (not both in one call), the same layout in every sample (images
of one size; HFMLLM groups a batch by image size), ``input_ids`` given, images encoded under the patch
(``generate()`` does). Refused with a message: several images per sample, in-tower methods (ToMe, FlowCut:
OV packs and pools whole grids after the tower), a list of feature layers.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tokencodec.adapters import llm_pruning as lp
from tokencodec.adapters.llava import LlavaTokenCompression
from tokencodec.adapters.llm_stages import LLM_SIGNALS
from tokencodec.adapters.vision_tower import TOWER_SIGNALS, SignalCapture, resolve_tower
from tokencodec.metrics.host_sync import model_call
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError
from tokencodec.tokens.frames import compress_per_frame
from tokencodec.tokens.signals import Signal, resolve_request

SUPPORTED = ("LlavaOnevisionForConditionalGeneration", "LlavaOnevisionModel")
HEAD_SIGNALS = frozenset({Signal.POOLER_ATTENTION, Signal.FRAME_FEATURES})   # from SigLIP's pooling head
NOMINAL_TOKENS = 729      # in-LLM plans are made per prefill for the real span; this only checks the layers


# -- OV's image layout (AnyRes-max), from the model's own helpers -----------------------------------

@dataclass(frozen=True)
class AnyRes:
    """Where one image's views go in OV's packed layout (``LlavaOnevisionModel.pack_image_features``)."""

    side: int                           # patches per side of a view (27 on OV)
    crops: tuple[int, int]              # (rows, cols) of the crops stitched into one grid
    window: tuple[int, int, int, int]   # (top, left, height, width) kept by unpadding, in stitched patches
    grid: tuple[int, int]               # (h′, w′): the high-resolution grid after the down-scaling

    @property
    def views(self) -> int:
        return 1 + self.crops[0] * self.crops[1]

    @property
    def resized(self) -> bool:
        return self.grid != self.window[2:]

    @property
    def span(self) -> int:
        """Image tokens in the LLM's input: the base view, then h′ rows of w′ tokens and a newline."""
        return self.side ** 2 + self.grid[0] * (self.grid[1] + 1)


def anyres_layout(config, image_size: Sequence[int], aspect: str | None = None) -> AnyRes:
    """The packed layout of one image of ``image_size`` (height, width) under ``config``
    (a ``LlavaOnevisionConfig``); host arithmetic only, by the model's own rules."""
    from transformers.models.llava_onevision import modeling_llava_onevision as ov

    vc = config.vision_config
    side = vc.image_size // vc.patch_size
    size = [int(x) for x in image_size]
    rows, cols = ov.get_anyres_image_grid_shape(size, config.image_grid_pinpoints, vc.image_size)
    # the model's unpadding rule applied to an index grid gives the window it keeps
    index = torch.arange(rows * side * cols * side).view(1, rows * side, cols * side)
    kept = ov.unpad_image(index, size)
    top, left = divmod(int(kept[0, 0, 0]), cols * side)
    height, width = kept.shape[1:]
    # anyres_max_N: above N views' area, bilinear down-scaling by the ratio (pack_image_features)
    most = int((aspect or config.vision_aspect_ratio).removeprefix("anyres_max_"))
    ratio = math.sqrt(height * width / (most * side ** 2))
    grid = (int(height // ratio), int(width // ratio)) if ratio > 1.1 else (height, width)
    return AnyRes(side, (rows, cols), (top, left, height, width), grid)


def pack_views(x: Tensor, layout: AnyRes) -> Tensor:
    """Per-view tensors [B, P, side², C] → [B, side² + h′·w′, C] in OV's packed order, newlines left out.

    The same steps as ``pack_image_features`` (stitch the crops, unpad, bilinear down-scaling), batched for
    images of one layout and for any channel count (signals); written out because the model's method takes
    a list and copies the lengths to the device (a blocking copy). ``tests`` check it against the model.
    """
    b, p, n, c = x.shape
    rows, cols = layout.crops
    s = layout.side
    top, left, height, width = layout.window
    crops = x[:, 1:].reshape(b, rows, cols, s, s, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, rows * s, cols * s)
    crops = crops[:, :, top:top + height, left:left + width]
    if layout.resized:
        crops = F.interpolate(crops, list(layout.grid), mode="bilinear")
    return torch.cat([x[:, 0], crops.flatten(2).transpose(1, 2)], 1)


def view_budgets(budget: Budget, sizes: Sequence[int]) -> list[Budget]:
    """The budget of each view: a ratio on each; a count split in proportion to the views' tokens."""
    if budget.keep is None:
        return [budget] * len(sizes)
    total = sum(sizes)
    if not len(sizes) <= budget.keep <= total:
        raise BudgetError(f"keep={budget.keep} is outside the allowed range [{len(sizes)}, {total}] for an image "
                          f"of {len(sizes)} views ({' + '.join(map(str, sizes))} tokens; at least one per view)")
    keeps = [min(max(1, round(budget.keep * n / total)), n) for n in sizes[:-1]]
    last = budget.keep - sum(keeps)
    if not 1 <= last <= sizes[-1]:
        raise BudgetError(f"keep={budget.keep} cannot be split over views of {list(sizes)} tokens")
    return [Budget(keep=k) for k in (*keeps, last)]


@dataclass(frozen=True)
class Layout:
    """What one encoding sends the LLM (shapes only; images: their packed layout)."""

    modality: str                      # "image" | "video"
    samples: int                       # images or videos encoded (one per prompt)
    views: int                         # tower images per sample: AnyRes views or frames
    span: int                          # the modality's tokens per sample in input_ids
    n: int                             # the tokens methods act on (video: the frames', without the newline)
    grid: tuple[int, int]              # in-LLM methods' grid: (14, 14) per frame, (1, span) for an image
    frames: int = 1
    anyres: AnyRes | None = None


def _as_model_call(fn):
    @model_call                        # the model's own reads inside ``fn`` are not this adapter's (HostSyncs)
    def call(*args, **kwargs):
        return fn(*args, **kwargs)
    return call


class LlavaOnevisionTokenCompression(LlavaTokenCompression):
    """Compress LLaVA-OneVision's image or video tokens with ``method`` at ``budget`` (or a chain of steps).

    Options as on LLaVA-1.5: ``layers``, ``positions``, ``query``, ``stage_keep``, ``signal_layer``, ``spatial``
    (video: "per-frame" | "joint"); ``features`` may only be "projected" (see the module docstring). The
    frames of a video come from ``pixel_values_videos``; there is no ``frames=`` option.
    """

    method_stages = ("pre-llm", "llm")
    supplies = {"pre-llm": TOWER_SIGNALS | HEAD_SIGNALS, "llm": LLM_SIGNALS}
    video, chains = True, True

    def __init__(self, model: nn.Module, method, budget: Budget | int | float | None = None, *,
                 layers: int | Sequence[int] | None = None, positions: str | None = None,
                 query: str | None = None, stage_keep: Sequence[int] | None = None,
                 features: str | None = None, signal_layer: int | None = None, spatial: str = "per-frame"):
        name = type(model).__name__
        if name not in SUPPORTED:
            raise TypeError(f"unsupported model {name}; LlavaOnevisionTokenCompression supports "
                            f"{', '.join(SUPPORTED)}")
        super(LlavaTokenCompression, self).__init__(model)    # the patch itself; LLaVA-1.5's set-up is not OV's
        self.llava = model.model if name == SUPPORTED[0] else model
        self.lm = self.llava.language_model
        self.layers = self._check_lm(self.lm)
        self._set_steps(method, budget, positions)
        if self.stage.startswith("vision-encoder"):
            raise NotImplementedError(f"{self.method.name if self.pre_method is None else self.pre_method.name} "
                                      "acts inside the vision tower; LLaVA-OneVision packs (images) and pools "
                                      "(video) whole 27×27 grids after it, so only 'pre-llm' and 'llm' methods run")
        if spatial not in ("per-frame", "joint"):
            raise ValueError(f"spatial must be 'per-frame' or 'joint', not {spatial!r}")
        if features not in (None, "projected"):
            raise ValueError(f"features={features!r}: on LLaVA-OneVision methods act on the projected tokens the "
                             "LLM receives (pooled frames, packed views); only 'projected'")
        cfg = self.llava.config
        self.tower = resolve_tower(self.llava)
        if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_layer == 0:
            raise ValueError(f"vision_feature_layer={cfg.vision_feature_layer!r}: one encoder layer is supported")
        if cfg.vision_feature_select_strategy != "full" or self.tower.class_token:
            raise ValueError("LLaVA-OneVision's layout needs a SigLIP tower read in full "
                             f"(vision_feature_select_strategy='full'); got {cfg.vision_feature_select_strategy!r}")
        self.side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        self.features, self.spatial, self.frames = "projected", spatial, 1
        self.grid, self.n = (1, NOMINAL_TOKENS), NOMINAL_TOKENS        # set per forward from its layout
        self._clear_state()
        self._layout: Layout | None = None        # set by an encoding, used by the next prefill
        self._sent: Layout | None = None          # the last prefill's
        self._tokens: Tensor | None = None        # [B, S] the prefill's image or video tokens
        self._head: tuple[Signal, ...] = ()
        self.llm_tokens = NOMINAL_TOKENS
        if self.pre_method is not None:
            self.pre_positions = positions or getattr(self.pre_method, "positions", "original")
            if self.pre_budget.r is not None:
                raise BudgetError(f"{self.pre_method.name} takes a token budget (keep or ratio), not ToMe's r")
            self._init_signals(cfg, signal_layer)
        if self.llm_method is not None:
            self.positions = positions or getattr(self.llm_method, "positions", "original")
            self._options = (layers, stage_keep)
            self._init_llm(layers, stage_keep, query)
        else:
            self.positions = self.pre_positions

    def _init_signals(self, cfg, signal_layer: int | None) -> None:
        m = self.pre_method
        needs = resolve_request(m, TOWER_SIGNALS | HEAD_SIGNALS, False, "the LLaVA-OneVision adapter")
        self._head = tuple(s for s in needs if s in HEAD_SIGNALS)
        if self._head and getattr(self.tower.model, "head", None) is None:
            raise ValueError(f"{m.name} reads {list(self._head)} from SigLIP's attention-pooling head, which this "
                             "tower has not (LLaVA-OneVision's checkpoint drops it: vision_use_head=False; FastVID's "
                             "official code loads it from google/siglip-so400m-patch14-384). Attach one as the "
                             "tower's `head`, or run fastvid(saliency='cls', frame_feature='mean') (mean attention "
                             "received, each frame's mean token)")
        v = cfg.vision_feature_layer
        layer = v if v < 0 else v - 1                      # hidden_states[v] is layer v−1's output
        sl = signal_layer if signal_layer is not None else getattr(m, "signal_layer", None)
        tower_needs = tuple(s.value for s in needs if s in TOWER_SIGNALS)
        self._capture = SignalCapture(self.llava, layer=layer, signals=tower_needs, signal_layer=sl)

    def _install(self) -> None:
        self.add_pre_hook(self.llava, self._on_llava, with_kwargs=True)
        self.add_pre_hook(self.lm, self._on_lm, with_kwargs=True)
        self.add_hook(self.lm, self._after_lm)
        # the model's forward and generate()'s pre-encoding both go through these
        for modality in ("image", "video"):
            name = f"get_{modality}_features"
            self.swap(self.llava, name, self._encoder(getattr(self.llava, name), modality))
        if self._capture is not None:
            self._capture.__enter__()
        if self.llm_method is not None:
            self._install_layer_hooks()

    def restore(self) -> None:
        try:
            super().restore()
        finally:
            self._layout = self._tokens = None

    # -- encodings: the layout, and the pre-LLM method on what the LLM will receive ----------------------
    def _encoder(self, original, modality: str):
        call = _as_model_call(original)
        signature = inspect.signature(original)

        @functools.wraps(original)     # generate() reads its signature to pick the encoder's kwargs
        def encode(*args, **kwargs):
            given = signature.bind(*args, **kwargs).arguments
            layout = self._image_layout(given) if modality == "image" else self._video_layout(given)
            self._layout = self._pre = None
            out = call(*args, **kwargs)
            self._layout = layout
            if self.pre_method is not None:
                self._compress(out, layout)
            return out

        return encode

    def _image_layout(self, given: dict) -> Layout:
        cfg = self.llava.config
        sizes, per_sample = given["image_sizes"], given.get("batch_num_images")
        if isinstance(given.get("vision_feature_layer"), list):
            raise NotImplementedError("a list of vision feature layers is not supported")
        b = len(sizes)
        tensors = [t.flatten() for t in (sizes, per_sample) if isinstance(t, Tensor)]
        read = torch.cat([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else []  # the one read
        sizes = read[:2 * b] if isinstance(sizes, Tensor) else [int(x) for pair in sizes for x in pair]
        per_sample = read[-b:] if isinstance(per_sample, Tensor) else list(per_sample or [])
        if any(n != 1 for n in per_sample):
            raise NotImplementedError(f"one image per sample (batch_num_images {per_sample}); several images "
                                      "in one prompt are not supported")
        layouts = {anyres_layout(cfg, sizes[2 * i:2 * i + 2], given.get("vision_aspect_ratio")) for i in range(b)}
        if len(layouts) != 1:
            raise ValueError(f"images of sizes {[tuple(sizes[2 * i:2 * i + 2]) for i in range(b)]} give different "
                             "AnyRes layouts; one layout per batch: run them in batches of one layout (HFMLLM "
                             "groups a batch by image size)")
        anyres = layouts.pop()
        return Layout("image", b, anyres.views, anyres.span, anyres.span, (1, anyres.span), anyres=anyres)

    def _video_layout(self, given: dict) -> Layout:
        b, t = given["pixel_values_videos"].shape[:2]
        p = math.ceil(self.side / 2)                       # apply_pooling: 2×2 bilinear, ceil
        return Layout("video", b, t, t * p * p + 1, t * p * p, (p, p), frames=t)

    def _compress(self, out, layout: Layout) -> None:
        captured = self._capture.captured()
        if layout.modality == "video":
            batch = self._video_batch(out.pooler_output, captured, layout)
            m, t = self.pre_method, layout.frames
            if t > 1 and self.spatial == "per-frame" and not m.video:
                sent = compress_per_frame(m, batch, self.pre_budget)
            else:
                sent = m(batch, self.pre_budget)
            key = sent.positions if self.pre_positions == "original" else torch.zeros_like(sent.positions)
            self._send(sent, key, layout.n)
        elif self.pre_method.video:
            raise NotImplementedError(f"{self.pre_method.name} is a video method; this prompt holds an image")
        else:
            self._image_views(torch.stack(list(out.pooler_output)), captured, layout)

    def _video_batch(self, pooled: Tensor, captured, layout: Layout) -> TokenBatch:
        b, t = layout.samples, layout.frames

        def pool(x: Tensor) -> Tensor:            # [B·T, side², …] → [B, T·14², …], as the features are pooled
            p = self.llava.apply_pooling(x.reshape(x.shape[0], x.shape[1], -1))
            return p.reshape(b, t * p.shape[1], *x.shape[2:])

        signals = {k: pool(v) for k, v in captured.signals.items()}
        context = {}
        if self._head:
            attention, frame = self._pooling_head(captured.hidden)
            if Signal.POOLER_ATTENTION in self._head:
                signals[Signal.POOLER_ATTENTION.value] = pool(attention)
            if Signal.FRAME_FEATURES in self._head:
                context[Signal.FRAME_FEATURES.value] = frame.reshape(b, t, -1)
        return TokenBatch.from_grid(pooled[:, :layout.n], layout.grid, frames=t, context=context, **signals)

    def _pooling_head(self, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """SigLIP's attention-pooling head on the feature layer's output: (its attention over the patches,
        head-averaged [B·T, side²]; its pooled output [B·T, D]) — FastVID's saliency and frame feature."""
        tower = self.tower.model
        x = tower.post_layernorm(hidden)
        head = tower.head
        probe = head.probe.expand(x.shape[0], -1, -1)
        _, weights = head.attention(probe, x, x, need_weights=True, average_attn_weights=True)
        return weights[:, 0], head(x)

    def _image_views(self, packed: Tensor, captured, layout: Layout) -> None:
        """The method on the base view and on the high-resolution grid, joined into the image's span."""
        g = layout.anyres
        b, s2, (h, w) = layout.samples, g.side ** 2, g.grid
        hires = packed[:, s2:].reshape(b, h, w + 1, -1)[:, :, :w].reshape(b, h * w, -1)
        signals = {}
        for k, v in captured.signals.items():
            per_view = v.reshape(b, g.views, s2, -1)
            signals[k] = pack_views(per_view, g).reshape(b, s2 + h * w, *v.shape[2:])
        views = [TokenBatch.from_grid(packed[:, :s2], (g.side, g.side), **{k: v[:, :s2] for k, v in signals.items()}),
                 TokenBatch.from_grid(hires, g.grid, **{k: v[:, s2:] for k, v in signals.items()})]
        budgets = view_budgets(self.pre_budget, (s2, h * w))
        outs = [self.pre_method(view, budget) for view, budget in zip(views, budgets, strict=True)]
        batch, key = self._join_views(outs, g, packed)
        self._send(batch, key, layout.n)

    def _join_views(self, outs: list[TokenBatch], g: AnyRes, packed: Tensor) -> tuple[TokenBatch, Tensor]:
        """One TokenBatch over the image's span (positions = span slots) and its order key: the views' kept
        tokens, then the newlines (every one kept)."""
        s2, (h, w) = g.side ** 2, g.grid
        n, b, dev = g.span, packed.shape[0], packed.device
        q = torch.arange(h * w, device=dev)
        slots = (torch.arange(s2, device=dev), s2 + (q // w) * (w + 1) + q % w)   # view raster → span slot
        newline = s2 + torch.arange(h, device=dev) * (w + 1) + w
        feats, pos, sizes, source, masks = [], [], [], [], []
        for out, slot in zip(outs, slots, strict=True):
            p = out.positions
            pos.append(torch.where(p >= 0, slot[p.clamp_min(0)], -1))
            src = out.source.new_zeros(b, out.num_tokens, n)
            source.append(src.index_copy(2, slot, out.source))
            feats.append(out.features.to(packed.dtype))
            sizes.append(out.sizes)
            masks.append(out.mask)
        pos.append(newline.expand(b, h))
        feats.append(packed[:, newline])
        sizes.append(torch.ones(b, h, dtype=sizes[0].dtype, device=dev))
        source.append(_one_hot_rows(newline, n, b, source[0].dtype))
        mask = None
        if any(m is not None for m in masks):
            mask = torch.cat([m if m is not None else torch.ones(b, o.num_tokens, dtype=torch.bool, device=dev)
                              for m, o in zip(masks, outs, strict=True)]
                             + [torch.ones(b, h, dtype=torch.bool, device=dev)], 1)
        positions = torch.cat(pos, 1)
        batch = TokenBatch(features=torch.cat(feats, 1), grid=(1, n), sizes=torch.cat(sizes, 1),
                           source=torch.cat(source, 1), positions=positions, mask=mask)
        if self.pre_positions == "original":
            return batch, positions
        # renumber: the base view in the method's order, then each row of the grid (the method's order
        # within it) closed by its newline
        j = torch.arange(positions.shape[1], device=dev).expand(b, -1)
        last = j.shape[1]                                                   # the newline's place in its row
        order_in_row = torch.cat([j[:, :-h], torch.full_like(j[:, -h:], last)], 1)
        row = (positions - s2).clamp_min(0) // (w + 1)
        key = torch.where(positions >= s2, (row + 1) * (last + 1) + order_in_row, j)
        return batch, key

    def _send(self, out: TokenBatch, key: Tensor, n: int) -> None:
        """What the LLM's input gets in place of the span: the tokens in ``key`` order (padding last), each at
        its representative's slot (LLaVA's ``_edit_input`` reads it)."""
        order = lp.sort_by_rep(key, out.mask)
        out = out.take(order)
        rep = out.positions
        if out.mask is not None:
            rep = torch.where(out.mask, rep, n - 1)         # padded slots sit at the span's end, masked
        self.cls_sent = False                               # SigLIP: no CLS
        self._pre = (out, out.features, rep.clamp(0, n - 1), out.mask)

    # -- the model's forward: which tokens are the span ------------------------------------------------
    def _on_llava(self, module, args, kwargs):
        encoded = kwargs.get("mm_encoder_outputs") or {}
        image = kwargs.get("pixel_values") is not None or encoded.get("image") is not None
        video = kwargs.get("pixel_values_videos") is not None or encoded.get("video") is not None
        self._tokens = None
        if not (image or video):                            # a decode step (or text only)
            return None
        if image and video:
            raise NotImplementedError("one image or one video per sample: not both in one call")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise NotImplementedError("pass input_ids with the images or video: the span is found from them")
        if kwargs.get("pixel_values" if image else "pixel_values_videos") is not None:
            self._layout = self._pre = None                 # this forward encodes them
        elif self._layout is None or self._layout.modality != ("image" if image else "video"):
            raise NotImplementedError("the images were encoded outside this patch (mm_encoder_outputs): encode "
                                      "them under it (generate() does)")
        cfg = self.llava.config
        self._tokens = ids == (cfg.image_token_id if image else cfg.video_token_id)
        return None

    def _on_lm(self, module, args, kwargs):
        if self._tokens is not None:                        # a prefill: its layout is known now
            tokens, self._tokens = self._tokens, None
            layout, self._layout = self._layout, None
            if layout is None:
                raise RuntimeError("no image or video encoding reached the model")
            if layout.samples != tokens.shape[0]:
                raise ValueError(f"{layout.samples} {layout.modality}s for {tokens.shape[0]} prompts; one per prompt")
            start = lp.image_spans(tokens, layout.span)
            if start is None:
                raise ValueError(f"every sample must hold one {layout.modality}: {layout.span} contiguous "
                                 f"{layout.modality} tokens; got counts {tokens.sum(1).tolist()}")
            self._pending, self._sent = start, layout
            self.n, self.grid, self.frames = layout.n, layout.grid, layout.frames
            if self.pre_method is not None and self._pre is not None:
                sent = self._pre[1].shape[1]
                self.stage_keep = (sent - (layout.anyres.grid[0] if layout.anyres else 0),)   # newlines apart
                self.llm_tokens = sent
            else:
                self.llm_tokens = layout.n
            if self.llm_method is not None:                 # the method's counts for this span
                self.stage_plan = self._plan(*self._options)
                self.stage_keep = tuple(s.keep for s in self.stage_plan)
        return super()._on_lm(module, args, kwargs)

    def record(self):
        rec = super().record()
        if self._sent is not None:                          # the tower ran on every view / frame, then the projector
            rec.projector_tokens = self._sent.views * self.side ** 2
            rec.extra.update(views=self._sent.views, modality=self._sent.modality)
        return rec


def _one_hot_rows(slots: Tensor, n: int, b: int, dtype: torch.dtype) -> Tensor:
    """[B, K, n]: row i marks slot ``slots[i]`` (each newline stands for itself)."""
    return torch.zeros(len(slots), n, dtype=torch.bool, device=slots.device).scatter(
        1, slots[:, None], True).to(dtype).expand(b, -1, -1)


__all__ = ["HEAD_SIGNALS", "AnyRes", "Layout", "LlavaOnevisionTokenCompression", "anyres_layout", "pack_views",
           "view_budgets"]
