"""In-LLM visual-token pruning on a Llama-style decoder, shared by the LLaVA and Qwen2-VL adapters.

A host adapter (a :class:`~tokencodec.adapters.hooks.ModelPatch`) finds each sample's image span, starts
a :class:`Run` at the language model's input, and mixes in :class:`LLMStages`, which does the rest and
never branches on a method's name: the method declares its stages (``method.plan(budget, n, depth,
layers)`` → :class:`~tokencodec.tokens.compress.base.LLMStage` (layer, score_layer, keep)) and what it
reads (``method.llm_signal``, an :class:`~tokencodec.tokens.compress.base.LLMSignal`: attention rows of
the last prompt token, of all tokens or of raters; keys; final-norm features; text after the image).

Pre-hooks on the decoder layers recompute what each method reads, without attention maps (eager,
SDPA alike): a layer's q/k on ``input_layernorm(h)`` with RoPE from its ``position_embeddings``
kwarg, GQA-aware (:mod:`~tokencodec.adapters.llm_pruning`). The cos/sin are [B, S, d] on Llama and on
Qwen2-VL (whose rotary embedding interleaves the three M-RoPE axes itself), so gathering them per
slot keeps every token's own (t, h, w) rotation.

- FastV (``layer`` K): layer K−1's softmax row of the last prompt token (``query="all"``: mean over
  every real query row) over the image span, mean over heads → ``text_attention``. Prunes before K.
- SparseVLM (``layers`` l): raters chosen once from the layer-0 input embeddings by the method
  (``choose_raters``, :func:`~tokencodec.tokens.compress.sparsevlm.rater_slots`); layer l's rater rows →
  ``context["rater_attention"]`` [B, R, N] (``signals["text_attention"]``, already averaged, when
  samples have different rater counts). Layer l runs on all tokens and its output is pruned, i.e.
  the pruning happens before layer l+1.
- PyramidDrop (``layers`` l): the last instruction token's row with layer l's **own** q/k (the
  "next layer" of the card) → ``text_attention``; prunes before layer l.
- DART (``layer`` K): layer K−1's post-RoPE keys, kv-heads concatenated → ``signals["keys"]``;
  layer K−1's output through the final norm → ``signals["normed_features"]``; the same for the text
  after the image → ``context["text_keys"]``/``["text_features"]`` (padded slots zero).

The sequence is then cut before the pruning layer: hidden states and every per-token kwarg of the
later layers (4-D/2-D mask rows and columns, cos/sin, ``position_ids``) are gathered to the kept
slots. With ``positions="original"`` the span is sorted by representative, so causal order agrees
with the kept positions; with ``"renumber"`` the method's order is kept and the later layers get
contiguous positions (the host's ``lm.rotary_emb`` recomputes cos/sin). During decoding the mask
the model builds for layer 0's cache length is sliced to each pruned layer's kept keys.

Host contract: attributes ``layers``, ``lm`` (``rotary_emb``, ``norm``), ``llm_method``,
``llm_budget``, ``llm_tokens`` (N entering the LLM), ``grid``, ``positions``, ``_run``; calls
``_init_llm`` once, ``_install_layer_hooks`` in ``_install`` (and hooks ``_after_lm`` on the language
model), ``_begin_run`` and (when the signal asks for them) ``_raters`` at prefill, ``_followup`` at a
decode step; may override ``_finish`` (default ``_finish_llm``) and ``_first_batch``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from tokencodec.adapters import llm_pruning as lp
from tokencodec.adapters.base import CompressionRecord
from tokencodec.adapters.hf_compat import cache_of
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, BudgetError, LLMSignal
from tokencodec.tokens.compress.base import LLMStage as Stage
from tokencodec.tokens.signals import Signal

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
class Run:
    """One prefill's state, kept for the decode steps after it."""

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
    text_width: int | None = None  # the most text slots after a span (host-known, or read once when needed)
    stages: list[StageRecord] = field(default_factory=list)


