"""Visual-token compression for HF ``LlavaForConditionalGeneration`` (LLaVA-1.5 layout), as a context manager.

``with LlavaTokenCompression(model, "fastv", Budget(keep=64)) as tc: model.generate(...)`` installs
forward hooks on entry and removes them on exit (:class:`~tokencodec.models.hooks.ModelPatch`); no
model file is copied. Any registered method works, by name or instance (the registry's error lists
the names). Written against transformers 5.23, where ``cache_position`` no longer exists: query
offsets and mask sizes come from layer 0's cache length.

**Pre-LLM methods** (stage "pre-llm": random, pool-avg, pool-resize, divprune, visionzip, prumerge,
prumerge+). Signals come from the vision tower through :class:`~tokencodec.models.vision_tower.SignalCapture`
(q/k hooks, SDPA-safe) at LLaVA's ``vision_feature_layer`` (−2), or at the layer the method
declares (``signal_layer``: PruMerge(+) −1, the last layer, official). Features: the method's
``features`` declaration: DivPrune ranks the **projected** embeddings (its card, ``LAYER_INDEX=0``);
every other method acts on the **pre-projector** features (layer −2 patches) and its output is then
projected, so merges (VisionZip, PruMerge, pooling) happen in vision space as in the official code
(selection-only methods give the same either way: the projector is per token).
``features="vision"|"projected"`` and ``signal_layer=`` override. LLaVA still builds its full
``inputs_embeds`` (the processor's image tokens in ``input_ids`` stay untouched); a pre-hook on the
language model then replaces each sample's image span by the K compressed tokens and drops the rest
from ``inputs_embeds``, ``attention_mask`` and ``position_ids``. A method that declares
``sends_cls`` (VisionZip with ``count_cls=True``, its default: the official LLaVA-1.5 code) gets the
layer −2 CLS projected by the projector as the **first** token of the span, counted in K
(``cls_sent``; ``kept`` then holds the K−1 patch tokens, the CLS in ``kept.cls``); on encoders
without CLS nothing is sent.

**In-LLM methods** (stage "llm": fastv, sparsevlm, pyramiddrop, dart). The adapter never branches on
a method's name: each method declares its stages (``method.plan(budget, n, depth, layers)`` →
:class:`~tokencodec.tokens.compress.base.LLMStage` (layer, score_layer, keep) per stage) and what it
reads (``method.llm_signal``, an :class:`~tokencodec.tokens.compress.base.LLMSignal`: attention rows
of the last prompt token, of all tokens or of raters; keys; final-norm features; text after the image),
which :meth:`LlavaTokenCompression._signals` interprets. Pre-hooks on the decoder
layers recompute what each method reads, without attention maps (eager, SDPA alike): a layer's q/k
on ``input_layernorm(h)`` with RoPE from its ``position_embeddings`` kwarg, GQA-aware
(:mod:`~tokencodec.models.llm_pruning`).

- FastV (``layer`` K): layer K−1's softmax row of the last prompt token (``query="all"``: mean over
  every real query row) over the image span, mean over heads → ``text_attention``. Prunes before K.
- SparseVLM (``layers`` l): raters chosen once from the layer-0 input embeddings
  (:func:`~tokencodec.tokens.compress.sparsevlm.select_raters`); layer l's rater rows →
  ``context["rater_attention"]`` [B, R, N] (``signals["text_attention"]``, already averaged, when
  samples have different rater counts). Layer l runs on all tokens and its output is pruned, i.e.
  the pruning happens before layer l+1.
- PyramidDrop (``layers`` l): the last instruction token's row with layer l's **own** q/k (the
  "next layer" of the card) → ``text_attention``; prunes before layer l.
- DART (``layer`` K): layer K−1's post-RoPE keys, kv-heads concatenated → ``signals["keys"]``;
  layer K−1's output through the final norm → ``signals["normed_features"]``; the same for the text
  after the image → ``context["text_keys"]``/``["text_features"]`` (padded slots zero).

The sequence is then cut before the pruning layer: hidden states and every per-token kwarg of the
later layers (4-D/2-D mask rows and columns, cos/sin, ``position_ids``) are gathered to the kept slots.

**Token order and positions.** Each method declares its official layout (``positions``), which the
adapter's ``positions=`` overrides. ``"renumber"`` (VisionZip, PruMerge(+), DivPrune, SparseVLM,
PyramidDrop: the official LLaVA code gives the shortened sequence contiguous ids) keeps the
**method's output order** in the span (VisionZip [CLS, dominant, contextual]; PruMerge by attention,
samples, extra; SparseVLM kept tokens then the recycled block) and numbers the sequence 0..L'−1.
``"original"`` (FastV, DART, random, pooling, token-norm: no official LLaVA code renumbers them)
sorts the span by each token's representative patch (merged tokens stand at their representative's
slot, a sent CLS at the first patch's), so the causal order agrees with the original position ids
it keeps (RoPE gaps). Masks are gathered, never rebuilt: in the LLM, an unsorted span's mask rows and
columns are gathered in slot order (the span's real tokens are causal among themselves), so the
mask is causal in the span's own order.

**Budget mapping.** Single-stage methods (all pre-LLM, FastV, DART) get the budget as is (VisionZip's
K counts the CLS it sends). PyramidDrop:
λ = K/N with K = ``budget.tokens(N)``, stage s keeps ⌊N·λ^s⌋ (``Budget(ratio=0.5)`` gives the official
0.5/0.25/0.125). SparseVLM: with ρ = K/N, the v1.5 list l of the preset p (192/128/64 of 576) nearest
to ρ·576 in log scale (192/128/96/64), stage s keeping N·(l_s/576)^(ln ρ / ln(p/576)): the official
list at ρ = p/576 and N = 576, no pruning at ρ = 1 (:func:`sparsevlm_keeps`); with
``count_recycled=False`` (default, official) the recycled clusters come on top of each stage's
count. ``stage_keep``
gives explicit per-stage counts instead. ``Budget(ratio=1.0)`` never prunes.

**generate() and the KV cache.** Pruning happens at prefill only (the forward whose ``input_ids``
hold image tokens). Layers before the first stage cache S entries, later ones fewer. In each decode
step the model builds the mask for layer 0's cache length; the adapter slices its key columns to
the kept slots plus the new tokens for the pruned layers (and, pre-LLM, the 2-D ``attention_mask``
at the language model's input). New tokens continue the **original** numbering (the position ids
``generate`` passes, or layer 0's length plus the dropped count when none are passed); with
``positions="renumber"`` they are shifted down by the tokens dropped, layer by layer.

**Per forward:** ``tokens_per_layer`` (image-token slots each LLM layer sees, for
:mod:`tokencodec.metrics.cost`), ``kept`` (final TokenBatch: positions, sizes, source), ``stages``
(one :class:`StageRecord` per pruning stage, with the signals), ``stage_keep`` (budget used per
stage), ``sequence_index`` ([B, S'] the caller's slot each output slot comes from: logits are S' long).

Supported: one image per sample, its N image tokens contiguous; a Llama-style language model
(``layers[i].self_attn.q_proj/k_proj/head_dim``, ``input_layernorm``, ``rotary_emb``, ``norm``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from tokencodec.models import llm_pruning as lp
from tokencodec.models.hf_compat import cache_from, cache_of
from tokencodec.models.hooks import ModelPatch
from tokencodec.models.vision_tower import SignalCapture, method_signals, resolve_tower
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError, LLMSignal, TokenMethod, get_method
from tokencodec.tokens.compress.base import LLMStage as Stage
from tokencodec.tokens.compress.pyramiddrop import pyramiddrop_keeps  # noqa: F401  (importable from here too)
from tokencodec.tokens.compress.sparsevlm import select_raters, sparsevlm_keeps  # noqa: F401

SUPPORTED = ("LlavaForConditionalGeneration", "LlavaModel")
SLOT = "_slot"                                  # private signal: the span slot each output token stands for


# -- records --------------------------------------------------------------------------------------

@dataclass
class StageRecord:
    layer: int
    tokens_in: int
    kept: TokenBatch                      # the span after the stage (sorted by representative)
    signals: dict[str, Tensor]            # what the method read (per token, before pruning)
    index: Tensor                         # [B, S'] layer-0 slot of each slot after the stage
    kwargs: dict = field(default_factory=dict, repr=False)  # per-token kwargs of the later layers
    shift: int = 0                        # positions dropped so far (renumber mode)


@dataclass
class _Run:
    start: Tensor              # [B] image span start (same in the caller's and the LLM's slots)
    n: int                     # image tokens per sample entering layer 0
    s0: int                    # sequence length the caller passed to the language model
    s_in: int                  # sequence length entering layer 0
    valid: Tensor              # [B, s_in] real tokens at layer 0
    lm_index: Tensor | None = None   # pre-LLM: caller slot of each layer-0 slot
    shift: int = 0             # pre-LLM renumber: positions dropped before layer 0
    phase: str = "prefill"
    cache: object | None = None
    captured: dict = field(default_factory=dict)
    raters: tuple[Tensor, Tensor] | None = None   # SparseVLM: layer-0 slots [B, R] and validity
    stages: list[StageRecord] = field(default_factory=list)


class LlavaTokenCompression(ModelPatch):
    """Compress LLaVA's image tokens with ``method`` at ``budget`` while the context is active.

    Options: ``layers`` (in-LLM: override the method's layer(s), e.g. on tiny models), ``positions``
    ("original" | "renumber"; default: the method's ``positions`` attribute, else "original"), ``query``
    (FastV "last" | "all"), ``stage_keep`` (explicit per-stage counts for multi-stage methods),
    ``features`` (pre-LLM "vision" | "projected") and ``signal_layer`` (pre-LLM, CLIP layer of q/k).
    """

    def __init__(self, model: nn.Module, method: str | TokenMethod, budget: Budget | int | float, *,
                 layers: int | Sequence[int] | None = None, positions: str | None = None,
                 query: str | None = None, stage_keep: Sequence[int] | None = None,
                 features: str | None = None, signal_layer: int | None = None):
        name = type(model).__name__
        if name not in SUPPORTED:
            raise TypeError(f"unsupported model {name}; LlavaTokenCompression supports {', '.join(SUPPORTED)} "
                            "(LLaVA-1.5 layout: CLIP/SigLIP tower, projector, Llama-style LM)")
        super().__init__(model)
        self.llava = model.model if name == "LlavaForConditionalGeneration" else model
        self.lm = self.llava.language_model
        self.layers = self._check_lm(self.lm)
        self.method = get_method(method) if isinstance(method, str) else method
        self.budget = Budget.coerce(budget)
        cfg = self.llava.config
        self.image_token_id = cfg.image_token_id
        tower = resolve_tower(self.llava)
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        self.grid, self.n = (side, side), side * side
        strategy = cfg.vision_feature_select_strategy
        if (strategy == "default") != tower.class_token:
            raise ValueError(f"vision_feature_select_strategy={strategy!r} with a tower "
                             f"{'with' if tower.class_token else 'without'} CLS: the image span would "
                             "not be the patch grid; supported: 'default' with CLIP, 'full' with SigLIP")
        self.positions = positions or getattr(self.method, "positions", "original")
        if self.positions not in ("original", "renumber"):
            raise ValueError(f"positions must be 'original' or 'renumber', not {self.positions!r}")
        self.stage = self.method.stage
        self._capture: SignalCapture | None = None
        self.stage_plan: tuple[Stage, ...] = ()
        if self.stage == "pre-llm":
            self._init_pre(cfg, tower, features, signal_layer)
            self.stage_keep: tuple[int, ...] = (self.budget.tokens(self.n),)   # BudgetError names the range
        elif self.stage == "llm":
            self.signal: LLMSignal = self.method.llm_signal
            if query is not None:                          # "last" | "all": whose attention rows
                if self.signal.query not in ("last", "all") or query not in ("last", "all"):
                    raise ValueError(f"query={query!r}: {self.method.name} reads {self.signal.query!r}; "
                                     "query= chooses 'last' or 'all' attention rows")
                self.signal = replace(self.signal, query=query)
            self.query = self.signal.query
            self.stage_plan = self._plan(layers, stage_keep)
            self.stage_keep = tuple(s.keep for s in self.stage_plan)
        else:
            raise ValueError(f"method {self.method.name!r} acts at stage {self.stage!r}; LlavaTokenCompression "
                             "runs 'pre-llm' and 'llm' methods (use ToMeVisionPatch inside the vision tower)")
        self._run: _Run | None = None
        self._pending: Tensor | None = None
        self._pre: tuple[TokenBatch, Tensor, Tensor] | None = None
        self.tokens_per_layer: list[int] | None = None
        self.kept: TokenBatch | None = None
        self.cls_sent = False          # pre-LLM: the span starts with the projected CLS (kept.cls)
        self._span = 0
        self.stages: list[StageRecord] = []
        self.sequence_index: Tensor | None = None

    # -- set-up -----------------------------------------------------------------------------------
    @staticmethod
    def _check_lm(lm: nn.Module) -> nn.ModuleList:
        layers = getattr(lm, "layers", None)
        ok = layers is not None and all(hasattr(lm, a) for a in ("rotary_emb", "norm")) and all(
            hasattr(layers[0], a) for a in ("input_layernorm", "self_attn")) and all(
            hasattr(layers[0].self_attn, a) for a in ("q_proj", "k_proj", "head_dim"))
        if not ok:
            raise TypeError(f"language model {type(lm).__name__} is not Llama-style (layers[i].self_attn.q_proj/"
                            "k_proj/head_dim, input_layernorm, rotary_emb, norm)")
        return layers

    def _init_pre(self, cfg, tower, features, signal_layer) -> None:
        if not isinstance(cfg.vision_feature_layer, int) or cfg.vision_feature_layer == 0:
            raise ValueError(f"vision_feature_layer={cfg.vision_feature_layer!r}: one encoder layer is supported")
        v = cfg.vision_feature_layer
        layer = v if v < 0 else v - 1                      # hidden_states[v] is layer v−1's output
        self.features = features or getattr(self.method, "features", "vision")
        if self.features not in ("vision", "projected"):
            raise ValueError(f"features must be 'vision' or 'projected', not {self.features!r}")
        sl = signal_layer if signal_layer is not None else getattr(self.method, "signal_layer", None)
        self._capture = SignalCapture(self.llava, layer=layer, signals=method_signals(self.method, tower),
                                      signal_layer=sl)

    def _plan(self, layers, stage_keep) -> tuple[Stage, ...]:
        m, n, depth = self.method, self.n, len(self.layers)
        name = m.name
        if layers is not None:
            layers = (layers,) if isinstance(layers, int) else tuple(layers)
        plan = tuple(m.plan(self.budget, n, depth, layers))   # the method's declaration
        stages = [(s.layer, s.score_layer) for s in plan]
        for at, score in stages:
            if not (1 <= at < depth and 0 <= score < depth):
                raise ValueError(f"{name}: pruning before layer {at} (scored at layer {score}) is outside the "
                                 f"allowed range [1, {depth - 1}] for a {depth}-layer LLM; pass layers=...")
        if [a for a, _ in stages] != sorted({a for a, _ in stages}):
            raise ValueError(f"{name}: stage layers must increase; got {[a for a, _ in stages]}")
        if stage_keep is not None:
            keeps = tuple(int(k) for k in stage_keep)
            if len(keeps) != len(stages) or any(not 1 <= k <= n for k in keeps) or list(keeps) != sorted(
                    keeps, reverse=True):
                raise BudgetError(f"stage_keep {keeps} must give {len(stages)} non-increasing counts in the "
                                  f"allowed range [1, {n}]")
        else:
            keeps = tuple(s.keep for s in plan)
        return tuple(Stage(a, s, k) for (a, s), k in zip(stages, keeps, strict=True))

    def _install(self) -> None:
        self.add_pre_hook(self.llava, self._on_llava, with_kwargs=True)
        self.add_pre_hook(self.lm, self._on_lm, with_kwargs=True)
        self.add_hook(self.lm, self._after_lm)
        if self._capture is not None:
            self._capture.__enter__()
            self.add_hook(self.llava.multi_modal_projector, self._on_projector)
        hooked = {s.layer for s in self.stage_plan} | {s.score_layer for s in self.stage_plan}
        first = min((s.layer for s in self.stage_plan), default=len(self.layers))
        for i in sorted(hooked | set(range(first, len(self.layers)))):
            self.add_pre_hook(self.layers[i], self._layer_hook(i), with_kwargs=True)

    def restore(self) -> None:
        try:
            super().restore()
        finally:
            if self._capture is not None and self._capture.active:
                self._capture.restore()
            self._run = self._pending = self._pre = None

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
        if not bool(is_image.any()):
            return None
        counts = is_image.sum(1)
        start = is_image.to(torch.int8).argmax(1)
        span = lp.span_slots(start, self.n).clamp_max(is_image.shape[1] - 1)
        if bool((counts != self.n).any()) or not bool(is_image.gather(1, span).all()):
            raise ValueError(f"every sample must hold exactly one image: {self.n} contiguous image tokens "
                             f"(id {self.image_token_id}); got counts {counts.tolist()}")
        self._pending = start
        return None

    # -- pre-LLM: compress at the projector -----------------------------------------------------
    def _on_projector(self, module, args, output):
        captured = self._capture.captured()
        grid = self._capture.grid or self.grid
        hidden = captured.hidden
        cls = hidden[:, 0] if hidden.shape[1] == self.n + 1 else None
        if self.features == "projected":
            batch = TokenBatch.from_grid(output, grid, cls_token=cls, **captured.signals)
            out = self.method(batch, self.budget)
            projected = out.features
        else:
            batch = TokenBatch.from_grid(args[0], grid, cls_token=cls, **captured.signals)
            out = self.method(batch, self.budget)
            projected = module.forward(out.features)       # forward, not __call__: this hook must not re-fire
        rep, valid = out.positions, out.mask
        if self.positions == "renumber":                   # the method's order; padding (if any) last
            order = lp.sort_by_rep(torch.zeros_like(rep), valid)
        else:                                              # causal order agrees with the positions
            order = lp.sort_by_rep(rep.clamp_min(0), valid)
        out, projected, rep = out.take(order), lp.take(projected, order), rep.gather(1, order)
        span_mask = out.mask
        if span_mask is not None:
            rep = torch.where(span_mask, rep, self.n - 1)    # padded slots sit at the span's end, masked
        rep = rep.clamp(0, self.n - 1)
        self.cls_sent = bool(getattr(self.method, "sends_cls", False)) and cls is not None
        if self.cls_sent:                                  # first in the span, at the first patch's slot
            cls_proj = module.forward(cls[:, None].to(args[0].dtype))
            projected = torch.cat([cls_proj.to(projected.dtype), projected], 1)
            rep = torch.cat([rep.new_zeros(rep.shape[0], 1), rep], 1)
            if span_mask is not None:
                span_mask = torch.cat([span_mask.new_ones(span_mask.shape[0], 1), span_mask], 1)
        self._pre = (out, projected, rep, span_mask)
        return None

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
            b, s0 = embeds.shape[:2]
            valid = mask.bool() if mask is not None else torch.ones(b, s0, dtype=torch.bool, device=embeds.device)
            if pos is None:
                pos = torch.arange(s0, device=embeds.device)[None]
            run = _Run(start=start.to(embeds.device), n=self.n, s0=s0, s_in=s0, valid=valid)
            self._run, self.stages, self.kept = run, [], None
            if self.stage == "pre-llm":
                kwargs.update(self._edit_input(run, embeds, mask, pos))
            elif self.signal.query == "raters":
                run.raters = self._raters(embeds, run)
            return args, kwargs
        run = self._run
        if run is None or run.phase == "prefill" or cache is None or cache is not run.cache:
            self._run = None                                  # a forward unrelated to the last prefill
            return None
        if self.stage == "pre-llm":
            kwargs.update(self._decode_input(run, embeds, mask, pos, cache))
        return args, kwargs

    def _edit_input(self, run: _Run, embeds: Tensor, mask: Tensor | None, pos: Tensor) -> dict:
        if self._pre is None:
            raise RuntimeError("no compressed image tokens: pass pixel_values with the image prompt")
        out, projected, rep, span_mask = self._pre
        self._pre = None
        if projected.shape[0] != embeds.shape[0]:
            raise ValueError(f"{projected.shape[0]} images for {embeds.shape[0]} samples; one image per sample")
        k = projected.shape[1]
        index = lp.span_index(run.start, self.n, rep, run.s0)
        new = lp.write_span(lp.take(embeds, index), run.start, projected)
        valid = lp.take(run.valid, index)
        if span_mask is not None:
            slots = lp.span_slots(run.start, k)
            valid = valid.scatter(1, slots, span_mask & lp.take(valid, slots))
        if self.positions == "renumber":
            positions = lp.renumber_positions(pos, index, run.start, self.n, k)
            run.shift = self.n - k
        else:
            positions = lp.take(pos, index)
        if mask is not None:
            mask = lp.mask_invalid(lp.take(mask, index), valid)
        elif k < self.n or not bool(valid.all()):
            mask = valid.long()                               # gaps without a mask would read as packed sequences
        run.lm_index, run.valid, run.s_in = index, valid, index.shape[1]
        self.kept, self._span = out, k
        return {"inputs_embeds": new, "attention_mask": mask, "position_ids": positions}

    def _decode_input(self, run: _Run, embeds: Tensor, mask: Tensor | None, pos: Tensor | None, cache) -> dict:
        q, past = embeds.shape[1], cache.get_seq_length()
        valid = torch.cat([run.valid, run.valid.new_ones(run.valid.shape[0], past + q - run.s_in)], 1)
        if mask is not None:
            mask = lp.mask_invalid(lp.decode_mask(mask, run.lm_index, run.s0), valid)
        elif not bool(valid.all()):
            mask = valid.long()
        if pos is None and self.positions == "original":     # continue the caller's numbering
            pos = (torch.arange(q, device=embeds.device) + past + (run.s0 - run.s_in))[None]
        elif pos is not None and self.positions == "renumber":
            pos = pos - run.shift
        return {"attention_mask": mask, "position_ids": pos}

    def _after_lm(self, module, args, output):
        run = self._run
        if run is None:
            return None
        if run.phase == "prefill":
            run.phase, run.cache = "decode", cache_of(output)
            self._finish(run)
        return None

    def _finish(self, run: _Run) -> None:
        depth = len(self.layers)
        if self.stage == "pre-llm":
            self.tokens_per_layer = [self._span] * depth          # the CLS counts when it is sent
            self.sequence_index = run.lm_index
            return
        counts = [run.n] * depth
        for rec in run.stages:
            counts[rec.layer:] = [rec.kept.num_tokens] * (depth - rec.layer)
        self.tokens_per_layer = counts
        self.stages = list(run.stages)
        last = run.stages[-1] if run.stages else None
        self.kept = last.kept if last else None
        self.sequence_index = last.index if last else None

    # -- SparseVLM raters -------------------------------------------------------------------------
    def _raters(self, embeds: Tensor, run: _Run) -> tuple[Tensor, Tensor]:
        picks = []
        for b in range(embeds.shape[0]):
            s = int(run.start[b])
            text = torch.arange(s + run.n, run.s_in, device=embeds.device)
            text = text[run.valid[b, text]]
            if len(text) == 0:
                raise ValueError("SparseVLM needs text after the image to choose raters")
            chosen = select_raters(embeds[b, s:s + run.n].float(), embeds[b, text].float())
            picks.append(text[chosen])
        width = max(len(p) for p in picks)
        slots = torch.zeros(len(picks), width, dtype=torch.long, device=embeds.device)
        ok = torch.zeros(len(picks), width, dtype=torch.bool, device=embeds.device)
        for b, p in enumerate(picks):
            slots[b, :len(p)], ok[b, :len(p)] = p, True
        return slots, ok

    # -- decoder layers ---------------------------------------------------------------------------
    def _layer_hook(self, i: int):
        stage = next((s for s in self.stage_plan if s.layer == i), None)
        capture = any(s.score_layer == i and s.score_layer < s.layer for s in self.stage_plan)

        def hook(module, args, kwargs):
            run = self._run
            if run is None:
                return None
            h = args[0] if args else kwargs.pop("hidden_states")
            if run.phase == "prefill":
                if run.stages:
                    kwargs.update(run.stages[-1].kwargs)
                if stage is not None:
                    h = self._prune(run, stage, i, h, kwargs)
                if capture:
                    run.captured[i] = (h, dict(kwargs))
            else:
                done = [r for r in run.stages if r.layer <= i]
                if done:
                    kwargs.update(self._decode_kwargs(done[-1], kwargs, h, run))
            return (h, *args[1:]), kwargs

        return hook

    def _decode_kwargs(self, rec: StageRecord, kwargs: dict, h: Tensor, run: _Run) -> dict:
        new = {"attention_mask": lp.decode_mask(kwargs.get("attention_mask"), rec.index, run.s_in)}
        if self.positions == "renumber" and rec.shift:
            pos = kwargs["position_ids"] - rec.shift
            new["position_ids"] = pos
            new["position_embeddings"] = self.lm.rotary_emb(h, position_ids=pos)
        return new

    def _prune(self, run: _Run, stage: Stage, i: int, h: Tensor, kwargs: dict) -> Tensor:
        prev = run.stages[-1] if run.stages else None
        n = prev.kept.num_tokens if prev else run.n
        s_cur = h.shape[1]
        valid = lp.take(run.valid, prev.index) if prev else run.valid
        span = lp.span_slots(run.start, n)
        signals, context = self._signals(run, stage, i, h, kwargs, valid, span, n)
        feats = lp.take(h, span)
        tagged = {**signals, SLOT: torch.arange(n, device=h.device).expand(h.shape[0], n)}
        if prev is None:
            batch = TokenBatch.from_grid(feats, self.grid, context=context, **tagged)
        else:
            batch = replace(prev.kept, features=feats, signals=tagged, context=context, mask=None)
        out = self.method(batch, Budget(keep=stage.keep))
        rep = out.signals.pop(SLOT)
        if self.positions != "renumber":                   # sorted: causal order agrees with positions
            order = lp.sort_by_rep(rep)
            out, rep = out.take(order), rep.gather(1, order)
        k = out.num_tokens
        local = lp.span_index(run.start, n, rep, s_cur)
        # the span's rows/columns of the mask are causal among real tokens: gather them in slot order, so
        # the new span is causal in its own (method's) order whatever the representatives
        in_order = local if self.positions != "renumber" else lp.span_index(
            run.start, n, torch.arange(k, device=h.device).expand(h.shape[0], k), s_cur)
        h_new = lp.write_span(lp.take(h, local), run.start, out.features)
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = torch.arange(s_cur, device=h.device)[None]
        new = {"attention_mask": lp.take_mask(kwargs.get("attention_mask"), in_order)}
        shift = prev.shift if prev else 0
        if self.positions == "renumber":
            new["position_ids"] = lp.renumber_positions(pos, local, run.start, n, k)
            new["position_embeddings"] = self.lm.rotary_emb(h_new, position_ids=new["position_ids"])
            shift += n - k
        else:
            new["position_ids"] = lp.take(pos, local)
            cos, sin = kwargs["position_embeddings"]
            new["position_embeddings"] = (lp.take(cos, local), lp.take(sin, local))
        kwargs.update(new)
        index = lp.compose(prev.index if prev else None, local)
        run.stages.append(StageRecord(layer=i, tokens_in=n, kept=replace(out, context={}), signals=signals,
                                      index=index, kwargs=new, shift=shift))
        return h_new

    # -- signals, recomputed from a layer's input -------------------------------------------------
    def _qk(self, layer: int, h: Tensor, kwargs: dict, rows: Tensor | None, need_query: bool = True):
        block = self.layers[layer]
        attn = block.self_attn
        rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        cos, sin = kwargs["position_embeddings"]
        q, k = lp.query_key(attn, block.input_layernorm(h), cos, sin, rope, rows, need_query)
        return q, k, getattr(attn, "scaling", None)

    def _rows(self, layer: int, h: Tensor, kwargs: dict, rows: Tensor, valid: Tensor) -> Tensor:
        """Head-averaged softmax rows [B, R, T] of ``layer`` for query slots ``rows`` [B, R]."""
        q, k, scaling = self._qk(layer, h, kwargs, rows)
        return lp.attention_rows(q, k, lp.allowed_keys(rows, valid), scaling).mean(1)

    def _score_input(self, run: _Run, stage: Stage, h: Tensor, kwargs: dict):
        if stage.score_layer == stage.layer:
            return h, kwargs
        return run.captured[stage.score_layer]

    def _signals(self, run, stage, i, h, kwargs, valid, span, n) -> tuple[dict, dict]:
        """Interpret the method's :class:`LLMSignal` declaration for this stage."""
        want = self.signal
        hs, kw = self._score_input(run, stage, h, kwargs)
        b = h.shape[0]
        signals, context = {}, {}
        if want.keys or want.normed:
            s = int(h.shape[1])
            m = int((s - run.start - n).max())
            after = run.start[:, None] + n + torch.arange(m, device=h.device)
            text = after.clamp_max(s - 1)
            zero = ~((after < s) & lp.take(valid, text))[..., None]   # padded text slots are zero
        if want.keys:
            _, k, _ = self._qk(stage.score_layer, hs, kw, None, need_query=False)
            keys = k.transpose(1, 2).reshape(b, k.shape[2], -1)        # post-RoPE, kv heads concatenated
            signals["keys"] = lp.take(keys, span)
            if want.text:
                context["text_keys"] = lp.take(keys, text).masked_fill(zero, 0)
        if want.normed:
            normed = self.lm.norm(h)
            signals["normed_features"] = lp.take(normed, span)
            if want.text:
                context["text_features"] = lp.take(normed, text).masked_fill(zero, 0)
        if want.query == "raters":
            slots, ok = run.raters
            rows = torch.where(ok, slots - (run.n - n), 0)      # text after the image shifts by the drops
            p = lp.take(self._rows(stage.score_layer, hs, kw, rows, valid), span, seq_dim=-1)   # [B, R, n]
            if bool(ok.all()):
                context["rater_attention"] = p
            else:
                w = ok.to(p.dtype)[..., None]
                signals["text_attention"] = (p * w).sum(1) / w.sum(1)
        elif want.query == "all":
            rows = torch.arange(hs.shape[1], device=h.device).expand(b, -1)
            p = lp.take(self._rows(stage.score_layer, hs, kw, rows, valid), span, seq_dim=-1)
            w = valid.to(p.dtype)[..., None]
            signals["text_attention"] = (p * w).sum(1) / w.sum(1)
        elif want.query == "last":
            rows = lp.last_valid(valid)[:, None]
            p = self._rows(stage.score_layer, hs, kw, rows, valid)
            signals["text_attention"] = lp.take(p, span, seq_dim=-1)[:, 0]
        return signals, context


__all__ = ["LlavaTokenCompression", "Stage", "StageRecord", "pyramiddrop_keeps", "sparsevlm_keeps"]
