"""FlowCut: information-flow-aware pruning inside the vision encoder, layer by layer.

Tong et al., "FlowCut: Rethinking Redundancy via Information Flow for Efficient Vision-Language
Models", NeurIPS 2025, arXiv 2505.19536; official code TungChintao/FlowCut @ a2ecd24
(``flowcut/modeling_clip_flowcut.py``, ``utils_flowcut.py``), which the defaults reproduce on LLaVA-1.5.

The pruning runs inside CLIP, after the MLP of each layer i ≤ F − 1, where F is the layer whose
output LLaVA reads (22 of 24), so that layer F already runs on [CLS, K patches]. With
``remaining`` = F − i − 1 layers left before it:

1. Per-layer signals (:func:`layer_signals`, from that layer's q/k/v projections): relation aⱼ = the
   CLS row of softmax(QKᵀ/√d) over the patches, mean over heads; semantic sⱼ = per head softmax over
   all tokens of ⟨v_CLS, vⱼ⟩ (no 1/√d), mean over heads, CLS entry dropped; value = ‖v̄ⱼ‖₁ of the
   head-averaged value. Score = (a/Σa + s/Σs)·‖v̄‖₁.
2. Cumulative score C = the score at layer 0, then C ← 0.5·C + 0.5·score at every later layer, as
   long as the image still holds more than K patches.
3. Pruning only where ``remaining`` is even (layers 1, 3, …, F − 1): p = round((N − K)/√remaining ·
   (1 − (H/ln N)²)) with N the current patch count and H the entropy of the normalised relation; the
   views of one image share the largest p (the official ``max`` over its batch, which holds one image's
   views); keep max(N − p, K) patches, the highest C, in raster order. At remaining = 0 every image is
   cut to exactly K. The CLS is always kept, and dropped by the LLaVA feature selection afterwards.
4. The LLM sees the K patches of layer F in raster order with contiguous positions
   (``positions = "renumber"``). Nothing is merged.

**What the next layers see, without a host sync.** The per-layer counts depend on the data, so a
sequence that shrinks at every pruning layer needs each count on the host. :class:`FlowCutRun`, the
state an adapter's layer hook carries through one forward, therefore keeps the sequence length and
hides pruned patches from the later layers' attention with an additive key bias (:meth:`FlowCutRun.key_bias`,
the same for every query: what the official compacted sequence computes, up to float summation order)
and cuts the sequence only where the count is known on the host: at the last pruning layer, to
exactly 1 + K tokens, so layer F and LLaVA's features have the official shape. An adapter that wants
the official compute saving in layers 2…F − 1 calls :meth:`FlowCutRun.compact` with the count it reads
(one sync per pruning layer).

Deviations from the official code (defaults):

- Signals are computed in float32 from the layer's projections; the official code works in the
  model's dtype (fp16) and multiplies q by 1/√d before QKᵀ, as we do.
- The entropy treats 0·ln 0 as 0; the official ``p·log p`` gives NaN there (fp16 underflow) and crashes.
- Ties in C go to the lower index (stable sort); the official ``topk`` leaves them unspecified.
- Which rows are views of one image comes from ``group`` ([B] ids, :class:`FlowCutRun`); without it each
  row is its own image. The official code shares the count over its whole batch, which the eval
  loaders make one image (its views, on LLaVA-NeXT).

Not here: the LLaVA-NeXT second cut inside the LLM after decoder layer 1 (K/2 per view in the ViT,
then the top K of all views by the last prompt token's layer-1 relation and value scores); the
Qwen2-VL variant (no CLS: a mean query). An encoder without CLS is refused.

The registered class ``flowcut`` applies one cut to a :class:`TokenBatch` (one layer's signals, no
history): the final step, top K by that layer's score. Adapters run the whole schedule with
:class:`FlowCutRun`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, TokenMethod, register_method
from tokencodec.tokens.signals import Signal

EMA = 0.5   # weight of the history in the cumulative score, hard-coded officially


class LayerSignals(NamedTuple):
    """One layer's FlowCut signals over the patches, [B, N] float32 each."""

    relation: Tensor       # CLS row of the attention over the patches, mean over heads
    semantic: Tensor       # softmax of ⟨v_CLS, v⟩ over all tokens, mean over heads, CLS dropped
    value_l1: Tensor       # L1 norm of the head-averaged value vector


