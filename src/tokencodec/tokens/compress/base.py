"""The one calling convention of token-compression methods, and their registry.

Every method is a class registered with ``@register_method("name")``. It declares where it acts
(``stage``), what guides it (``guidance``), its knob, and the signals it reads; it is called as
``method(batch, budget) -> TokenBatch``. The signals (CLS attention, keys, text attention…) are
put into ``batch.signals`` by the model adapter, which reads ``needs`` to know what to capture.
"""

from __future__ import annotations

import numbers
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import torch
from torch import Tensor

from tokencodec.registry import Registry
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.signals import DESCRIPTIONS, Signal, as_signals

# The signal vocabulary, by name → where it lives, shape and meaning (tokens/signals.py holds the types)
SIGNALS: dict[str, str] = {s.value: DESCRIPTIONS[s] for s in Signal}

Stage = Literal["vision-encoder", "pre-llm", "llm"]
Guidance = Literal["vision", "text"]
Knob = Literal["keep", "r"]


class BudgetError(ValueError):
    """An impossible budget; the message names the allowed range."""


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class Budget:
    """How many tokens to keep: a count (``keep``), or a fraction of N (``ratio``), or ToMe's ``r``."""

    keep: int | None = None
    ratio: float | None = None
    r: int | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.keep, self.ratio, self.r) if x is not None]
        if len(given) != 1:
            raise BudgetError("give exactly one of keep (a count), ratio (a fraction in (0, 1]) or r")
        # numpy scalars are accepted and stored as Python numbers (budgets end up in JSON records)
        if self.keep is not None:
            if not _is_int(self.keep):
                raise BudgetError(f"keep={self.keep!r} must be an int (a token count >= 1), not "
                                  f"{type(self.keep).__name__}")
            if self.keep < 1:
                raise BudgetError(f"keep={self.keep!r} is outside the allowed range [1, N] (a token count)")
            object.__setattr__(self, "keep", int(self.keep))
        if self.ratio is not None:
            if not _is_real(self.ratio):
                raise BudgetError(f"ratio={self.ratio!r} must be a real number (int or float) in (0, 1], not "
                                  f"{type(self.ratio).__name__}")
            if not 0 < self.ratio <= 1:
                raise BudgetError(f"ratio={self.ratio!r} is outside the allowed range (0, 1] (a kept fraction)")
            object.__setattr__(self, "ratio", float(self.ratio))
        if self.r is not None:
            if not _is_int(self.r):
                raise BudgetError(f"r={self.r!r} must be an int (tokens ToMe merges per layer, >= 0), not "
                                  f"{type(self.r).__name__}")
            if self.r < 0:
                raise BudgetError(f"r={self.r!r} is outside the allowed range [0, N/2] (tokens ToMe merges per layer)")
            object.__setattr__(self, "r", int(self.r))

    @classmethod
    def coerce(cls, x: Budget | int | float) -> Budget:
        """A Budget as is; an int is a keep count, a float a keep ratio."""
        if isinstance(x, Budget):
            return x
        if _is_int(x):
            return cls(keep=x)
        if _is_real(x):
            return cls(ratio=x)
        raise BudgetError(f"budget {x!r} must be a Budget, an int (keep count) or a float (keep ratio in (0, 1])")

    def tokens(self, n: int, minimum: int = 1) -> int:
        """The kept count for n tokens; raises BudgetError naming the range [minimum, n]."""
        if self.r is not None:
            raise BudgetError("this method takes a token budget (keep or ratio), not ToMe's r")
        k = self.keep if self.keep is not None else max(minimum, round(self.ratio * n))
        if not minimum <= k <= n:
            raise BudgetError(f"token budget {k} is outside the allowed range [{minimum}, {n}] for {n} tokens")
        return k


# -- typed method options ----------------------------------------------------------------------------

class MethodOptionError(ValueError):
    """An unknown or ill-typed method option; the message lists every allowed option."""


def _type_name(hint) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is tuple:
        return f"tuple[{_type_name(args[0])}, ...]"
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


_NO = object()  # "does not fit the hint"


