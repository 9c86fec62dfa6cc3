"""The one calling convention of token-compression methods, and their registry.

Every method is a class registered with ``@register_method("name")``. It declares where it acts
(``stage``), what guides it (``guidance``), its knob, and the signals it reads; it is called as
``method(batch, budget) -> TokenBatch``. The signals (CLS attention, keys, text attention…) are
put into ``batch.signals`` by the model adapter, which reads ``needs`` to know what to capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from tokencodec.registry import Registry
from tokencodec.tokens.batch import TokenBatch

# The signals adapters supply, by name. Per-token signals live in ``batch.signals`` ([B, N, ...]);
# the others in ``batch.context``.
SIGNALS: dict[str, str] = {
    "cls_attention": "signals [B, N]: CLS row of softmax(QKᵀ/√d_head) over the patches, summed over heads",
    "cls_attention_single_head": "signals [B, N]: CLS row of a full-width single-head softmax(q·kᵀ/√D)",
    "mean_attention": "signals [B, N]: attention each patch receives, mean over heads and query rows",
    "keys": "signals [B, N, Dk]: the layer's keys averaged over heads",
    "keys_full": "signals [B, N, D]: the layer's keys with the heads concatenated",
    "text_attention": "signals [B, N]: text-to-image attention (FastV: the last prompt token's row)",
    "normed_features": "signals [B, N, D]: hidden states after the LLM's final norm (DART)",
    "rater_attention": "context [B, R, N]: attention of SparseVLM's rater text tokens over the image",
    "text_keys": "context [B, M, Dk]: keys of the text tokens after the image (DART's text pivots)",
    "text_features": "context [B, M, D]: normed hidden states of those text tokens (DART)",
}

Stage = Literal["vision-encoder", "pre-llm", "llm"]
Guidance = Literal["vision", "text"]
Knob = Literal["keep", "r"]


class BudgetError(ValueError):
    """An impossible budget; the message names the allowed range."""


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
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise BudgetError(f"keep ratio {self.ratio} is outside the allowed range (0, 1]")

    def tokens(self, n: int, minimum: int = 1) -> int:
        """The kept count for n tokens; raises BudgetError naming the range [minimum, n]."""
        if self.r is not None:
            raise BudgetError("this method takes a token budget (keep or ratio), not ToMe's r")
        k = self.keep if self.keep is not None else max(minimum, round(self.ratio * n))
        if not minimum <= k <= n:
            raise BudgetError(f"token budget {k} is outside the allowed range [{minimum}, {n}] for {n} tokens")
        return k


class TokenMethod:
    """Base class; subclasses set the class attributes and implement ``__call__``."""

    name: ClassVar[str] = ""
    stage: ClassVar[Stage] = "pre-llm"
    guidance: ClassVar[Guidance] = "vision"
    knob: ClassVar[Knob] = "keep"
    needs: ClassVar[tuple[str, ...]] = ()      # signal names the adapter must supply
    needs_cls: ClassVar[bool] = False          # see ``cls_fallback`` for encoders without CLS
    cls_fallback: ClassVar[str] = ""           # what the method does without a CLS token
    paper: ClassVar[str] = ""

    def __init__(self, seed: int = 0, **options):
        self.seed = seed
        self.options = options

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        raise NotImplementedError

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


METHODS: Registry[type[TokenMethod]] = Registry("token-compression method")


def register_method(name: str):
    def decorator(cls: type[TokenMethod]) -> type[TokenMethod]:
        cls.name = name
        return METHODS.register(name)(cls)

    return decorator


def get_method(name: str, **options) -> TokenMethod:
    return METHODS.get(name)(**options)
