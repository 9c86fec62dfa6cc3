"""A batch of visual tokens and the bookkeeping that token compression must keep true.

Choice for batches whose images keep different numbers of tokens: the batch stays one padded
tensor ``[B, N, D]`` with a boolean ``mask`` ``[B, N]`` (True = a real token). Methods with a
fixed budget keep the same count for every image and leave ``mask`` as None; adaptive methods
(PruMerge's IQR rule) pad to the largest count in the batch and set ``mask``. Padded slots have
zero features, zero size, no source patches and position −1.

Construction checks shapes and dtypes only: a TokenBatch is built several times per forward (every
``take``), and checking values would read device memory each time (a host sync). The value checks
(positions within the grid) run in :meth:`TokenBatch.check_values`, called on construction when the
environment variable ``TOKENCODEC_CHECK_VALUES`` is set to 1 (the test suite sets it), or by hand at
an API boundary.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

# debug: check values on every construction (each check is a host sync on an accelerator)
CHECK_VALUES = os.environ.get("TOKENCODEC_CHECK_VALUES", "0") not in ("", "0")


def _positive_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and x >= 1


def _is_float(t: Tensor) -> bool:
    return t.dtype.is_floating_point


def _check(t, name: str, shape: tuple[int, ...], dims: str, kind: str, dtype_ok: bool) -> None:
    """A one-line error naming the field, its shape and dtype, and what is expected."""
    if not isinstance(t, Tensor) or tuple(t.shape) != shape or not dtype_ok:
        got = f"shape {tuple(t.shape)} ({t.dtype})" if isinstance(t, Tensor) else f"type {type(t).__name__}"
        raise ValueError(f"TokenBatch.{name} has {got}, expected [{dims}] {kind}")


@dataclass
class TokenBatch:
    features: Tensor                      # [B, N, D]
    grid: tuple[int, int]                 # (h, w) of the original patch grid
    frames: int = 1                       # t for video; the original token count is t·h·w
    cls: Tensor | None = None             # [B, D'], kept apart from the patch tokens (D' may differ from D)
    sizes: Tensor | None = None           # [B, N] float: original patches each token stands for
    source: Tensor | None = None          # [B, N, N0] bool: original patches feeding each token
    positions: Tensor | None = None       # [B, N] long: raster index of each token's own patch
    mask: Tensor | None = None            # [B, N] bool, None when every slot is a real token
    signals: dict[str, Tensor] = field(default_factory=dict)  # per token: [B, N, ...], gathered by take()
    context: dict[str, Tensor] = field(default_factory=dict)  # not per token (text keys…), never gathered

    def __post_init__(self) -> None:
        if self.features.dim() != 3:
            raise ValueError(f"TokenBatch.features has shape {tuple(self.features.shape)}, expected [B, N, D]")
        if (not isinstance(self.grid, tuple | list) or len(self.grid) != 2
                or not all(_positive_int(g) for g in self.grid)):
            raise ValueError(f"TokenBatch.grid is {self.grid!r}, expected (h, w): two positive ints")
        if not _positive_int(self.frames):
            raise ValueError(f"TokenBatch.frames is {self.frames!r}, expected a positive int")
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        b, n, d = self.features.shape
        n0 = self.num_original
        # every method keeps or merges tokens, so a batch never holds more tokens than the original grid
        if n > n0:
            raise ValueError(f"TokenBatch.features has shape {tuple(self.features.shape)}: N={n} tokens exceed "
                             f"the grid {self.grid} × {self.frames} frame(s) = {n0} original patches")
        dev = self.features.device
        if self.positions is None:
            self.positions = torch.arange(n, device=dev).expand(b, n).clone()
        _check(self.positions, "positions", (b, n), f"B={b}, N={n}", "integer", not _is_float(self.positions)
               and self.positions.dtype != torch.bool)
        if self.sizes is None:     # float32 whatever the features: bf16 counts exactly only up to 256 patches
            self.sizes = torch.ones(b, n, device=dev, dtype=torch.float32)
        _check(self.sizes, "sizes", (b, n), f"B={b}, N={n}", "floating", _is_float(self.sizes))
        if self.source is None:  # each token stands for its own patch; padding (position −1) for none
            pos = self.positions
            self.source = torch.zeros(b, n, n0 + 1, dtype=torch.bool, device=dev).scatter_(
                2, torch.where(pos < 0, n0, pos)[..., None], True)[..., :n0]
        _check(self.source, "source", (b, n, n0), f"B={b}, N={n}, N0={n0}", "bool or floating",
               self.source.dtype == torch.bool or _is_float(self.source))
        if self.mask is not None:
            _check(self.mask, "mask", (b, n), f"B={b}, N={n}", "bool", self.mask.dtype == torch.bool)
        # the CLS may live in another space than the tokens (LLaVA: vision CLS, projected tokens): any width
        if self.cls is not None:
            width = self.cls.shape[-1] if isinstance(self.cls, Tensor) and self.cls.dim() == 2 else d
            _check(self.cls, "cls", (b, width), f"B={b}, D'", "(any width)", True)
        for name, value in self.signals.items():
            if value.dim() < 2 or tuple(value.shape[:2]) != (b, n):
                raise ValueError(f"signal {name!r} has shape {tuple(value.shape)}; per-token signals are "
                                 f"[B={b}, N={n}, ...]; put other tensors in TokenBatch.context")
        if CHECK_VALUES:
            self.check_values()

    def check_values(self) -> TokenBatch:
        """Check what shapes cannot show (positions are raster indices or −1); reads device values (a sync)."""
        n0 = self.num_original
        if self.positions.numel():
            lo, hi = torch.stack(torch.aminmax(self.positions)).tolist()
            if not (-1 <= lo and hi < n0):
                raise ValueError(f"TokenBatch.positions hold values in [{lo}, {hi}], expected raster indices in "
                                 f"[-1, {n0}) (−1 = padding)")
        return self

    @classmethod
    def from_grid(cls, features: Tensor, grid: tuple[int, int] | None = None, frames: int = 1,
                  cls_token: Tensor | None = None, context: dict[str, Tensor] | None = None,
                  **signals: Tensor) -> TokenBatch:
        """Tokens straight from an encoder, in raster order (frame, row, column)."""
        if features.dim() != 3:
            raise ValueError(f"TokenBatch.features has shape {tuple(features.shape)}, expected [B, N, D]")
        if not _positive_int(frames):
            raise ValueError(f"TokenBatch.frames is {frames!r}, expected a positive int")
        n = features.shape[1]
        if grid is None:
            side = round((n // frames) ** 0.5)
            grid = (side, side)
        if len(grid) != 2 or grid[0] * grid[1] * frames != n:
            raise ValueError(f"grid {grid} × {frames} frame(s) does not hold {n} tokens")
        return cls(features=features, grid=grid, frames=frames, cls=cls_token, signals=dict(signals),
                   context=dict(context or {}))

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
        """Real tokens per image, [B] on the CPU (a report: it reads the mask to the host)."""
        if self.mask is None:
            return torch.full((self.batch_size,), self.num_tokens, dtype=torch.long)
        return self.mask.sum(1).cpu()

    def is_per_token(self, name: str) -> bool:
        """True for signals (always per token, checked on construction); False for context."""
        return name in self.signals

    def take(self, index: Tensor) -> TokenBatch:
        """Keep the tokens at ``index`` ([B, K] long) in that order; per-token signals follow."""
        def gather(t: Tensor) -> Tensor:
            idx = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:])
            return t.gather(1, idx)

        signals = {k: gather(v) for k, v in self.signals.items()}
        return replace(self, features=gather(self.features), sizes=gather(self.sizes),
                       source=gather(self.source), positions=gather(self.positions),
                       mask=None if self.mask is None else gather(self.mask), signals=signals)

    def combine(self, weights: Tensor, members: Tensor, rep: Tensor) -> TokenBatch:
        """Output tokens as linear combinations of these tokens, with honest bookkeeping.

        ``weights`` [B, K, N]: features = weights @ features. ``members`` [B, K, N] bool: the tokens
        each output draws on (its source is their union and its size their summed size, so a
        contributor whose weight happens to be zero still counts). ``rep`` [B, K] long: the token
        whose position and per-token signals the output inherits.
        """
        out = self.take(rep)
        features = torch.bmm(weights.float(), self.features.float()).to(self.features.dtype)
        m = members.float()
        sizes = torch.bmm(m, self.sizes.float()[..., None]).squeeze(-1).to(self.sizes.dtype)
        source = torch.bmm(m, self.source.float()) > 0
        return replace(out, features=features, sizes=sizes, source=source)

    def original_index_map(self) -> Tensor:
        """For each original patch, the first token it feeds (−1 if dropped), [B, N0]."""
        src = self.source
        if self.mask is not None:
            src = src & self.mask[:, :, None]
        has = src.any(1)
        first = src.float().argmax(1)
        return torch.where(has, first, torch.full_like(first, -1))
