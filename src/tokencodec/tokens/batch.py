"""A batch of visual tokens and the bookkeeping that token compression must keep true.

Choice for batches whose images keep different numbers of tokens: the batch stays one padded
tensor ``[B, N, D]`` with a boolean ``mask`` ``[B, N]`` (True = a real token). Methods with a
fixed budget keep the same count for every image and leave ``mask`` as None; adaptive methods
(PruMerge's IQR rule) pad to the largest count in the batch and set ``mask``. Padded slots have
zero features, zero size, no source patches and position −1.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor


@dataclass
class TokenBatch:
    features: Tensor                      # [B, N, D]
    grid: tuple[int, int]                 # (h, w) of the original patch grid
    frames: int = 1                       # t for video; the original token count is t·h·w
    cls: Tensor | None = None             # [B, D], kept apart from the patch tokens
    sizes: Tensor | None = None           # [B, N] float: original patches each token stands for
    source: Tensor | None = None          # [B, N, N0] bool: original patches feeding each token
    positions: Tensor | None = None       # [B, N] long: raster index of each token's own patch
    mask: Tensor | None = None            # [B, N] bool, None when every slot is a real token
    signals: dict[str, Tensor] = field(default_factory=dict)  # [B, N, ...] tensors are per token

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise ValueError(f"features must be [B, N, D], got shape {tuple(self.features.shape)}")
        b, n, _ = self.features.shape
        dev = self.features.device
        if self.sizes is None:
            self.sizes = torch.ones(b, n, device=dev, dtype=self.features.dtype)
        if self.positions is None:
            self.positions = torch.arange(n, device=dev).expand(b, n).clone()
        if self.source is None:
            self.source = torch.eye(n, dtype=torch.bool, device=dev).expand(b, n, n).clone()

    @classmethod
    def from_grid(cls, features: Tensor, grid: tuple[int, int] | None = None, frames: int = 1,
                  cls_token: Tensor | None = None, **signals: Tensor) -> TokenBatch:
        """Tokens straight from an encoder, in raster order (frame, row, column)."""
        n = features.shape[1]
        if grid is None:
            side = round((n // frames) ** 0.5)
            grid = (side, side)
        if grid[0] * grid[1] * frames != n:
            raise ValueError(f"grid {grid} × {frames} frame(s) does not hold {n} tokens")
        return cls(features=features, grid=grid, frames=frames, cls=cls_token, signals=dict(signals))

    @property
    def batch_size(self) -> int:
        return self.features.shape[0]

    @property
    def num_tokens(self) -> int:
        """Slots per image (the largest count when ``mask`` is set)."""
        return self.features.shape[1]

    @property
    def num_original(self) -> int:
        return self.grid[0] * self.grid[1] * self.frames

    def counts(self) -> Tensor:
        """Real tokens per image, [B]."""
        if self.mask is None:
            return torch.full((self.batch_size,), self.num_tokens, dtype=torch.long)
        return self.mask.sum(1).cpu()

    def is_per_token(self, name: str) -> bool:
        s = self.signals[name]
        return s.dim() >= 2 and s.shape[:2] == self.features.shape[:2]

    def take(self, index: Tensor) -> TokenBatch:
        """Keep the tokens at ``index`` ([B, K] long) in that order; per-token signals follow."""
        def gather(t: Tensor) -> Tensor:
            idx = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            return t.gather(1, idx)

        signals = {k: gather(v) if self.is_per_token(k) else v for k, v in self.signals.items()}
        return replace(self, features=gather(self.features), sizes=gather(self.sizes),
                       source=gather(self.source), positions=gather(self.positions),
                       mask=None if self.mask is None else gather(self.mask), signals=signals)

    def original_index_map(self) -> Tensor:
        """For each original patch, the first token it feeds (−1 if dropped), [B, N0]."""
        src = self.source
        if self.mask is not None:
            src = src & self.mask[:, :, None]
        has = src.any(1)
        first = src.float().argmax(1)
        return torch.where(has, first, torch.full_like(first, -1))