def _convert(value, hint):
    """``value`` as ``hint`` says (a list becomes a tuple, an int a float), or _NO."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else _NO
    if origin in (Union, types.UnionType):
        for a in args:
            out = _convert(value, a)
            if out is not _NO:
                return out
        return _NO
    if origin is tuple:  # only tuple[X, ...]: sequences of options come from YAML as lists
        if not isinstance(value, list | tuple):
            return _NO
        items = [_convert(v, args[0]) for v in value]
        return _NO if any(v is _NO for v in items) else tuple(items)
    if hint is type(None):
        return None if value is None else _NO
    if hint is bool:
        return value if isinstance(value, bool) else _NO
    if hint is int:
        return int(value) if _is_int(value) else _NO
    if hint is float:
        return float(value) if _is_real(value) else _NO
    if hint is str:
        return value if isinstance(value, str) else _NO
    raise TypeError(f"option type {hint!r} is not supported by MethodOptions.parse")


@dataclass(frozen=True)
class MethodOptions:
    """A method's options: subclasses are frozen dataclasses, one typed field with a default per option.

    A subclass may define ``__post_init__`` to check values (ranges, lengths); its ValueError is
    reported as a MethodOptionError naming the method.
    """

    @classmethod
    def allowed(cls) -> str:
        """Every option with its type and default, e.g. "merge ('add' | 'mean', default 'add')"."""
        hints = get_type_hints(cls)
        parts = [f"{f.name} ({_type_name(hints[f.name])}, default {f.default!r})"
                 for f in sorted(fields(cls), key=lambda f: f.name)]
        return ", ".join(parts) or "none"

    @classmethod
    def parse(cls, raw: Mapping, method: str) -> MethodOptions:
        """Check every option in ``raw`` against the fields and their type hints, then build the options."""
        hints = get_type_hints(cls)
        names = {f.name for f in fields(cls)}
        values = {}
        for key, value in raw.items():
            if key not in names:
                raise MethodOptionError(f"method {method!r}: unknown option {key!r}; allowed: {cls.allowed()}")
            out = _convert(value, hints[key])
            if out is _NO:
                raise MethodOptionError(f"method {method!r}: option {key!r} must be {_type_name(hints[key])}, "
                                        f"got {value!r}; allowed: {cls.allowed()}")
            values[key] = out
        try:
            return cls(**values)
        except MethodOptionError:
            raise
        except ValueError as e:
            raise MethodOptionError(f"method {method!r}: {e}; allowed: {cls.allowed()}") from None

    def non_default(self) -> dict:
        """The options that differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def as_dict(self) -> dict:
        """Every option, tuples as lists (JSON-ready)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, tuple) else v


class OptionAttribute:
    """A method attribute that reads an option: the instance's value, or the default on the class.

    Adapters read ``method.layer`` and tests read ``FastV.layer`` as class info.
    """

    def __set_name__(self, owner, name: str) -> None:
        self.attr = name

    def __get__(self, obj, owner=None):
        if obj is None:
            return next(f.default for f in fields(owner.Options) if f.name == self.attr)
        return getattr(obj.options, self.attr)


def scaled_layers(layers: Sequence[int], depth: int, reference_depth: int = 32) -> tuple[int, ...]:
    """Map layers of a ``reference_depth``-layer LLM onto one of ``depth`` layers: same relative depth,
    at least layer 1 (layer 0 must see every token to score them), strictly increasing, < depth."""
    out: list[int] = []
    for layer in layers:
        k = max(1, round(layer * depth / reference_depth), (out[-1] + 1) if out else 1)
        if k < depth:
            out.append(k)
    if not out:
        raise ValueError(f"an LLM of {depth} layers is too shallow for pruning at layers {list(layers)}")
    return tuple(out)


@dataclass(frozen=True)
class LLMStage:
    """One in-LLM pruning stage of a method's plan."""

    layer: int          # pruning happens before this LLM layer
    score_layer: int    # the layer whose attention / keys score the tokens
    keep: int           # image tokens kept by the method at this stage