class FlowCutState(NamedTuple):
    """Where a forward stands: one slot per patch still in the sequence (CLS apart)."""

    cumulative: Tensor     # [B, W] float32 cumulative score
    live: Tensor           # [B, W] bool: the slot's patch is kept so far
    index: Tensor          # [B, W] long: original raster index of the slot's patch


def _heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, D] → [B, T, H, D/H] in float32 (a view when x is float32: no copy)."""
    b, t, d = x.shape
    return x.float().view(b, t, heads, d // heads)


def key_bias(live: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Additive attention bias [B, 1, 1, 1 + W]: 0 for the CLS and live patches, the dtype's minimum
    for pruned ones (HF's convention for masked keys)."""
    keep = torch.cat([live.new_ones(live.shape[0], 1), live], dim=1)
    zero = torch.zeros((), dtype=dtype, device=live.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)[:, None, None, :]


def layer_signals(q: Tensor, k: Tensor, v: Tensor, heads: int, live: Tensor | None = None) -> LayerSignals:
    """FlowCut's signals from one layer's q_proj / k_proj / v_proj outputs [B, 1 + W, D] (CLS first).

    ``live`` [B, W]: pruned patches are left out of both softmaxes (as if removed from the sequence).
    Only the CLS query row is formed, so the cost is O(W·D) per layer.
    """
    kh, vh = _heads(k, heads), _heads(v, heads)
    qc = _heads(q[:, :1], heads) * kh.shape[-1] ** -0.5                  # the CLS query, scaled first (official)
    # one CLS row per head, [B, T, H], as products summed over d/H: k and v are read once, in place (a
    # head-split matmul copies them at every layer, which dominated the cost at batch > 1)
    logits = (kh * qc).sum(-1)
    semantic = (vh * vh[:, :1]).sum(-1)                                   # ⟨v_CLS, v⟩, no 1/√d (official)
    if live is not None:
        bias = key_bias(live)[:, 0, 0, :, None]
        logits, semantic = logits + bias, semantic + bias
    relation = logits.softmax(1)[:, 1:].mean(-1)
    semantic = semantic.softmax(1)[:, 1:].mean(-1)
    value_l1 = vh[:, 1:].mean(2).abs().sum(-1)
    return LayerSignals(relation, semantic, value_l1)


def flowcut_score(signals: LayerSignals) -> Tensor:
    """(a/Σa + s/Σs)·‖v̄‖₁ per patch, [B, W] (``utils_flowcut.compute_score``)."""
    a, s = signals.relation.float(), signals.semantic.float()
    relation = a / a.sum(dim=-1, keepdim=True)
    semantic = s / s.sum(dim=-1, keepdim=True)
    return (relation + semantic) * signals.value_l1.float()


def group_max(x: Tensor, group: Tensor | None) -> Tensor:
    """Each row's value replaced by the largest in its group ([B] ids; None: every row alone)."""
    if group is None:
        return x
    top = torch.full((x.shape[0],), -torch.inf, dtype=x.dtype, device=x.device)
    return top.scatter_reduce(0, group, x, reduce="amax").gather(0, group)


