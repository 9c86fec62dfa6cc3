"""Adapters that attach token methods to HF CLIP and SigLIP vision towers, as context managers.

Supported: ``CLIPVisionModel`` and ``SiglipVisionModel`` (and the ``*VisionTransformer`` modules
of older transformers releases), or a LLaVA-style wrapper that holds one under ``.vision_tower``,
``.vision_model`` or ``.model`` (LLaVA's ``CLIPVisionTower``, HF ``LlavaModel`` and
``LlavaForConditionalGeneration``). Written against transformers 5.23, where an encoder layer is
``layer(hidden_states, attention_mask, **kw) -> Tensor`` with submodules ``layer_norm1``,
``self_attn`` (``q_proj``/``k_proj``/``v_proj``, ``num_heads``), ``layer_norm2`` and ``mlp``.

**Layer convention.** ``layer`` indexes the encoder layers, 0-based, negative from the end;
the features are that layer's raw output, which is ``hidden_states[layer]`` in HF's output for a
negative index (``hidden_states[0]`` is the embedding output). LLaVA-1.5 reads
``hidden_states[-2]``, the output of layer 22 of 24, so ``layer=-2`` is the default; attention
signals come from the same layer (VisionZip's convention) unless ``signal_layer`` says otherwise
(PruMerge: ``signal_layer=-1`` with ``layer=-2``).

**Signals** are computed from the hooked ``q_proj``/``k_proj`` outputs of the signal layer, so they
work with SDPA (no ``output_attentions``, no eager attention needed):

- ``cls_attention`` [B, N]: CLS row over the patches of softmax(QKᵀ/√d_head), summed over heads
  (VisionZip);
- ``cls_attention_single_head`` [B, N]: the same row of one full-width head, softmax(q·kᵀ/√D)
  (PruMerge);
- ``mean_attention`` [B, N]: the attention each patch receives, averaged over heads and over all
  query rows (CLS row included when there is one): the no-CLS fallback (EffiVLM-Bench);
- ``keys`` [B, N, D/H]: keys averaged over heads (VisionZip, ToMe);
- ``keys_full`` [B, N, D]: keys with the heads not split (PruMerge's similarity).

SigLIP has no CLS token, so the ``cls_*`` signals do not exist there and asking for one is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from tokencodec.adapters.base import Adapter, CompressionRecord
from tokencodec.adapters.hooks import PatchError
from tokencodec.adapters.relevance import EMBEDDING_SIGNALS, RelevanceEmbeddings, reads_embeddings
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, TokenMethod, get_method
from tokencodec.tokens.signals import CLS_SIGNALS, NO_CLS_FALLBACK, Signal, resolve_request

WITH_CLS = ("CLIPVisionModel", "CLIPVisionTransformer")
WITHOUT_CLS = ("SiglipVisionModel", "SiglipVisionTransformer")
WRAPPER_ATTRS = ("vision_tower", "vision_model", "model")  # LLaVA-style wrappers hold the tower here
# what a tower computes for methods (the LLaVA adapter supplies the same, from its tower)
TOWER_SIGNALS = frozenset({*CLS_SIGNALS, Signal.MEAN_ATTENTION, Signal.KEYS, Signal.KEYS_FULL})
SIGNALS = tuple(s.value for s in Signal if s in TOWER_SIGNALS)   # the same, by name


# -- which module is the tower --------------------------------------------------------------------

@dataclass(frozen=True)
class Tower:
    """The parts of a vision tower the adapters touch."""

    model: nn.Module           # called with pixel_values; runs embeddings and every encoder layer
    layers: nn.ModuleList
    class_token: bool          # CLIP: a CLS token at index 0; SigLIP: none
    patch_size: int

    @property
    def prefix(self) -> int:
        """Tokens in front of the patches (1 for the CLS, else 0)."""
        return int(self.class_token)

    @property
    def num_heads(self) -> int:
        return self.layers[0].self_attn.num_heads

    def index(self, layer: int) -> int:
        n = len(self.layers)
        if not -n <= layer < n:
            raise IndexError(f"layer {layer} is outside the allowed range [{-n}, {n - 1}] "
                             f"for a tower with {n} encoder layers")
        return layer % n


def _supported() -> str:
    return (f"supported: {', '.join(WITH_CLS + WITHOUT_CLS)}, or a LLaVA-style wrapper holding one "
            f"under .{', .'.join(WRAPPER_ATTRS)}")


def resolve_tower(model: nn.Module) -> Tower:
    """Find the CLIP/SigLIP vision model in ``model``; raise TypeError naming what is supported."""
    found = model
    for _ in range(4):  # wrapper → model → vision_tower → vision_model at most
        name = type(found).__name__
        if name in WITH_CLS + WITHOUT_CLS:
            emb = found.embeddings
            return Tower(model=found, layers=found.encoder.layers, class_token=name in WITH_CLS,
                         patch_size=emb.patch_size)
        inner = [getattr(found, a, None) for a in WRAPPER_ATTRS]
        inner = [m for m in inner if isinstance(m, nn.Module)]
        if not inner:
            break
        found = inner[0]
    raise TypeError(f"unsupported vision model {type(model).__name__}; {_supported()}")


# -- signals: pure functions of one layer's q_proj / k_proj outputs -------------------------------

def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, T, D] → [B, H, T, D/H]."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def attention_probs(q: Tensor, k: Tensor, heads: int, rows: slice = slice(None)) -> Tensor:
    """softmax(QKᵀ/√d_head) for the query ``rows``, [B, H, R, T], in float32 like eager attention."""
    qh, kh = split_heads(q, heads)[:, :, rows], split_heads(k, heads)
    logits = torch.matmul(qh, kh.transpose(-1, -2)) * qh.shape[-1] ** -0.5
    return logits.softmax(-1, dtype=torch.float32)


def cls_attention(q: Tensor, k: Tensor, heads: int) -> Tensor:
    """CLS row over the patches, summed over heads (VisionZip), [B, N]; only the CLS row is formed."""
    return attention_probs(q, k, heads, slice(0, 1))[:, :, 0, 1:].sum(1)


def cls_attention_single_head(q: Tensor, k: Tensor) -> Tensor:
    """CLS row over the patches of one full-width head, softmax(q·kᵀ/√D) (PruMerge), [B, N]."""
    return attention_probs(q, k, 1, slice(0, 1))[:, 0, 0, 1:]


def mean_attention(q: Tensor, k: Tensor, heads: int, prefix: int) -> Tensor:
    """Attention each patch receives, averaged over heads and all query rows, [B, N]."""
    return attention_probs(q, k, heads)[..., prefix:].mean((1, 2))


def head_mean_keys(k: Tensor, heads: int, prefix: int) -> Tensor:
    """Patch keys averaged over heads, [B, N, D/H]."""
    return split_heads(k, heads).mean(1)[:, prefix:]


def check_signal_names(names: Iterable[str], tower: Tower) -> tuple[str, ...]:
    names = tuple(names)
    unknown = [s for s in names if s not in TOWER_SIGNALS]
    if unknown:
        raise ValueError(f"a vision tower cannot supply signals {unknown}; it supplies {list(SIGNALS)}")
    cls_asked = [s for s in names if s in CLS_SIGNALS]
    if cls_asked and not tower.class_token:
        raise ValueError(f"{type(tower.model).__name__} has no CLS token, so signals {cls_asked} are "
                         f"unavailable; ask for {NO_CLS_FALLBACK!r} (the attention each patch receives, "
                         "the usual no-CLS fallback) instead")
    return names


def compute_signals(q: Tensor | None, k: Tensor, names: Iterable[str], heads: int,
                    class_token: bool) -> dict[str, Tensor]:
    """The named signals over the patch tokens from one layer's q_proj and k_proj outputs [B, T, D]."""
    prefix = int(class_token)
    make = {
        "cls_attention": lambda: cls_attention(q, k, heads),
        "cls_attention_single_head": lambda: cls_attention_single_head(q, k),
        "mean_attention": lambda: mean_attention(q, k, heads, prefix),
        "keys": lambda: head_mean_keys(k, heads, prefix),
        "keys_full": lambda: k[:, prefix:],
    }
    return {name: make[name]() for name in names}