# what the in-LLM stages compute from a layer's input (LLMStages._signals)
LLM_SIGNALS = frozenset({Signal.TEXT_ATTENTION, Signal.KEYS, Signal.NORMED_FEATURES, Signal.RATER_ATTENTION,
                         Signal.TEXT_KEYS, Signal.TEXT_FEATURES})


class LLMStages:
    """The in-LLM half of an adapter: plan, layer hooks, signals, sequence cuts; see the module docstring."""

    frames = 1          # video frames in the image span (LLaVA's frames=); the span holds frames × grid tokens

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

    def _init_llm(self, layers: int | Sequence[int] | None, stage_keep: Sequence[int] | None,
                  query: str | None) -> None:
        self.signal: LLMSignal = self.llm_method.llm_signal
        if query is not None:                          # "last" | "all": whose attention rows
            if self.signal.query not in ("last", "all") or query not in ("last", "all"):
                raise ValueError(f"query={query!r}: {self.llm_method.name} reads {self.signal.query!r}; "
                                 "query= chooses 'last' or 'all' attention rows")
            self.signal = replace(self.signal, query=query)
        self.query = self.signal.query
        self.stage_plan: tuple[Stage, ...] = self._plan(layers, stage_keep)
        self.stage_keep = tuple(s.keep for s in self.stage_plan)
        self.stages: list[StageRecord] = []

    def _plan(self, layers, stage_keep) -> tuple[Stage, ...]:
        m, n, depth = self.llm_method, self.llm_tokens, len(self.layers)
        name = m.name
        if layers is not None:
            layers = (layers,) if isinstance(layers, int) else tuple(layers)
        plan = tuple(m.plan(self.llm_budget, n, depth, layers))   # the method's declaration
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

    def _begin_run(self, start: Tensor, n: int, embeds: Tensor, mask: Tensor | None) -> Run:
        """A new prefill: its span, its real tokens (from the 2-D mask), the records cleared."""
        b, s0 = embeds.shape[:2]
        valid = mask.bool() if mask is not None else torch.ones(b, s0, dtype=torch.bool, device=embeds.device)
        run = Run(start=start.to(embeds.device), n=n, s0=s0, s_in=s0, valid=valid)
        self._run, self.stages, self.kept, self.sequence_index = run, [], None, None
        return run

    def _followup(self, cache) -> Run | None:
        """The run a decode step continues, or None (and the run is dropped) for an unrelated forward."""
        run = self._run
        if run is None or run.phase == "prefill" or cache is None or cache is not run.cache:
            self._run = None
            return None
        return run

    def _after_lm(self, module, args, output):
        run = self._run
        if run is not None and run.phase == "prefill":
            run.phase, run.cache = "decode", cache_of(output)
            self._finish(run)
        return None

    def _finish(self, run: Run) -> None:
        self._finish_llm(run)

    def _install_layer_hooks(self) -> None:
        hooked = {s.layer for s in self.stage_plan} | {s.score_layer for s in self.stage_plan}
        first = min((s.layer for s in self.stage_plan), default=len(self.layers))
        for i in sorted(hooked | set(range(first, len(self.layers)))):
            self.add_pre_hook(self.layers[i], self._layer_hook(i), with_kwargs=True)

    def _finish_llm(self, run: Run) -> None:
        """The records of one prefill: tokens per layer, stage records, the final kept span and index."""
        depth = len(self.layers)
        counts = [run.n] * depth
        for rec in run.stages:
            counts[rec.layer:] = [rec.kept.num_tokens] * (depth - rec.layer)
        self.tokens_per_layer = counts
        self.stages = list(run.stages)
        last = run.stages[-1] if run.stages else None
        if last is not None:
            self.kept, self.sequence_index = last.kept, lp.compose(run.lm_index, last.index)

    def record(self) -> CompressionRecord:
        """The last prefill's :class:`CompressionRecord` (stage records and the budget used per stage too)."""
        return CompressionRecord(kept=self.kept, tokens_per_layer=self.tokens_per_layer,
                                 sequence_index=self.sequence_index, stages=list(self.stages),
                                 extra={"stage_keep": tuple(self.stage_keep)})

    def _first_batch(self, run: Run) -> TokenBatch | None:
        """The span entering the first stage as a TokenBatch, or None for the full patch grid.

        A host that compresses before the LLM (a chain) returns what it sent, so that positions, sizes and
        sources compose across the two stages.
        """
        return None

    # -- text raters (SparseVLM), chosen by the method from the layer-0 embeddings ---------------------
    def _raters(self, embeds: Tensor, run: Run) -> tuple[Tensor, Tensor]:
        return self.llm_method.choose_raters(embeds, run.start, run.n, run.s_in, run.valid)

    # -- decoder layers ---------------------------------------------------------------------------
    def _layer_hook(self, i: int):
        def hook(module, args, kwargs):
            run = self._run
            if run is None:
                return None
            # read at call time: a host may re-plan the counts per prefill (Qwen2-VL: N per image size)
            stage = next((s for s in self.stage_plan if s.layer == i), None)
            capture = any(s.score_layer == i and s.score_layer < s.layer for s in self.stage_plan)
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

    def _decode_kwargs(self, rec: StageRecord, kwargs: dict, h: Tensor, run: Run) -> dict:
        new = {"attention_mask": lp.decode_mask(kwargs.get("attention_mask"), rec.index, run.s_in)}
        if self.positions == "renumber" and rec.shift:
            pos = kwargs["position_ids"] - rec.shift
            new["position_ids"] = pos
            new["position_embeddings"] = self.lm.rotary_emb(h, position_ids=pos)
        return new

    def _prune(self, run: Run, stage: Stage, i: int, h: Tensor, kwargs: dict) -> Tensor:
        prev = run.stages[-1] if run.stages else None
        n = prev.kept.num_tokens if prev else run.n
        s_cur = h.shape[1]
        valid = lp.take(run.valid, prev.index) if prev else run.valid
        span = lp.span_slots(run.start, n)
        signals, context = self._signals(run, stage, i, h, kwargs, valid, span, n)
        feats = lp.take(h, span)
        tagged = {**signals, SLOT: torch.arange(n, device=h.device).expand(h.shape[0], n)}
        first = self._first_batch(run) if prev is None else prev.kept
        if first is None:
            batch = TokenBatch.from_grid(feats, self.grid, frames=self.frames, context=context, **tagged)
        else:
            batch = replace(first, features=feats, signals=tagged, context=context, mask=None)
        out = self.llm_method(batch, Budget(keep=stage.keep))
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
        pos = kwargs.get("position_ids")      # Qwen2-VL's layers get None (M-RoPE lives in cos/sin)
        if pos is None and self.positions == "renumber":
            pos = torch.arange(s_cur, device=h.device)[None]
        new = {"attention_mask": lp.take_mask(kwargs.get("attention_mask"), in_order)}
        shift = prev.shift if prev else 0
        if self.positions == "renumber":
            new["position_ids"] = lp.renumber_positions(pos, local, run.start, n, k)
            new["position_embeddings"] = self.lm.rotary_emb(h_new, position_ids=new["position_ids"])
            shift += n - k
        else:
            if pos is not None:
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

    def _score_input(self, run: Run, stage: Stage, h: Tensor, kwargs: dict):
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
            if run.text_width is None:                         # one read per prefill: the widest text after a span
                run.text_width = int((s - run.start - n).max())
            m = run.text_width
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
        if want.query == "raters":                            # the raters' rows, averaged: no count is read
            slots, ok = run.raters
            rows = torch.where(ok, slots - (run.n - n), 0)      # text after the image shifts by the drops
            p = lp.take(self._rows(stage.score_layer, hs, kw, rows, valid), span, seq_dim=-1)   # [B, W, n]
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


__all__ = ["LLM_SIGNALS", "LLMStages", "Run", "SLOT", "Stage", "StageRecord"]
