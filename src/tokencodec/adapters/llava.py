"""Visual-token compression for HF ``LlavaForConditionalGeneration`` (LLaVA-1.5 layout), as a context manager.

``with LlavaTokenCompression(model, "fastv", Budget(keep=64)) as tc: model.generate(...)`` installs
forward hooks on entry and removes them on exit (:class:`~tokencodec.adapters.hooks.ModelPatch`); no
model file is copied. Any registered method works, by name or instance (the registry's error lists
the names). Written against transformers 5.23–5.24 (:mod:`~tokencodec.adapters.hf_compat`): query
offsets and mask sizes come from layer 0's cache length.

**Chains.** ``method`` may be a list of (method, budget) steps, one before the LLM and one inside
it, as kvpress's ``ComposedPress`` chains presses: ``[("visionzip", 192), ("fastv", 64)]`` (a
pre-LLM method, then an in-LLM one) or ``[("tome", Budget(r=4)), ("fastv", 64)]`` (ToMe in the
vision tower, then an in-LLM method). Each step keeps its own budget; the in-LLM step counts from
the tokens the first step sent. ``tome`` alone works too: the tower merges, the LLM gets the
merged tokens.

**Pre-LLM methods** (stage "pre-llm": random, pool-avg, pool-resize, divprune, visionzip, prumerge,
prumerge+, token-norm). Signals come from the vision tower through
:class:`~tokencodec.adapters.vision_tower.SignalCapture` (q/k hooks, SDPA-safe) at LLaVA's
``vision_feature_layer`` (−2), or at the layer the method declares (``signal_layer``: PruMerge(+) −1,
the last layer, official). Features: the method's ``features`` declaration: DivPrune ranks the
**projected** embeddings (its card, ``LAYER_INDEX=0``); every other method acts on the **pre-projector**
features (layer −2 patches) and its output is then projected, so merges (VisionZip, PruMerge, pooling)
happen in vision space as in the official code (selection-only methods give the same either way: the
projector is per token). ``features="vision"|"projected"`` and ``signal_layer=`` override. LLaVA still
builds its full ``inputs_embeds`` (the processor's image tokens in ``input_ids`` stay untouched; ToMe's
fewer tokens are padded for that step); a pre-hook on the language model then replaces each sample's
image span by the K compressed tokens and drops the rest from ``inputs_embeds``, ``attention_mask`` and
``position_ids``. A method that declares ``sends_cls`` (VisionZip with ``count_cls=True``, its default:
the official LLaVA-1.5 code) gets the layer −2 CLS projected by the projector as the **first** token of
the span, counted in K (``cls_sent``; ``kept`` then holds the K−1 patch tokens, the CLS in
``kept.cls``); on encoders without CLS nothing is sent.

**Text-guided pre-LLM methods** (CDPruner: signal ``image_embedding``, context ``text_embedding``) get
both from :class:`~tokencodec.adapters.relevance.RelevanceEmbeddings`, built from the adapter's options:
``visual_projection=`` (CLIP's; HF LLaVA checkpoints lack it) with ``text_embedding=`` or
``text_encoder=`` / ``text_tokenizer=`` / ``question=`` (CLIP's text tower on the raw question), or the
deviation ``embedding_space="llm-input"`` with ``question_ids=`` (the projected tokens against the LLM's
input embeddings of the question; for MLLMs without a CLIP text tower, never the default). Images only.

**In-tower methods** (stage "vision-encoder"), each run by the tower patch whose signals it declares:
ToMe (``Budget(r=...)`` or a keep budget turned into r per layer) by
:class:`~tokencodec.adapters.vision_tower.ToMeVisionPatch`, which merges r tokens in each tower layer up to
``vision_feature_layer`` (later layers do not merge), with proportional attention (``prop_attn``); the
merged tokens (sizes, sources, each at its B token's patch) are projected and sent in patch order with
their original positions. FlowCut (a keep budget) by
:class:`~tokencodec.adapters.encoder_pruning.EncoderPruningPatch`, which prunes in the layers before
``vision_feature_layer`` so that layer already runs on [CLS, K]; the K patches are projected and sent in
raster order (positions as the method declares: renumbered for FlowCut).

**In-LLM methods** (stage "llm": fastv, sparsevlm, pyramiddrop, dart):
:class:`~tokencodec.adapters.llm_stages.LLMStages`, shared with the Qwen2-VL adapter, interprets each
method's declarations (stages, signals); this file only finds the image span and feeds it the LLM's input.

**Token order and positions.** Each method declares its official layout (``positions``), which the
adapter's ``positions=`` overrides (for both steps of a chain). ``"renumber"`` (VisionZip, PruMerge(+),
DivPrune, SparseVLM, PyramidDrop: the official LLaVA code gives the shortened sequence contiguous
ids) keeps the **method's output order** in the span (VisionZip [CLS, dominant, contextual]; PruMerge
by attention, samples, extra; SparseVLM kept tokens then the recycled block) and numbers the
sequence 0..L'−1. ``"original"`` (FastV, DART, random, pooling, token-norm, ToMe: no official LLaVA
code renumbers them) sorts the span by each token's representative patch (merged tokens stand at
their representative's slot, a sent CLS at the first patch's), so the causal order agrees with the
original position ids it keeps (RoPE gaps). Masks are gathered, never rebuilt.

**Budget mapping.** Single-stage methods (all pre-LLM, FastV, DART) get the budget as is (VisionZip's
K counts the CLS it sends). PyramidDrop: λ = K/N with K = ``budget.tokens(N)``, stage s keeps
⌊N·λ^s⌋ (``Budget(ratio=0.5)`` gives the official 0.5/0.25/0.125). SparseVLM: the v1.5 list nearest
to ρ·576 (:func:`sparsevlm_keeps`); with ``count_recycled=False`` (default, official) the recycled
clusters come on top of each stage's count. ``stage_keep`` gives explicit per-stage counts instead.
``Budget(ratio=1.0)`` is the identity for every method but VisionZip and PruMerge(+), whose official code
merges even at a full budget (their cards in docs/token-methods.md).

**generate() and the KV cache.** Pruning happens at prefill only (the forward whose ``input_ids``
hold image tokens). Layers before the first stage cache S entries, later ones fewer. In each decode
step the model builds the mask for layer 0's cache length; the adapter slices its key columns to
the kept slots plus the new tokens for the pruned layers (and, pre-LLM, the 2-D ``attention_mask``
at the language model's input). New tokens continue the **original** numbering (the position ids
``generate`` passes, or layer 0's length plus the dropped count when none are passed); with
``positions="renumber"`` they are shifted down by the tokens dropped, layer by layer.

**Per forward:** ``tokens_per_layer`` (image-token slots each LLM layer sees, for
:mod:`tokencodec.metrics.cost`), ``kept`` (final TokenBatch: positions, sizes, source), ``stages``
(one :class:`StageRecord` per in-LLM stage, with the signals), ``stage_keep`` (budget used per
stage), ``sequence_index`` ([B, S'] the caller's slot each output slot comes from: logits are S' long).

**Video** (``frames=T``): each sample's T frames go to the tower as T images, their T·N tokens one
contiguous span (LLaVA's multi-image prompt). A method that declares ``video`` (temporal,
uniform-frames) gets the whole video as one TokenBatch with ``frames=T``; any other pre-LLM method
runs on each frame alone at K/T tokens (``spatial="per-frame"``, default:
:func:`~tokencodec.tokens.frames.compress_per_frame`, the usual per-frame baseline) or on all T·N
tokens at once (``spatial="joint"``: DivPrune then also drops tokens repeated across frames).
Frames have no CLS between them: a method's ``sends_cls`` sends nothing on video. In-LLM methods
see the T·N span as one set. ToMe is not supported on video.

Supported: one image (or one T-frame video) per sample, its image tokens contiguous; a Llama-style language model
(``layers[i].self_attn.q_proj/k_proj/head_dim``, ``input_layernorm``, ``rotary_emb``, ``norm``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from tokencodec.adapters import llm_pruning as lp
from tokencodec.adapters.base import NO, Adapter
from tokencodec.adapters.encoder_pruning import LAYER_SIGNALS, EncoderPruningPatch
from tokencodec.adapters.hf_compat import cache_from
from tokencodec.adapters.llm_stages import LLM_SIGNALS, LLMStages, Run, Stage, StageRecord
from tokencodec.adapters.relevance import EMBEDDING_SIGNALS, RelevanceEmbeddings, reads_embeddings
from tokencodec.adapters.vision_tower import (
    TOWER_SIGNALS,
    SignalCapture,
    ToMeVisionPatch,
    resolve_tower,
)
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError, TokenMethod, get_method
from tokencodec.tokens.compress.pyramiddrop import pyramiddrop_keeps  # noqa: F401  (importable from here too)
from tokencodec.tokens.compress.sparsevlm import sparsevlm_keeps  # noqa: F401
from tokencodec.tokens.frames import compress_per_frame, stack_frames
from tokencodec.tokens.signals import Signal, resolve_request

SUPPORTED = ("LlavaForConditionalGeneration", "LlavaModel")
FIRST = ("vision-encoder", "pre-llm")    # stages that may come first in a chain; "llm" comes last
IN_TOWER = (ToMeVisionPatch, EncoderPruningPatch)   # "vision-encoder" methods: the first whose signals fit


def chain_steps(method, budget) -> list[tuple[TokenMethod, Budget]]:
    """[(method, budget)] from one method and its budget, or from a list of (method, budget) steps."""
    if isinstance(method, (list, tuple)):
        if budget is not None:
            raise ValueError("a chain gives each step its own budget: [(method, budget), ...]; pass budget=None")
        steps = [tuple(s) for s in method]
        if not steps or any(len(s) != 2 for s in steps):
            raise ValueError(f"a chain is a list of (method, budget) pairs; got {method!r}")
    else:
        if budget is None:
            raise ValueError("a budget is required: Budget(keep=...), Budget(ratio=...) or Budget(r=...) for ToMe")
        steps = [(method, budget)]
    out = [(get_method(m) if isinstance(m, str) else m, Budget.coerce(b)) for m, b in steps]
    stages = [m.stage for m, _ in out]
    ok = len(out) == 1 and stages[0] in (*FIRST, "llm") or len(out) == 2 and stages[0] in FIRST and stages[1] == "llm"
    if not ok:
        raise ValueError(f"chain of stages {stages}: LLaVA runs one method, or one 'vision-encoder' or "
                         "'pre-llm' method followed by one 'llm' method")
    return out


class LlavaTokenCompression(LLMStages, Adapter):
    """Compress LLaVA's image tokens with ``method`` at ``budget`` (or a chain of steps) while the context is active.

    Options: ``layers`` (in-LLM: override the method's layer(s), e.g. on tiny models), ``positions``
    ("original" | "renumber"; default: each method's ``positions`` attribute, else "original"), ``query``
    (FastV "last" | "all"), ``stage_keep`` (explicit per-stage counts for multi-stage methods),
    ``features`` (pre-LLM "vision" | "projected"), ``signal_layer`` (pre-LLM, CLIP layer of q/k),
    ``prop_attn`` (ToMe's proportional attention), ``frames`` (T: each sample is a T-frame video) and
    ``spatial`` (video: a spatial method runs "per-frame" at K/T, or "joint" over all frames); for
    text-guided methods the options of :mod:`tokencodec.adapters.relevance` (``visual_projection``,
    ``text_embedding``, ``text_encoder``, ``text_tokenizer``, ``question``, ``embedding_space``,
    ``question_ids``…).
    """

    method_stages = ("vision-encoder", "pre-llm", "llm")
    supplies = {"vision-encoder": TOWER_SIGNALS | LAYER_SIGNALS,     # in the tower (ToMe, FlowCut)
                "pre-llm": TOWER_SIGNALS | EMBEDDING_SIGNALS,         # at the projector (CDPruner's embeddings)
                "llm": LLM_SIGNALS}
    video, chains = True, True        # T-frame prompts; [(pre-LLM or ToMe, budget), (in-LLM, budget)]
    supported = SUPPORTED             # the model classes this adapter takes (a subclass names its own)

    def __init__(self, model: nn.Module, method, budget: Budget | int | float | None = None, *,
                 layers: int | Sequence[int] | None = None, positions: str | None = None,
                 query: str | None = None, stage_keep: Sequence[int] | None = None,
                 features: str | None = None, signal_layer: int | None = None, prop_attn: bool | None = None,
                 frames: int = 1, spatial: str = "per-frame", **embedding_options):
        name = type(model).__name__
        if name not in self.supported:
            raise TypeError(f"unsupported model {name}; {type(self).__name__} supports {', '.join(self.supported)} "
                            "(LLaVA layout: CLIP/SigLIP tower, projector, Llama-style LM)")
        super().__init__(model)
        self.llava = model.model if name.endswith("ForConditionalGeneration") else model
        self.lm = self.llava.language_model
        self.layers = self._check_lm(self.lm)
        self._set_steps(method, budget, positions)
        cfg = self.llava.config
        self.image_token_id = cfg.image_token_id
        tower = resolve_tower(self.llava)
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
            raise ValueError(f"frames={frames!r}: the frames per sample, a positive int")
        if spatial not in ("per-frame", "joint"):
            raise ValueError(f"spatial must be 'per-frame' or 'joint', not {spatial!r}")
        self.frames, self.frame_tokens, self.spatial = frames, side * side, spatial
        self.grid, self.n = (side, side), side * side * frames     # the image span: every frame's tokens
        strategy = cfg.vision_feature_select_strategy
        if (strategy == "default") != tower.class_token:
            raise ValueError(f"vision_feature_select_strategy={strategy!r} with a tower "
                             f"{'with' if tower.class_token else 'without'} CLS: the image span would "
                             "not be the patch grid; supported: 'default' with CLIP, 'full' with SigLIP")
        self._clear_state()
        self.llm_tokens = self.n
        if self.pre_method is not None:
            self.pre_positions = positions or getattr(self.pre_method, "positions", "original")
            self._init_pre(cfg, tower, features, signal_layer, prop_attn, embedding_options)
        elif embedding_options:
            self._refuse_embedding_options(embedding_options, self.method.name)
        if self.llm_method is not None:
            self.positions = positions or getattr(self.llm_method, "positions", "original")
            self._init_llm(layers, stage_keep, query)
        else:
            self.positions = self.pre_positions

    # -- set-up -----------------------------------------------------------------------------------
    def _set_steps(self, method, budget, positions: str | None) -> None:
        """The method (or chain) and budget: ``pre_method`` / ``llm_method`` and their budgets, ``stage``."""
        steps = chain_steps(method, budget)
        self.method, self.budget = steps[-1]                 # the last step (the only one, unless chained)
        first, first_budget = steps[0]
        self.pre_method, self.pre_budget = (first, first_budget) if first.stage in FIRST else (None, None)
        self.llm_method, self.llm_budget = steps[-1] if self.method.stage == "llm" else (None, None)
        self.stage = "+".join(m.stage for m, _ in steps)
        if positions not in (None, "original", "renumber"):
            raise ValueError(f"positions must be 'original' or 'renumber', not {positions!r}")

    def _clear_state(self) -> None:
        """The patches, plans and per-forward records, before the first forward."""
        self._capture: SignalCapture | None = None
        self._tower: ToMeVisionPatch | EncoderPruningPatch | None = None    # an in-tower method's patch
        self._embeddings: RelevanceEmbeddings | None = None                  # a text-guided method's spaces
        self.stage_plan: tuple[Stage, ...] = ()
        self.stage_keep: tuple[int, ...] = ()
        self.stages: list[StageRecord] = []
        self._run: Run | None = None
        self._pending: Tensor | None = None
        self._pre: tuple | None = None
        self._span_batch: TokenBatch | None = None
        self.tokens_per_layer: list[int] | None = None
        self.kept: TokenBatch | None = None
        self.cls_sent = False          # pre-LLM: the span starts with the projected CLS (kept.cls)
        self._span = 0
        self.sequence_index: Tensor | None = None

    def _init_pre(self, cfg, tower, features, signal_layer, prop_attn, embedding_options) -> None:
        if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_layer == 0:
            raise ValueError(f"vision_feature_layer={cfg.vision_feature_layer!r}: one encoder layer is supported")
        v = cfg.vision_feature_layer
        layer = v if v < 0 else v - 1                      # hidden_states[v] is layer v−1's output
        m, budget = self.pre_method, self.pre_budget
        if m.stage == "vision-encoder":                    # ToMe, FlowCut: inside the tower, up to `layer`
            if features not in (None, "vision") or signal_layer is not None:
                raise ValueError(f"{m.name} acts inside the vision tower: features= and signal_layer= do not apply")
            if embedding_options:
                self._refuse_embedding_options(embedding_options, m.name)
            self.features = "vision"
            if self.frames > 1:
                raise NotImplementedError(f"{m.name} acts inside the tower per image; video (frames > 1) "
                                          "is not supported")
            patch_cls = next((a for a in IN_TOWER if a.supports(m, tower.class_token) != NO), None)
            if patch_cls is None:
                raise ValueError(f"method {m.name!r} needs signals {list(m.needs)} inside the tower, which no "
                                 f"tower patch supplies ({', '.join(a.__name__ for a in IN_TOWER)})")
            extra = {} if prop_attn is None else {"prop_attn": prop_attn}      # ToMe's option
            self._tower = patch_cls.build(self.llava, m, budget, layer=layer, **extra)
            out = self._tower.tokens_after(self.frame_tokens)
            if out < 1:
                raise BudgetError(f"{m.name} at {budget} leaves {out} of {self.n} patches at tower layer {layer}; "
                                  f"allowed: a budget that leaves at least 1 (Budget(r=...): r·layers < {self.n})")
            self.llm_tokens = out
            return
        self.features = features or getattr(m, "features", "vision")
        if self.features not in ("vision", "projected"):
            raise ValueError(f"features must be 'vision' or 'projected', not {self.features!r}")
        sl = signal_layer if signal_layer is not None else getattr(m, "signal_layer", None)
        needs = resolve_request(m, self.supplies["pre-llm"], tower.class_token, type(self).__name__)
        if reads_embeddings(needs):
            if self.frames > 1:
                raise NotImplementedError(f"{m.name} reads a question's embeddings; video (frames > 1) is not "
                                          "supported")
            self._embeddings = RelevanceEmbeddings.from_options(
                type(self).__name__, tower_model=tower.model, model=self.llava,
                input_embeddings=self.llava.get_input_embeddings(), **embedding_options)
        elif embedding_options:
            self._refuse_embedding_options(embedding_options, m.name)
        self._capture = SignalCapture(self.llava, layer=layer, signals=[s for s in needs if s in TOWER_SIGNALS],
                                      signal_layer=sl)
        k = budget.tokens(self.n)                           # BudgetError names the range
        self.stage_keep = (k,)
        self.llm_tokens = k     # VisionZip's K counts the CLS it sends

    def _refuse_embedding_options(self, options: dict, name: str) -> None:
        raise TypeError(f"{type(self).__name__}: unknown option(s) {sorted(options)} for method {name!r}; the "
                        "options of text-guided methods (visual_projection, text_embedding, text_encoder, "
                        "question, embedding_space, question_ids, …) apply to those reading 'text_embedding'")

    def _install(self) -> None:
        self.add_pre_hook(self.llava, self._on_llava, with_kwargs=True)
        self.add_pre_hook(self.lm, self._on_lm, with_kwargs=True)
        self.add_hook(self.lm, self._after_lm)
        for patch in (self._capture, self._tower):
            if patch is not None:
                patch.__enter__()
        if self.pre_method is not None:
            self.add_hook(self.llava.multi_modal_projector, self._on_projector)
        if self.llm_method is not None:
            self._install_layer_hooks()

    def restore(self) -> None:
        try:
            super().restore()
        finally:
            for patch in (self._capture, self._tower):
                if patch is not None and patch.active:
                    patch.restore()
            self._run = self._pending = self._pre = self._span_batch = None


    # -- LlavaModel: where the image span is --------------------------------------------------------
    def _on_llava(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            embeds = kwargs["inputs_embeds"]
            token = module.get_input_embeddings()(torch.tensor(self.image_token_id, device=embeds.device))
            is_image = (embeds == token).all(-1)
        else:
            is_image = ids == self.image_token_id
        self._pending = None
        # images come as pixel_values, or (generate() in transformers ≥ 5.24) already encoded; without
        # either this is a decode step, and an image token the model generated is text. (No value is read
        # here: the model itself checks that its image tokens and features agree.)
        pixels = kwargs.get("pixel_values", args[1] if len(args) > 1 else None)
        if pixels is None and kwargs.get("mm_encoder_outputs") is None:
            return None
        self._pending = self._find_spans(is_image)
        return None

    def _find_spans(self, is_image: Tensor) -> Tensor:
        """[B] each sample's image span start (the layout is checked when value checks are on)."""
        start = lp.image_spans(is_image, self.n)
        if start is None:
            raise ValueError(f"every sample must hold exactly one image ({self.frames} frame(s)): {self.n} "
                             "contiguous image tokens "
                             f"(id {self.image_token_id}); got counts {is_image.sum(1).tolist()}")
        return start


    # -- pre-LLM: compress at the projector -----------------------------------------------------
    def _on_projector(self, module, args, output):
        if self._tower is not None:
            return self._on_projector_tower(module, args, output)
        captured = self._capture.captured()
        grid = self._capture.grid or self.grid
        hidden = captured.hidden
        cls = hidden[:, 0] if hidden.shape[1] == self.frame_tokens + 1 and self.frames == 1 else None
        method, t = self.pre_method, self.frames
        inputs = output if self.features == "projected" else args[0]
        if t > 1:                  # B·T frame images → B videos of T·N tokens, frame after frame
            batch = stack_frames(inputs, grid, t, captured.signals)
        else:
            signals, context = captured.signals, {}
            if self._embeddings is not None:           # a text-guided method: both sides of its relevance space
                signals = {**signals, Signal.IMAGE_EMBEDDING: self._embeddings.image(args[0], output)}
                context = self._embeddings.context(inputs.shape[0], inputs.device)
            batch = TokenBatch.from_grid(inputs, grid, cls_token=cls, context=context, **signals)
        if t > 1 and self.spatial == "per-frame" and not method.video:
            out = compress_per_frame(method, batch, self.pre_budget)
        else:
            out = method(batch, self.pre_budget)
        if self.features == "projected":
            projected = out.features
        else:
            projected = module.forward(out.features)       # forward, not __call__: this hook must not re-fire
        rep, valid = out.positions, out.mask
        if self.pre_positions == "renumber":                   # the method's order; padding (if any) last
            order = lp.sort_by_rep(torch.zeros_like(rep), valid)
        else:                                              # causal order agrees with the positions
            order = lp.sort_by_rep(rep.clamp_min(0), valid)
        out, projected, rep = out.take(order), lp.take(projected, order), rep.gather(1, order)
        span_mask = out.mask
        if span_mask is not None:
            rep = torch.where(span_mask, rep, self.n - 1)    # padded slots sit at the span's end, masked
        rep = rep.clamp(0, self.n - 1)
        self.cls_sent = bool(getattr(method, "sends_cls", False)) and cls is not None
        if self.cls_sent:                                  # first in the span, at the first patch's slot
            cls_proj = module.forward(cls[:, None].to(args[0].dtype))
            projected = torch.cat([cls_proj.to(projected.dtype), projected], 1)
            rep = torch.cat([rep.new_zeros(rep.shape[0], 1), rep], 1)
            if span_mask is not None:
                span_mask = torch.cat([span_mask.new_ones(span_mask.shape[0], 1), span_mask], 1)
        self._pre = (out, projected, rep, span_mask)
        return None


    def _on_projector_tower(self, module, args, output):
        out = self._tower.token_batch()                   # what the tower left at vision_feature_layer, CLS apart
        if out.features.shape[1] != args[0].shape[1]:
            raise RuntimeError(f"{self.pre_method.name} kept {out.features.shape[1]} patch tokens but the projector "
                               f"got {args[0].shape[1]}: vision_feature_layer and the method's layer disagree")
        order = lp.sort_by_rep(out.positions)            # patch order: causal order agrees with positions
        out, projected = out.take(order), lp.take(output, order)
        self.cls_sent = False
        self._pre = (out, projected, out.positions.clamp(0, self.n - 1), None)
        pad = output.new_zeros(output.shape[0], self.n - output.shape[1], output.shape[2])
        return torch.cat([output, pad], 1)               # LLaVA scatters N image tokens; the span is cut later


    # -- language model input -------------------------------------------------------------------
    def _on_lm(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        cache = cache_from(kwargs)
        mask, pos = kwargs.get("attention_mask"), kwargs.get("position_ids")
        if self._pending is not None:
            start, self._pending = self._pending, None
            if cache is not None and cache.get_seq_length() > 0:
                raise NotImplementedError("the image prompt must be the first chunk (empty KV cache)")
            if mask is not None and mask.dim() != 2:
                raise NotImplementedError("pass a 2-D attention_mask (padding mask); 4-D masks are not supported")
            run = self._begin_run(start, self.n, embeds, mask)
            if pos is None:
                pos = torch.arange(run.s0, device=embeds.device)[None]
            if self.pre_method is not None:
                kwargs.update(self._edit_input(run, embeds, mask, pos))
            if self.llm_method is not None and self.signal.query == "raters":
                run.raters = self._raters(kwargs["inputs_embeds"], run)
            return args, kwargs
        run = self._followup(cache)
        if run is None:
            return None
        if self.pre_method is not None:
            kwargs.update(self._decode_input(run, embeds, mask, pos, cache))
        return args, kwargs

    def _edit_input(self, run: Run, embeds: Tensor, mask: Tensor | None, pos: Tensor) -> dict:
        if self._pre is None:
            raise RuntimeError("no compressed image tokens: pass pixel_values with the image prompt")
        out, projected, rep, span_mask = self._pre
        self._pre = None
        if projected.shape[0] != embeds.shape[0]:
            raise ValueError(f"{projected.shape[0]} images for {embeds.shape[0]} samples; one image per sample")
        k = projected.shape[1]
        spans = self._span_lengths(embeds.shape[0])         # host ints: rows may hold spans of different lengths
        index, real, pad = lp.ragged_span_index(run.start, spans, rep, run.s0)
        start = run.start if pad is None else run.start + pad     # rows left-padded to one width
        new = lp.write_span(lp.take(embeds, index), start, projected)
        valid = lp.take(run.valid, index)
        if real is not None:
            valid = valid & real
        if span_mask is not None:
            slots = lp.span_slots(start, k)
            valid = valid.scatter(1, slots, span_mask & lp.take(valid, slots))
        lo = min(spans)
        if self.pre_positions == "renumber":
            span = lo if pad is None else pad + lo
            real = None if span_mask is None else span_mask.sum(1)          # the span's real tokens come first
            positions = lp.renumber_positions(pos, index, run.start, span, k, pad, real)
            run.shift = lo - k
        else:
            positions = lp.take(pos, index)
        if mask is not None:
            mask = lp.mask_invalid(lp.take(mask, index), valid)
        elif k < lo or pad is not None or not bool(valid.all()):
            mask = valid.long()                               # gaps without a mask would read as packed sequences
        run.start, run.lm_index, run.valid, run.s_in, run.n = start, index, valid, index.shape[1], k
        self.kept, self._span, self.sequence_index = out, k, index
        if self.llm_method is not None:
            if span_mask is not None:
                raise NotImplementedError(f"{self.pre_method.name} kept different counts per image (a padded "
                                          "batch); a chain needs the same count in every image")
            self._span_batch = self._sent_batch(out, rep)
        return {"inputs_embeds": new, "attention_mask": mask, "position_ids": positions}

    def _span_lengths(self, rows: int) -> list[int]:
        """The image span's length in each row of the caller's sequence (one image of N tokens on LLaVA-1.5)."""
        return [self.n] * rows

    def _decode_input(self, run: Run, embeds: Tensor, mask: Tensor | None, pos: Tensor | None, cache) -> dict:
        q, past = embeds.shape[1], cache.get_seq_length()
        valid = torch.cat([run.valid, run.valid.new_ones(run.valid.shape[0], past + q - run.s_in)], 1)
        if mask is not None:
            mask = lp.mask_invalid(lp.decode_mask(mask, run.lm_index, run.s0), valid)
        elif not bool(valid.all()):
            mask = valid.long()
        if pos is None and self.pre_positions == "original":     # continue the caller's numbering
            pos = (torch.arange(q, device=embeds.device) + past + (run.s0 - run.s_in))[None]
        elif pos is not None and self.pre_positions == "renumber":
            pos = pos - run.shift
        return {"attention_mask": mask, "position_ids": pos}


    def _sent_batch(self, out: TokenBatch, rep: Tensor) -> TokenBatch:
        """The span the LLM received as one TokenBatch (a sent CLS first, at patch 0, standing for no patch)."""
        if not self.cls_sent:
            return replace(out, cls=None)
        b = rep.shape[0]
        sizes = None if out.sizes is None else torch.cat([out.sizes.new_ones(b, 1), out.sizes], 1)
        source = None if out.source is None else torch.cat([out.source.new_zeros(b, 1, out.source.shape[2]),
                                                            out.source], 1)
        positions = torch.cat([rep.new_zeros(b, 1), out.positions], 1)
        return replace(out, features=torch.zeros(b, rep.shape[1], 1), cls=None, sizes=sizes, source=source,
                       positions=positions, signals={}, mask=None)

    def _first_batch(self, run: Run) -> TokenBatch | None:
        return self._span_batch


    def record(self):
        rec = super().record()
        if self._tower is not None:                         # ToMe merged / FlowCut pruned inside the tower
            rec.vision_tokens_per_layer = self._tower.record().tokens_per_layer
        if self.pre_method is not None and self.features == "projected":   # ranked after projecting every token
            rec.projector_tokens = self.n
        rec.extra["cls_sent"] = self.cls_sent
        return rec

    def _finish(self, run: Run) -> None:
        if self.llm_method is not None:
            self._finish_llm(run)
        else:
            self.tokens_per_layer = [self._span] * len(self.layers)   # the CLS counts when it is sent


__all__ = ["LlavaTokenCompression", "Stage", "StageRecord", "chain_steps", "pyramiddrop_keeps", "sparsevlm_keeps"]