def prune_count(relation: Tensor, count: Tensor, target: int, remaining: int, group: Tensor | None = None) -> Tensor:
    """Patches to drop per row, [B] long (``utils_flowcut.adaptive_prune_ratio``), for remaining > 0.

    ``count`` [B]: live patches per row (pruned ones have zero relation). p = round((N − K)/√remaining ·
    (1 − (H/ln N)²)), the largest in each group.
    """
    p = relation.float()
    p = p / p.sum(dim=-1, keepdim=True)
    entropy = -torch.xlogy(p, p).sum(dim=-1)
    ratio = entropy / count.float().log()
    # (N − K)/√remaining is a Python float officially: the same double, rounded to float32 once
    r = ((count.double() - target) / remaining ** 0.5).float() * (1 - ratio ** 2)
    return group_max(r, group).round().long()


def start(batch: int, patches: int, device: torch.device | str | None = None) -> FlowCutState:
    """The state before layer 0: every patch live, no cumulative score yet (an empty tensor)."""
    index = torch.arange(patches, device=device).expand(batch, patches)
    return FlowCutState(torch.zeros(batch, 0, device=device), torch.ones(batch, patches, dtype=torch.bool,
                                                                            device=device), index)


def flowcut_step(state: FlowCutState, signals: LayerSignals, target: int, remaining: int,
                 group: Tensor | None = None) -> FlowCutState:
    """One layer: update the cumulative score and, where ``remaining`` is even and ≥ 0, prune.

    Rows already at ``target`` patches are left as they are (the official ``shape > target`` test).
    The new ``live`` set keeps max(N − p, K) patches by cumulative score (all but K at remaining 0);
    the slots do not move, so the result is a mask over the same sequence (see :func:`compact`).
    """
    count = state.live.sum(dim=-1)
    active = count > target
    score = flowcut_score(signals)
    first = state.cumulative.shape[1] == 0
    cumulative = score if first else torch.where(active[:, None], EMA * state.cumulative + (1 - EMA) * score,
                                                 state.cumulative)
    if remaining < 0 or remaining % 2:
        return state._replace(cumulative=cumulative)
    if remaining == 0:
        keep = torch.full_like(count, target)
    else:
        keep = (count - prune_count(signals.relation, count, target, remaining, group)).clamp_min(target)
    keep = torch.where(active, keep, count)
    ranked = cumulative.masked_fill(~state.live, -torch.inf).argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(ranked).scatter_(1, ranked, torch.arange(ranked.shape[1], device=ranked.device)
                                              .expand_as(ranked))
    return state._replace(cumulative=cumulative, live=rank < keep[:, None])


def compact(state: FlowCutState, width: int) -> tuple[Tensor, FlowCutState]:
    """Slots [B, width] to keep (live ones first, in slot order) and the state over them.

    ``width`` must be at least every row's live count (a host int: K after the last cut, or a count
    the caller read). Slots past a row's live count stay dead in the new state.
    """
    order = (~state.live).to(torch.uint8).argsort(dim=-1, stable=True)[:, :width]
    return order, FlowCutState(*(x.gather(1, order) for x in state))


def vit_schedule(feature_layer: int) -> tuple[int, ...]:
    """``remaining`` for encoder layers 0 … feature_layer − 1 (pruning where it is even)."""
    return tuple(feature_layer - i - 1 for i in range(feature_layer))