@dataclass(frozen=True)
class LLMSignal:
    """What an in-LLM method reads at a pruning stage, recomputed by the adapter from ``score_layer``'s input.

    ``query``: whose attention rows over the image span, head-averaged: "last" (the last real prompt
    token → ``text_attention``), "all" (the mean over every real query row → ``text_attention``),
    "raters" (text tokens chosen once from the layer-0 embeddings → ``context["rater_attention"]``),
    or None (no attention). ``keys``: the post-RoPE keys, kv heads concatenated → ``keys``;
    ``normed``: the stage input through the LLM's final norm → ``normed_features``; ``text``: the same
    two for the text after the image → ``context["text_keys"]``/``["text_features"]``.
    """

    query: Literal["last", "all", "raters"] | None = "last"
    keys: bool = False
    normed: bool = False
    text: bool = False


class TokenMethod:
    """Base class; subclasses set the class attributes and implement ``__call__``."""

    name: ClassVar[str] = ""
    stage: ClassVar[Stage] = "pre-llm"
    guidance: ClassVar[Guidance] = "vision"
    knob: ClassVar[Knob] = "keep"
    needs: ClassVar[tuple[Signal, ...]] = ()   # typed signal requests the adapter must supply (tokens/signals.py)
    needs_cls: ClassVar[bool] = False          # see ``cls_fallback`` for encoders without CLS
    cls_fallback: ClassVar[str] = ""           # what the method does without a CLS token
    paper: ClassVar[str] = ""
    Options: ClassVar[type[MethodOptions]] = MethodOptions   # no options
    # How an LLM adapter lays out this method's output (declarations read by adapters, never names):
    # "renumber": contiguous position ids and the method's output order kept; "original": each token
    # keeps its representative patch's position and the span is sorted by it (causal order = positions).
    positions: ClassVar[str] = "original"
    features: ClassVar[str] = "vision"          # pre-LLM: "vision" (pre-projector) or "projected" embeddings
    signal_layer: ClassVar[int | None] = None   # pre-LLM: vision layer of the q/k signals (None: the feature layer)
    sends_cls: ClassVar[bool] = False           # pre-LLM: the CLS goes into the LLM first, counted in the budget
    video: ClassVar[bool] = False               # pre-LLM: takes a whole video batch (frames > 1); a spatial method
                                                # (False) runs on each frame alone at K/T (tokens/frames.py)
    rebuilds_frames: ClassVar[bool] = False     # video: context["temporal_reconstruction"] rebuilds every frame
    whole_frames: ClassVar[bool] = False        # video: sends some frames whole and nothing of the others
    # pre-LLM on AnyRes images (LLaVA-NeXT: a base view and grid crops), as the method's official code does:
    # "per-crop" (each view alone, at the budget per view) or "joint" (one pool over the image's packed span)
    crops: ClassVar[str] = "per-crop"

    def __init__(self, seed: int = 0, **options):
        self.seed = seed
        self.options = self.Options.parse(options, self.name or type(self).__name__)

    @property
    def label(self) -> str:
        """The name plus the non-default options, sorted: "visionzip(merge=mean)"."""
        changed = self.options.non_default()
        if not changed:
            return self.name
        return self.name + "(" + ",".join(f"{k}={_plain(v)}" for k, v in sorted(changed.items())) + ")"

    def describe(self) -> dict:
        """Provenance: name, every option value, stage, paper and seed."""
        return {"name": self.name, "options": self.options.as_dict(), "stage": self.stage,
                "paper": self.paper, "seed": self.seed}

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        raise NotImplementedError

    def grid_tokens(self, budget: Budget, n: int, cls: bool) -> int | None:
        """Pre-LLM on AnyRes crops (per crop, ``n`` patches per view; ``cls``: the view has a CLS): how many
        leading tokens of each crop's output go back onto the stitched crop grid, in raster order over all
        crops; the others follow every crop's grid tokens (and sent CLS), crop after crop, in the method's
        order. None (default): all of them (CDPruner's and VisPruner's official LLaVA-NeXT layout)."""
        return None

    # -- in-LLM methods: declarations an LLM adapter interprets (never a method's name) -----------
    @property
    def llm_signal(self) -> LLMSignal:
        """What the adapter computes for each stage (default: the last prompt token's attention row)."""
        return LLMSignal()

    reference_depth: ClassVar[int] = 32   # in-LLM: the LLM depth its layers were published for (LLaVA-1.5-7B)

    def layers_for(self, depth: int) -> tuple[int, ...]:
        """The ``layers`` option for an LLM of ``depth`` layers: the published ones at the same relative depth.

        The default scales the method's ``layers`` (or ``layer``); a method whose option is not the
        pruning layer (SparseVLM scores at j and prunes before j+1) overrides it.
        """
        published = getattr(self, "layers", None) or (getattr(self, "layer", 2),)
        return scaled_layers(published, depth, self.reference_depth)

    def plan(self, budget: Budget, n: int, depth: int, layers: tuple[int, ...] | None = None) -> tuple[LLMStage, ...]:
        """The pruning stages for ``n`` image tokens in a ``depth``-layer LLM (``layers`` overrides the method's).

        Default: one stage before layer K (``layers`` or the method's ``layer``, 2 if it has none), scored
        with layer K−1, keeping the budget's count. The adapter checks the range and order of the layers.
        """
        k = layers or (getattr(self, "layer", 2),)
        if len(k) != 1:
            raise ValueError(f"{self.name} prunes at one layer; got layers={k}")
        return (LLMStage(k[0], k[0] - 1, budget.tokens(n)),)

    def check_unpadded(self, batch: TokenBatch) -> None:
        """Refuse a padded batch (one whose images keep different counts): this method needs real tokens only."""
        if batch.mask is not None:
            raise ValueError(f"method {self.name!r} needs every slot to be a real token; this batch is padded "
                             "(mask set, e.g. by adaptive PruMerge); compress its images one at a time")

    def check_signals(self, batch: TokenBatch) -> None:
        missing = [s for s in self.needs if s not in batch.signals and s not in batch.context]
        if missing:
            raise ValueError(f"method {self.name!r} needs signals {missing}; the batch has "
                             f"{sorted(batch.signals) + sorted(batch.context)}. "
                             "Use a model adapter that captures them.")