# -- shared base: a patch on one resolved tower ---------------------------------------------------

class _TowerPatch(Adapter):
    supplies = {"pre-llm": TOWER_SIGNALS, "vision-encoder": TOWER_SIGNALS}

    def __init__(self, model: nn.Module):
        self.tower = resolve_tower(model)
        super().__init__(self.tower.model)
        self.grid: tuple[int, int] | None = None

    def _install(self) -> None:
        self.add_pre_hook(self.tower.model, self._record_grid, with_kwargs=True)

    def _record_grid(self, module, args, kwargs) -> None:
        pixels = args[0] if args else kwargs["pixel_values"]
        p = self.tower.patch_size
        self.grid = (pixels.shape[-2] // p, pixels.shape[-1] // p)


def _output(out) -> Tensor:
    return out[0] if isinstance(out, tuple) else out  # older transformers return a tuple


# -- capture: hidden states and signals of one layer ----------------------------------------------

class Captured(NamedTuple):
    hidden: Tensor                 # [B, T, D] output of the chosen layer, CLS (if any) at index 0
    signals: dict[str, Tensor]     # per-patch signals, see the module docstring


class SignalCapture(_TowerPatch):
    """While active, every forward of the tower records ``layer``'s output and the q/k of ``signal_layer``.

    Hooks only read tensors, so the model's outputs are unchanged. After a forward,
    :meth:`captured` returns the hidden states and the requested signals.
    """

    def __init__(self, model: nn.Module, layer: int = -2, signals: Sequence[str] = (),
                 signal_layer: int | None = None):
        super().__init__(model)
        self.layer = self.tower.index(layer)
        self.signal_layer = self.tower.index(layer if signal_layer is None else signal_layer)
        self.signals = check_signal_names(signals, self.tower)
        self._store: dict[str, Tensor] = {}

    def _install(self) -> None:
        super()._install()
        self.add_pre_hook(self.tower.model, lambda *_: self._store.clear())  # a new forward, a new record
        self.add_hook(self.tower.layers[self.layer], self._keeper("hidden"))
        if self.signals:
            attn = self.tower.layers[self.signal_layer].self_attn
            self.add_hook(attn.k_proj, self._keeper("k"))
            if set(self.signals) - {"keys", "keys_full"}:
                self.add_hook(attn.q_proj, self._keeper("q"))

    def _keeper(self, key: str):
        def hook(module, args, output):
            self._store[key] = _output(output)
        return hook

    def captured(self) -> Captured:
        if "hidden" not in self._store:
            raise RuntimeError("nothing captured yet: run the model inside the `with` block first")
        s = self._store
        signals = compute_signals(s.get("q"), s.get("k"), self.signals, self.tower.num_heads,
                                  self.tower.class_token) if self.signals else {}
        return Captured(s["hidden"], signals)

    def run(self, pixel_values: Tensor, **forward_kwargs) -> Captured:
        """Run the tower once (entering this context for the call if it is not active)."""
        if not self.active:
            with self:
                return self.run(pixel_values, **forward_kwargs)
        self.tower.model(pixel_values, **forward_kwargs)
        return self.captured()


def capture_signals(model: nn.Module, pixel_values: Tensor, layer: int = -2, signals: Sequence[str] = (),
                    signal_layer: int | None = None, **forward_kwargs) -> Captured:
    """Run the encoder once; return ``layer``'s hidden states [B, T, D] and the named signals [B, N, ...]."""
    return SignalCapture(model, layer, signals, signal_layer).run(pixel_values, **forward_kwargs)


# -- pre-LLM methods on the tower's output --------------------------------------------------------

def method_signals(method: TokenMethod, tower: Tower) -> tuple[str, ...]:
    """What to capture for ``method``; without a CLS, CLS signals become ``mean_attention``."""
    return resolve_request(method, TOWER_SIGNALS, tower.class_token, type(tower.model).__name__)


class VisionTokenCompressor(SignalCapture):
    """Compress the patch tokens of ``layer`` with a "pre-llm" method, as a context manager.

    Inside the block the model runs as usual (its outputs are unchanged); after every forward of
    the tower, ``last_batch`` holds the compressed :class:`TokenBatch` of that layer's patch tokens,
    with the CLS in ``batch.cls`` and the method's signals filled. ``compress(pixel_values)`` runs
    the tower and returns it. ``layer=-2`` is LLaVA's ``hidden_states[-2]`` (layer 22 of 24).
    """

    method_stages = ("pre-llm",)

    def __init__(self, model: nn.Module, method: str | TokenMethod, budget: Budget | int | float,
                 layer: int = -2, signal_layer: int | None = None, **embedding_options):
        method = get_method(method) if isinstance(method, str) else method
        if method.stage != "pre-llm":
            raise ValueError(f"method {method.name!r} acts at stage {method.stage!r}; VisionTokenCompressor "
                             "runs 'pre-llm' methods (ToMeVisionPatch for ToMe, an LLM adapter for 'llm')")
        tower = resolve_tower(model)
        needs = resolve_request(method, self.supplies["pre-llm"], tower.class_token, type(self).__name__)
        super().__init__(model, layer, tuple(s for s in needs if s in TOWER_SIGNALS), signal_layer)
        self.embeddings = None       # the relevance space of a text-guided method (CDPruner), CLIP towers only
        if reads_embeddings(needs):
            self.embeddings = RelevanceEmbeddings.from_options(type(self).__name__, tower_model=tower.model,
                                                              model=model, **embedding_options)
        elif embedding_options:
            raise TypeError(f"{type(self).__name__}: options {sorted(embedding_options)} apply to text-guided "
                            f"methods (those reading 'text_embedding'); {method.name!r} reads {list(needs)}")
        self.method = method
        self.budget = Budget.coerce(budget)
        self.last_batch: TokenBatch | None = None
        self.tokens_per_layer: list[int] | None = None      # set by subclasses that change the layers' input

    def _install(self) -> None:
        super()._install()
        self.add_hook(self.tower.model, lambda *_: self._finish())

    def token_batch(self) -> TokenBatch:
        """The uncompressed batch of the last forward: patches, CLS apart, signals filled."""
        hidden, signals = self.captured()
        p = self.tower.prefix
        cls = hidden[:, 0] if p else None
        context = {}
        if self.embeddings is not None:
            signals = {**signals, Signal.IMAGE_EMBEDDING: self.embeddings.image(hidden[:, p:])}
            context = self.embeddings.context(hidden.shape[0], hidden.device)
        return TokenBatch.from_grid(hidden[:, p:], self.grid, cls_token=cls, context=context, **signals)

    def _finish(self) -> None:
        self.last_batch = self.method(self.token_batch(), self.budget)

    def compress(self, pixel_values: Tensor, **forward_kwargs) -> TokenBatch:
        """Run the tower on ``pixel_values`` and return the compressed TokenBatch."""
        self.run(pixel_values, **forward_kwargs)
        return self.last_batch

    def record(self) -> CompressionRecord:
        return CompressionRecord(kept=self.last_batch, tokens_per_layer=self.tokens_per_layer)


class CLIPTowerCompressor(VisionTokenCompressor):
    """:class:`VisionTokenCompressor` on a CLIP tower, which also supplies CLIP's joint image–text space to
    text-guided methods (CDPruner): signal ``image_embedding`` (the patches of ``layer`` through
    ``post_layernorm`` and ``visual_projection``: the model's own, a ``CLIPVisionModelWithProjection``, or
    the ``visual_projection=`` option) and context ``text_embedding`` (``text_embedding=``, or
    ``text_encoder=`` / ``text_tokenizer=`` / ``question=``): :mod:`tokencodec.adapters.relevance`. A bare
    tower has no projector, so a method declaring ``features="projected"`` gets the layer's patch states."""

    supplies = {"pre-llm": TOWER_SIGNALS | EMBEDDING_SIGNALS}


class TowerTokenPruning(VisionTokenCompressor):
    """Compress the patch tokens after ``layer`` and let the later layers run on [CLS, kept tokens].

    Token pruning inside a ViT classifier (the EViT / ToMe setting, with any "pre-llm" method): a
    forward hook on ``layer`` replaces its output, so the remaining layers, the final norm and a
    CLS head see the compressed set; the encoder passes nothing per token between layers, so no
    mask or position has to follow. The later layers read the CLS of the method's batch (``batch.cls``:
    unchanged unless the method replaces it, as the split receiver does with a decoded one).
    After a forward: ``last_batch`` (the kept tokens, CLS apart)
    and ``tokens_per_layer`` (tokens each layer processed, CLS included).
    """

    def _install(self) -> None:
        super()._install()                    # records layer ``layer`` first, then this hook replaces it
        self.add_hook(self.tower.layers[self.layer], self._replace)

    def _finish(self) -> None:
        pass                                  # last_batch was made when ``layer`` ran

    def _replace(self, module, args, output):
        hidden = _output(output)
        batch = self.method(self.token_batch(), self.budget)
        if batch.mask is not None:
            raise NotImplementedError(f"method {self.method.name!r} kept different counts per image (a padded "
                                      "batch); tower pruning needs one count for the whole batch")
        self.last_batch = batch
        p = self.tower.prefix
        n, k = hidden.shape[1], p + batch.num_tokens
        self.tokens_per_layer = [n] * (self.layer + 1) + [k] * (len(self.tower.layers) - self.layer - 1)
        prefix = hidden[:, :p]
        if p == 1 and batch.cls is not None and batch.cls.shape == hidden[:, 0].shape:
            prefix = batch.cls[:, None].to(hidden.dtype)     # the method's CLS (a decoded one, in split inference)
        new = torch.cat([prefix, batch.features.to(hidden.dtype)], 1)
        return new if isinstance(output, Tensor) else (new, *output[1:])


class TowerVideoCoding(TowerTokenPruning):
    """Split inference on video at ``layer``: the sender codes the frames' patch tokens with a video
    method (``temporal``), the receiver rebuilds every frame's grid from what was sent and runs the
    later layers on [CLS, rebuilt grid] per frame.

    The tower's batch holds ``frames`` consecutive frames per video (B·T images). The method must
    leave the receiver's reconstruction in ``context["temporal_reconstruction"]``. The CLS of each
    frame is sent as well (not counted in ``sent``). After a forward: ``last_batch`` (what was sent),
    ``sent`` ([B] patch tokens sent per video) and ``tokens_per_layer`` (every layer processes every
    token: the saving is on the wire, not in the receiver's compute).
    """

    method_stages = ()
    video, rebuilds_frames_only = True, True

    def __init__(self, model: nn.Module, method, budget, layer: int = -2, frames: int = 2):
        super().__init__(model, method, budget, layer)
        if not self.method.rebuilds_frames:
            raise ValueError(f"method {self.method.name!r} is not a video method that rebuilds frames; "
                             "TowerVideoCoding codes a video's tokens (temporal); run spatial methods per frame "
                             "with TowerTokenPruning")
        if frames < 2:
            raise ValueError(f"frames={frames}: a video needs at least 2 frames")
        self.frames = frames
        self.sent: Tensor | None = None

    def _replace(self, module, args, output):
        hidden = _output(output)
        from tokencodec.tokens.frames import stack_frames

        frames = self.token_batch()
        bt, n, d = frames.features.shape
        out = self.method(stack_frames(frames.features, self.grid, self.frames, frames.signals), self.budget)
        recon = out.context.get("temporal_reconstruction")
        if recon is None:
            raise NotImplementedError(f"method {self.method.name!r} leaves the receiver no rebuilt frames "
                                      "(context['temporal_reconstruction'])")
        self.last_batch, self.sent = out, out.counts()
        self.tokens_per_layer = [hidden.shape[1]] * len(self.tower.layers)
        p = self.tower.prefix
        new = torch.cat([hidden[:, :p], recon.reshape(bt, n, d).to(hidden.dtype)], 1)
        return new if isinstance(output, Tensor) else (new, *output[1:])

    def record(self) -> CompressionRecord:
        return CompressionRecord(kept=self.last_batch, tokens_per_layer=self.tokens_per_layer,
                                 extra={"sent": self.sent})


# -- ToMe inside every encoder layer --------------------------------------------------------------

def size_bias(size: Tensor, dtype: torch.dtype) -> Tensor:
    """Proportional attention's additive bias log(size) on the key axis, [B, 1, 1, T]."""
    return size[..., 0].log()[:, None, None, :].to(dtype)


def merged_positions(merge, positions: Tensor, n0: int) -> Tensor:
    """Carry each token's own original index [B, T, 1] through a merge; a merged token keeps its B token's.

    A tokens (even slots) are shifted below zero, so under ``amax`` each B token keeps its own index
    (the convention of ``tome.ToMe``).
    """
    in_a = (torch.arange(positions.shape[1], device=positions.device) % 2 == 0)[:, None]
    kept = merge(torch.where(in_a, positions - n0, positions), mode="amax")
    return torch.where(kept < 0, kept + n0, kept)


class ToMeVisionPatch(_TowerPatch):
    """ToMe (Bolya et al. 2023) inside each encoder layer, between the attention residual and the MLP.

    Each layer's ``forward`` is swapped for the same block built from its own submodules plus a
    merge of ``r[i]`` tokens (bipartite soft matching on the layer's keys averaged over heads),
    with sizes carried across layers and proportional attention: log(size) is passed as the
    layer's ``attention_mask``, an additive float bias [B, 1, 1, T] that eager attention adds to
    the logits and SDPA takes as ``attn_mask``. The CLS is protected on CLIP, not on SigLIP.

    ``r`` is anything ``parse_r`` takes, spread over layers 0‥``layer``; later layers do not merge,
    so with ``layer=-2`` the final sizes and source describe LLaVA's ``hidden_states[-2]``. After a
    forward: ``last_hidden`` (output of ``layer``), ``last_sizes`` [B, T, 1] (CLS included),
    ``last_source`` [B, T, T0] bool (None when nothing merged), ``last_positions`` [B, T] (each
    token's own original index; a merged token keeps its B token's), ``token_counts`` (per layer),
    and :meth:`token_batch`. Token order after a merge is ToMe's ([unmerged A, B]), not raster order.
    """

    method_stages = ("vision-encoder",)

    @classmethod
    def build(cls, model, method, budget, **options) -> ToMeVisionPatch:
        """ToMe's knob is r, the tokens merged per layer: ``Budget(r=...)`` or anything ``parse_r`` takes; a keep
        budget becomes r per layer by ToMe's own schedule (:func:`~tokencodec.tokens.compress.tome.keep_schedule`)
        over the merging layers (0‥``layer``)."""
        from tokencodec.tokens.compress import Budget
        from tokencodec.tokens.compress.tome import keep_schedule

        if isinstance(budget, Budget) and budget.r is None:
            tower = resolve_tower(model)
            side = tower.model.config.image_size // tower.patch_size
            layers = tower.index(options.get("layer", -1)) + 1
            budget = keep_schedule(side * side, budget.tokens(side * side), layers)
        return cls(model, budget.r if isinstance(budget, Budget) else budget, **options)

    def __init__(self, model: nn.Module, r, layer: int = -1, prop_attn: bool = True,
                 trace_source: bool = True):
        from tokencodec.tokens.compress import tome  # the merge functions; imported when used

        super().__init__(model)
        self._tome = tome
        impl = getattr(self.tower.layers[0].self_attn.config, "_attn_implementation", "eager")
        if prop_attn and impl not in ("eager", "sdpa"):
            raise ValueError(f"proportional attention needs an additive attention bias, which attention "
                             f"implementation {impl!r} cannot take; call model.set_attn_implementation("
                             "'sdpa') or 'eager', or pass prop_attn=False")
        n = len(self.tower.layers)
        self.layer = self.tower.index(layer)
        self.r = tome.parse_r(self.layer + 1, r) + [0] * (n - self.layer - 1)
        self.prop_attn, self.trace_source = prop_attn, trace_source
        self._reset()

    def _reset(self) -> None:
        self._size: Tensor | None = None
        self._source: Tensor | None = None
        self._keys: Tensor | None = None
        self._pos: Tensor | None = None
        self.token_counts: list[int] = []
        self.last_hidden = self.last_sizes = self.last_source = self.last_positions = None

    def _install(self) -> None:
        super()._install()
        for i, layer in enumerate(self.tower.layers):
            self.add_hook(layer.self_attn.k_proj, self._keep_keys)
            self.swap(layer, "forward", self._block(i, layer))

    def _keep_keys(self, module, args, output) -> None:
        self._keys = output

    def _block(self, i: int, layer: nn.Module):
        heads = layer.self_attn.num_heads

        def forward(hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs) -> Tensor:
            if attention_mask is not None:
                raise NotImplementedError("ToMeVisionPatch does not combine merging with an attention mask")
            if i == 0:  # every forward enters layer 0 first
                self._reset()
                self._t0 = hidden_states.shape[1]
            if self._size is None:
                self._size = torch.ones_like(hidden_states[..., :1])
                self._pos = torch.arange(self._t0, dtype=torch.float32, device=hidden_states.device)
                self._pos = self._pos.expand(hidden_states.shape[0], -1)[..., None]
            bias = size_bias(self._size, hidden_states.dtype) if self.prop_attn else None

            residual = hidden_states
            x, _ = layer.self_attn(layer.layer_norm1(hidden_states), attention_mask=bias, **kwargs)
            x = residual + x
            if self.r[i] > 0:
                metric = split_heads(self._keys, heads).mean(1)
                merge, _ = self._tome.bipartite_soft_matching(metric, self.r[i], self.tower.class_token)
                if self.trace_source:
                    self._source = self._tome.merge_source(merge, x, self._source)
                x, self._size = self._tome.merge_wavg(merge, x, self._size)
                self._pos = merged_positions(merge, self._pos, self._t0)
            self._keys = None
            residual = x
            x = residual + layer.mlp(layer.layer_norm2(x))

            self.token_counts.append(x.shape[1])
            if i == self.layer:
                self.last_hidden, self.last_sizes, self.last_source = x, self._size, self._source
                self.last_positions = self._pos[..., 0].long()
            return x

        return forward

    def tokens_after(self, patches: int) -> int:
        """Patch tokens left at ``layer`` of a forward on ``patches`` patches (known before it runs)."""
        return patches - sum(self.r)

    def token_batch(self) -> TokenBatch:
        """The tokens of ``layer`` after the last forward: CLS apart, sizes, source, positions."""
        if self.last_hidden is None:
            raise RuntimeError("nothing recorded yet: run the model inside the `with` block first")
        x, p = self.last_hidden, self.tower.prefix
        source = self.last_source
        if source is None:  # nothing merged
            source = torch.eye(self._t0, dtype=torch.bool, device=x.device).expand(x.shape[0], -1, -1)
        return TokenBatch(features=x[:, p:], grid=self.grid, cls=x[:, 0] if p else None,
                          sizes=self.last_sizes[:, p:, 0].to(x.dtype), source=source[:, p:, p:].bool(),
                          positions=self.last_positions[:, p:] - p)

    def record(self) -> CompressionRecord:
        kept = self.token_batch() if self.last_hidden is not None else None
        return CompressionRecord(kept=kept, tokens_per_layer=list(self.token_counts) or None)


__all__ = ["SIGNALS", "TOWER_SIGNALS", "CLIPTowerCompressor", "Captured", "PatchError", "SignalCapture",
           "ToMeVisionPatch", "Tower",
           "TowerTokenPruning", "TowerVideoCoding", "VisionTokenCompressor", "capture_signals", "compute_signals",
           "resolve_tower"]
