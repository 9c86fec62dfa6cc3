"""Pruning inside a CLIP-style vision encoder, layer by layer, to a keep budget (FlowCut), as a context manager.

A "vision-encoder" method that declares the per-layer signals (``cls_attention``, ``cls_value_attention``,
``values``) and gives an ``encoder_run(budget, patches, feature_layer, group)`` (the state one forward
carries: :class:`~tokencodec.tokens.compress.flowcut.FlowCutRun`) runs here. ToMe, the other in-encoder
method, reads keys and merges inside each block: :class:`~tokencodec.adapters.vision_tower.ToMeVisionPatch`.

Hooks, per forward of the tower (no layer's ``forward`` is replaced):

- layers 0 … F − 1 (F = ``layer``, the layer whose output is read; LLaVA-1.5: 22, ``layer=-2``): their
  ``q_proj`` / ``k_proj`` / ``v_proj`` outputs are recorded, and after the layer the run updates its
  state from them (:meth:`FlowCutRun.after_layer`); when it returns slots (once, after layer F − 1), the
  layer's output is gathered to [CLS, K patches in raster order], so layer F and every later one run on
  1 + K tokens;
- before each layer, the run's additive key bias (:meth:`FlowCutRun.key_bias`: 0 for live tokens, the
  dtype's minimum for pruned ones, [B, 1, 1, T]) is passed as the layer's ``attention_mask``, so patches
  pruned at an earlier layer take no part in attention although the sequence keeps its length until the
  last cut. Eager attention adds the bias, SDPA takes it as ``attn_mask``; FlashAttention cannot (refused).

No value is read back (the last cut has a size known on the host). The official code instead shrinks the
sequence at every pruning layer (one count read each); the kept sets are the same (FlowCut's card in
docs/token-methods.md), the compute of layers 1 … F − 1 is not: ``tokens_per_layer`` records what each
layer processed here (CLS included), so the cost of a point is this implementation's.

After a forward: ``token_batch()`` (layer F's K patches, CLS apart, ``positions`` = their raster index)
and ``record()``. ``group`` [B] marks rows that are views of one image (they share FlowCut's counts).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tokencodec.adapters.base import CompressionRecord
from tokencodec.adapters.vision_tower import _output, _TowerPatch
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, TokenMethod, get_method
from tokencodec.tokens.signals import Signal

# what the hooks feed a layer-wise run: each layer's q/k/v, from which it forms these signals
LAYER_SIGNALS = frozenset({Signal.CLS_ATTENTION, Signal.CLS_VALUE_ATTENTION, Signal.VALUES})


class EncoderPruningPatch(_TowerPatch):
    """Run a layer-wise pruning method (``method.encoder_run``) inside the tower; see the module docstring."""

    method_stages = ("vision-encoder",)
    supplies = {"vision-encoder": LAYER_SIGNALS}

    def __init__(self, model: nn.Module, method: str | TokenMethod, budget: Budget | int | float,
                 layer: int = -2, group: Tensor | None = None):
        method = get_method(method) if isinstance(method, str) else method
        if method.stage != "vision-encoder" or not callable(getattr(method, "encoder_run", None)):
            raise ValueError(f"method {method.name!r} is not a 'vision-encoder' method that prunes layer by layer "
                             "(it has no encoder_run); ToMeVisionPatch merges (ToMe), VisionTokenCompressor runs "
                             "'pre-llm' methods")
        super().__init__(model)
        if not self.tower.class_token:
            raise ValueError(f"method {method.name!r} needs a CLS token; {type(self.tower.model).__name__} has none")
        impl = getattr(self.tower.layers[0].self_attn.config, "_attn_implementation", "eager")
        if impl not in ("eager", "sdpa"):
            raise ValueError(f"{method.name} hides pruned tokens with an additive attention bias, which attention "
                             f"implementation {impl!r} cannot take; call model.set_attn_implementation('sdpa') "
                             "or 'eager'")
        self.layer = self.tower.index(layer)
        if self.layer < 1:
            raise ValueError(f"layer={layer}: {method.name} prunes in the layers before the one read, so it must "
                             f"be layer 1 or later (the tower has {len(self.tower.layers)} layers)")
        cfg = self.tower.model.config
        side = cfg.image_size // self.tower.patch_size
        self.patches = side * side
        self.method, self.budget = method, Budget.coerce(budget)
        self.group = group
        self.run = method.encoder_run(self.budget, self.patches, self.layer, group)   # checks the budget
        self._qkv: dict[str, Tensor] = {}
        self.token_counts: list[int] = []
        self.last_hidden: Tensor | None = None

    def _install(self) -> None:
        super()._install()
        self.add_pre_hook(self.tower.model, lambda *_: self._reset())
        heads = self.tower.num_heads
        for i, layer in enumerate(self.tower.layers):
            self.add_pre_hook(layer, self._mask_pruned, with_kwargs=True)
            if i < self.layer:
                for name in ("q_proj", "k_proj", "v_proj"):
                    self.add_hook(getattr(layer.self_attn, name), self._keeper(name))
                self.add_hook(layer, self._after(i, heads))
        self.add_hook(self.tower.layers[self.layer], self._keep_feature_layer)

    def tokens_after(self, patches: int) -> int:
        """Patch tokens left at ``layer`` (K, known before any forward)."""
        return min(self.run.target, patches)

    def _reset(self) -> None:
        self.run = self.method.encoder_run(self.budget, self.patches, self.layer, self.group)   # a new forward
        self._qkv.clear()
        self.token_counts = []
        self.last_hidden = None

    def _keeper(self, name: str):
        def hook(module, args, output):
            self._qkv[name] = output
        return hook

    def _mask_pruned(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.token_counts.append(hidden.shape[1])
        bias = self.run.key_bias(hidden.dtype)
        if bias is None:
            return None
        given = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        if given is not None:
            raise NotImplementedError(f"{self.method.name} does not combine its key bias with an attention mask")
        if len(args) > 1:
            args = (args[0], bias, *args[2:])
        else:
            kwargs["attention_mask"] = bias
        return args, kwargs

    def _after(self, i: int, heads: int):
        def hook(module, args, output):
            q = self._qkv
            slots = self.run.after_layer(i, q["q_proj"], q["k_proj"], q["v_proj"], heads)
            if slots is None:
                return None
            hidden = _output(output)
            new = hidden.gather(1, slots[..., None].expand(-1, -1, hidden.shape[-1]))
            return new if isinstance(output, Tensor) else (new, *output[1:])
        return hook

    def _keep_feature_layer(self, module, args, output) -> None:
        self.last_hidden = _output(output)

    def token_batch(self) -> TokenBatch:
        """Layer ``layer``'s K patches after the last forward: CLS apart, positions = raster index."""
        if self.last_hidden is None or self.run.kept is None:
            raise RuntimeError("nothing recorded yet: run the model inside the `with` block first")
        x = self.last_hidden
        return TokenBatch(features=x[:, 1:], grid=self.grid, cls=x[:, 0],
                          positions=self.run.kept.to(torch.long))

    def record(self) -> CompressionRecord:
        kept = self.token_batch() if self.last_hidden is not None else None
        return CompressionRecord(kept=kept, tokens_per_layer=list(self.token_counts) or None)


__all__ = ["LAYER_SIGNALS", "EncoderPruningPatch"]