# -- score-only methods ------------------------------------------------------------------------------

def top_k_index(scores: Tensor, k: int, mask: Tensor | None = None) -> Tensor:
    """Indices [B, k] of the k highest scores per row, sorted ascending (raster order).

    Ties go to the lower index (stable sort); padded slots (``mask`` False) rank last.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, -torch.inf)
    top = scores.argsort(dim=1, descending=True, stable=True)[:, :k]
    return top.sort(dim=1).values


def keep_top_k(batch: TokenBatch, scores: Tensor, k: int) -> TokenBatch:
    """The batch reduced to its k highest-scoring tokens per image, in raster order."""
    out = batch.take(top_k_index(scores, k, batch.mask))
    if out.mask is not None and bool(out.mask.all()):
        out = replace(out, mask=None)
    return out


class ScoreMethod(TokenMethod):
    """A method that only scores tokens: subclasses implement ``score``; the top-K are kept in raster order."""

    def score(self, batch: TokenBatch) -> Tensor:
        """One score per token, [B, N]; higher is kept first."""
        raise NotImplementedError

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        scores = self.score(batch)
        if tuple(scores.shape) != (batch.batch_size, batch.num_tokens):
            raise ValueError(f"method {self.name!r}: score has shape {tuple(scores.shape)}, expected "
                             f"[B={batch.batch_size}, N={batch.num_tokens}]")
        return keep_top_k(batch, scores, budget.tokens(batch.num_tokens))


METHODS: Registry[type[TokenMethod]] = Registry("token-compression method", group="tokencodec.methods")


def register_method(name: str):
    def decorator(cls: type[TokenMethod]) -> type[TokenMethod]:
        as_signals(cls.needs, f"method {name!r}")    # a typo in a request fails at import, not in a run
        return METHODS.register_named(name)(cls)

    return decorator


def get_method(name: str, **options) -> TokenMethod:
    return METHODS.get(name)(**options)
