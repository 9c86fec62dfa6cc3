"""Token compression between EfficientNet-Lite0's last feature map and its classifier.

The model (:mod:`tokencodec.models.efficientnet_lite0`) exposes ``token_batch(x)`` and
``classify_batch(batch)``; this adapter swaps its ``forward`` for "tokens → method → size-weighted
pooling → head" while active. A CNN has no attention and no keys, so it supplies no signals: only
methods that read the features alone run (random, pooling, DivPrune).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from tokencodec.adapters.base import Adapter, CompressionRecord
from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress import METHODS, Budget, TokenMethod, get_method


class EfficientNetTokenCompression(Adapter):
    """While active, ``model(x)`` compresses the final feature map's ``h·w`` tokens with ``method`` at
    ``budget`` and classifies the kept tokens; ``last_batch`` holds them after each forward."""

    method_stages: ClassVar[tuple[str, ...]] = ("pre-llm",)

    def __init__(self, model: nn.Module, method: str | TokenMethod, budget: Budget | int | float, seed: int = 0):
        super().__init__(model)
        if not all(hasattr(model, a) for a in ("token_batch", "classify_batch")):
            raise TypeError(f"EfficientNetTokenCompression supports EfficientNetLite0, not {type(model).__name__}")
        self.method = get_method(method, seed=seed) if isinstance(method, str) else method
        if self.supports(type(self.method)) == "—":
            raise ValueError(f"method {self.method.name!r} needs {list(self.method.needs) or 'a ViT'} "
                             f"(stage {self.method.stage}); EfficientNet-Lite0 tokens have no attention or keys. "
                             f"Supported here: {', '.join(supported_methods())}")
        self.budget = Budget.coerce(budget)
        self.last_batch: TokenBatch | None = None

    @classmethod
    def supports(cls, method_cls, has_cls: bool = False) -> str:
        if method_cls.needs_cls:          # no CLS and no attention to stand in for it
            return "—"
        return super().supports(method_cls, has_cls=False)

    def _install(self) -> None:
        model = self.model

        self.swap(model, "forward", lambda x: self.classify(model.token_batch(x)))

    def classify(self, tokens: TokenBatch) -> Tensor:
        """Logits of the head on ``tokens`` after the method: what ``model(x)`` does from the feature map's
        tokens, callable on tokens computed once and reused across budgets."""
        self.last_batch = self.method(tokens, self.budget)
        return self.model.classify_batch(self.last_batch)

    def record(self) -> CompressionRecord:
        return CompressionRecord(kept=self.last_batch)


def supported_methods() -> list[str]:
    return [n for n in METHODS.names() if EfficientNetTokenCompression.supports(METHODS.get(n)) != "—"]


__all__ = ["EfficientNetTokenCompression", "supported_methods"]
