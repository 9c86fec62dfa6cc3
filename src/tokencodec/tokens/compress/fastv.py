"""FastV: drop image tokens inside the LLM by the attention they receive (Chen et al., ECCV 2024;
arXiv 2403.06764).

Layers 0…K−1 see every token; before layer K runs, the top-K image tokens by signal
``text_attention`` [B, N] are kept, in raster order. The adapter computes that signal from layer
K−1's attention probabilities, averaged over heads, over the image span.

Choices the card leaves open:

- **Query rows (paper vs code).** The paper averages the attention each image token receives
  from all tokens; the official code reads only the last prompt token's row. We follow the
  code: ``query="last"`` (default) tells the adapter to use the last prompt token; ``query="all"``
  asks it for the paper's mean over all query rows. The method itself only ranks the signal.
- **K.** ``layer=2`` (the paper's K and the OCR-VQA scripts); the lmms-eval KV-cache script and
  the HF demo use 3. The adapter reads ``method.layer``.
- **Count.** The budget is the kept count (``Budget(keep=...)``, or ``ratio`` rounded as in
  LightCompress); the paper's R is 1 − ratio.
- **Ties.** Broken toward the lower index (stable sort); ``torch.topk`` leaves them arbitrary.
- **Positions.** Kept tokens keep their original raster positions, as the official code keeps
  the original ``position_ids`` (RoPE gaps stay).
- **Padding.** Padded slots (``mask``) rank last; if the budget exceeds an image's real count,
  padded slots fill its row and the output mask marks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import (  # noqa: F401  (keep_top_k, top_k_index: imported from here too)
    LLMSignal,
    MethodOptions,
    OptionAttribute,
    ScoreMethod,
    keep_top_k,
    register_method,
    top_k_index,
)
from tokencodec.tokens.signals import Signal


@dataclass(frozen=True)
class FastVOptions(MethodOptions):
    layer: int = 2                          # K: prune before this layer, score with layer K−1
    query: Literal["last", "all"] = "last"  # the adapter's query rows: "last" (code) or "all" (paper)

    def __post_init__(self) -> None:
        if self.layer < 1:
            raise ValueError(f"FastV prunes before layer K ≥ 1 (it scores with layer K−1); got {self.layer}")


@register_method("fastv")
class FastV(ScoreMethod):
    """Keep the top-K image tokens by ``text_attention`` [B, N] before LLM layer ``layer``."""

    stage = "llm"
    guidance = "text"
    needs = (Signal.TEXT_ATTENTION,)
    cls_fallback = "not needed: the score is the prompt's attention to the image span"
    paper = "Chen et al., An Image is Worth 1/2 Tokens After Layer 2, ECCV 2024, arXiv 2403.06764"
    Options = FastVOptions

    layer = OptionAttribute()   # read by the adapter; on the class, the default
    query = OptionAttribute()
    positions = "original"      # official: the kept tokens keep their position ids (RoPE gaps)

    @property
    def llm_signal(self) -> LLMSignal:   # layer K−1's rows (the default plan): the last prompt token's, or all
        return LLMSignal(query=self.query)

    def score(self, batch: TokenBatch) -> Tensor:
        self.check_signals(batch)
        return batch.signals["text_attention"]
