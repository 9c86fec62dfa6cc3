"""A method that returns fixed decoded tokens in place of the encoder's: how a split-inference receiver feeds
tokens read from a bitstream through the same adapters as live tokens (the model runs on a blank input whose
tokens are replaced)."""

from __future__ import annotations

import numpy as np
import torch

from tokencodec.tokens.batch import TokenBatch
from tokencodec.tokens.compress.base import Budget, TokenMethod


class Replay(TokenMethod):
    """Returns fixed decoded tokens (features [K, D], raster positions, optionally a CLS [D]) in place of
    the encoder's."""

    name = "replay"
    positions = "original"

    def __init__(self, features: np.ndarray, positions: np.ndarray, cls: np.ndarray | None = None):
        super().__init__()
        self.tokens, self.at = torch.from_numpy(np.ascontiguousarray(features)), torch.from_numpy(positions)
        self.cls = None if cls is None else torch.from_numpy(np.ascontiguousarray(cls)).reshape(1, -1)

    @property
    def budget(self) -> Budget:
        """The budget that lets every decoded token through."""
        return Budget(keep=max(1, len(self.at)))

    def __call__(self, batch: TokenBatch, budget: Budget) -> TokenBatch:
        k = len(self.at)
        dummy = batch.take(self.at.to(batch.features.device)[None].expand(batch.batch_size, k))
        cls = None if self.cls is None else self.cls.to(batch.features)
        return TokenBatch(features=self.tokens[None].to(batch.features), grid=batch.grid, frames=batch.frames,
                          positions=dummy.positions, source=dummy.source, sizes=dummy.sizes, cls=cls)


__all__ = ["Replay"]