class FlowCutRun:
    """FlowCut through one forward of a CLIP-style encoder, for an adapter's per-layer hook.

    ``feature_layer``: the layer whose output is read (LLaVA-1.5: 22 of 24); ``target``: K patches per
    view; ``group`` [B]: which rows are views of one image (None: each row alone). Per forward call
    :meth:`after_layer` after every layer i < feature_layer with that layer's q/k/v projections and,
    before the next layer, apply :meth:`key_bias` (None: nothing hidden) as its attention mask; when
    :meth:`after_layer` returns slots, gather the hidden states by them (CLS at slot 0 included):
    that happens once, at the last pruning layer, and leaves [CLS, K patches in raster order].
    Afterwards ``kept`` [B, K] holds the original raster index of each kept patch.
    """

    def __init__(self, target: int, feature_layer: int, group: Tensor | None = None):
        if feature_layer < 1:
            raise ValueError(f"feature_layer={feature_layer}: FlowCut prunes in layers 1 … feature_layer − 1")
        self.target, self.feature_layer, self.group = target, feature_layer, group
        self.state: FlowCutState | None = None
        self.kept: Tensor | None = None

    def reset(self, batch: int, patches: int, device) -> None:
        self.state, self.kept = start(batch, patches, device), None

    def after_layer(self, layer: int, q: Tensor, k: Tensor, v: Tensor, heads: int) -> Tensor | None:
        """Update after encoder ``layer``; slots [B, 1 + K] of the sequence to keep (CLS first), or None."""
        if layer == 0:
            self.reset(q.shape[0], q.shape[1] - 1, q.device)
        remaining = self.feature_layer - layer - 1
        if remaining < 0:
            return None
        signals = layer_signals(q, k, v, heads, self.state.live)
        self.state = flowcut_step(self.state, signals, self.target, remaining, self.group)
        if remaining != 0:
            return None
        width = min(self.target, self.state.live.shape[1])
        slots, self.state = compact(self.state, width)
        self.kept = self.state.index
        return torch.cat([slots.new_zeros(slots.shape[0], 1), slots + 1], dim=1)

    def key_bias(self, dtype: torch.dtype) -> Tensor | None:
        """The additive key mask for the next layer, [B, 1, 1, 1 + W], or None once the sequence is cut."""
        if self.state is None or self.kept is not None:
            return None
        return key_bias(self.state.live, dtype)

    def compact(self, width: int) -> Tensor:
        """Cut the sequence now to ``width`` patches (the official shrinking; the caller read the live count):
        slots [B, 1 + width] to gather, CLS first."""
        slots, self.state = compact(self.state, width)
        return torch.cat([slots.new_zeros(slots.shape[0], 1), slots + 1], dim=1)


@register_method("flowcut")
class FlowCut(TokenMethod):
    """Information-flow pruning across the ViT's layers (Tong et al., NeurIPS 2025, arXiv 2505.19536).

    An adapter runs the per-layer schedule with :meth:`encoder_run` (a :class:`FlowCutRun` per forward:
    :class:`~tokencodec.adapters.encoder_pruning.EncoderPruningPatch`); called on a :class:`TokenBatch`,
    the method applies one cut from that layer's signals (``cls_attention``, ``cls_value_attention``,
    ``values``): the top K patches by the FlowCut score, in raster order.
    """

    stage = "vision-encoder"
    guidance = "vision"
    knob = "keep"
    needs = (Signal.CLS_ATTENTION, Signal.CLS_VALUE_ATTENTION, Signal.VALUES)
    needs_cls = True
    cls_fallback = ""           # the official Qwen2-VL variant (a mean query) is another method
    paper = "FlowCut (Tong et al., NeurIPS 2025), arXiv 2505.19536"
    positions = "renumber"      # official LLaVA: the K patches of layer 22, contiguous ids, raster order
    features = "vision"

    def encoder_run(self, budget: Budget, patches: int, feature_layer: int, group: Tensor | None = None) -> FlowCutRun:
        """The state one encoder forward carries, layer by layer: K = ``budget`` of ``patches`` per view, the
        last cut before ``feature_layer`` (0-based: the layer whose output is read)."""
        return FlowCutRun(budget.tokens(patches), feature_layer, group)

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        self.check_unpadded(batch)
        self.check_signals(batch)
        k = budget.tokens(batch.num_tokens)
        values = batch.signals[Signal.VALUES]
        signals = LayerSignals(batch.signals[Signal.CLS_ATTENTION], batch.signals[Signal.CLS_VALUE_ATTENTION],
                               values.float().abs().sum(-1))
        score = flowcut_score(signals)
        index = score.argsort(dim=-1, descending=True, stable=True)[:, :k].sort(dim=-1).values
        return batch.take(index)
