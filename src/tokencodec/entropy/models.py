"""Entropy models for quantised tokens, as **integer frequency tables**, coded with constriction's range coder.

Why integer tables: a decoder that recomputes a Laplace or Gaussian CDF with ``exp``/``erf`` can
get different last bits on another machine (libm differs), pick a different symbol and derail
(CompressAI users report exactly such cross-device failures). Here the parametric fit happens
once, at calibration; what the encoder and decoder use are integer counts, turned into
probabilities only by IEEE arithmetic (sums and divisions, identical everywhere) inside
constriction's categorical model (``perfect=False``, its documented deterministic construction).

- :class:`FactorizedTables`: one table per channel over the symbols [lo_c, lo_c + A_c), from a
  Laplace (default) or Gaussian fitted to that channel's calibration symbols; symbols outside are
  clipped to the table (the quantiser's overload region; the encoder counts them).
- :class:`AdaptiveCategorical`: for codebook indices; prior counts from the calibration histogram
  scaled to ``prior_total`` pseudo-counts, each coded symbol then adds one (encoder and decoder
  update the same integers in the same order).
- :func:`encode_mask` / :func:`decode_mask`: a kept-positions bitmap under a fixed two-symbol table
  (N0 − K, K) — K is in the header, so the model is free; its code length is ≈ N0·H(K/N0).

Every ``encode_*`` returns the ideal code length −Σ log2 p (bits) under the exact integer tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MAX_ALPHABET = 4096          # per channel: bounds what a table (and a decoder) may allocate
PRECISION_BITS = 16          # table resolution: counts sum to about 2^16 per channel


def _categorical(counts: np.ndarray):
    import constriction

    return constriction.stream.model.Categorical(counts.astype(np.float64), perfect=False)


def _bits(counts: np.ndarray, symbols: np.ndarray) -> float:
    c = counts.astype(np.float64)
    return float(-np.log2(c[symbols] / c.sum()).sum())


def _table(dist: str, centre: float, scale: float, lo: int, hi: int, precision: int) -> np.ndarray:
    """Integer counts for symbols lo..hi from a continuous density integrated over each unit bin."""
    def cdf(x: float) -> float:
        if dist == "laplace":
            z = (x - centre) / scale
            return 0.5 * math.exp(z) if z < 0 else 1 - 0.5 * math.exp(-z)
        return 0.5 * (1 + math.erf((x - centre) / (scale * math.sqrt(2))))

    p = np.array([cdf(q + 0.5) - cdf(q - 0.5) for q in range(lo, hi + 1)])
    p = p / max(p.sum(), 1e-300)
    return np.maximum(1, np.rint(p * (1 << precision))).astype(np.uint32)


@dataclass(frozen=True)
class FactorizedTables:
    """Per-channel integer tables: ``lo[c]`` the first symbol, ``counts[c]`` its table."""

    lo: np.ndarray                  # [D] int32
    counts: tuple[np.ndarray, ...]  # D arrays of uint32
    _models: list = field(init=False, repr=False, compare=False)        # built once, used by every file
    _log2p: list = field(init=False, repr=False, compare=False)

    kind = "factorized"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_models", [_categorical(c) for c in self.counts])
        object.__setattr__(self, "_log2p", [np.log2(c.astype(np.float64) / float(c.sum())) for c in self.counts])

    @classmethod
    def fit(cls, symbols: np.ndarray, dist: str = "laplace", margin: float = 1.5,
            precision: int = PRECISION_BITS) -> FactorizedTables:
        """Fit one table per channel to calibration symbols [M, D] (int)."""
        if dist not in ("laplace", "gaussian"):
            raise ValueError(f"dist={dist!r}; allowed: 'laplace', 'gaussian'")
        q = np.asarray(symbols)
        if q.ndim != 2 or not len(q):
            raise ValueError(f"calibration symbols of shape {q.shape}; expected [M, D] with M ≥ 1")
        lo, counts = [], []
        for c in range(q.shape[1]):
            col = q[:, c].astype(np.float64)
            centre = float(np.median(col))
            scale = max(float(np.abs(col - centre).mean()) if dist == "laplace" else float(col.std()), 0.05)
            half = (MAX_ALPHABET - 1) // 2
            a = int(np.clip(math.floor(centre - margin * (centre - col.min()) - 1), -half + centre, centre))
            b = int(np.clip(math.ceil(centre + margin * (col.max() - centre) + 1), centre, centre + half))
            lo.append(a)
            counts.append(_table(dist, centre, scale, a, b, precision))
        return cls(np.array(lo, dtype=np.int32), tuple(counts))

    @property
    def dim(self) -> int:
        return len(self.counts)

    def min_bits_per_token(self) -> float:
        """Fewest bits any token can cost (every channel at its likeliest symbol): bounds K by the payload."""
        return float(sum(-math.log2(float(c.max()) / float(c.sum())) for c in self.counts))

    def clip(self, symbols: np.ndarray) -> tuple[np.ndarray, int]:
        """Symbols clipped into each channel's table, and how many were clipped."""
        hi = self.lo + np.array([len(c) for c in self.counts], dtype=np.int32) - 1
        clipped = np.clip(symbols, self.lo, hi)
        return clipped.astype(np.int32), int((clipped != symbols).sum())

    def encode(self, encoder, symbols: np.ndarray) -> float:
        """Channel after channel (each a run of K symbols under one model); returns the ideal bits."""
        idx = np.ascontiguousarray((symbols - self.lo).astype(np.int32).T)     # one row per channel
        for c, model in enumerate(self._models):
            encoder.encode(idx[c], model)
        return self.ideal_bits(symbols)

    def ideal_bits(self, symbols: np.ndarray) -> float:
        """−Σ log2 p of in-table symbols [K, D] under these tables."""
        idx = (symbols - self.lo).astype(np.int64)
        return -float(sum(self._log2p[c][idx[:, c]].sum() for c in range(self.dim)))

    def decode(self, decoder, k: int) -> np.ndarray:
        out = np.empty((k, self.dim), dtype=np.int32)
        for c, model in enumerate(self._models):
            out[:, c] = decoder.decode(model, k)
        return out + self.lo


@dataclass(frozen=True)
class AdaptiveCategorical:
    """Adaptive counts over ``len(prior)`` symbols: the prior, then +1 per coded symbol."""

    prior: np.ndarray               # [k] uint32, ≥ 1 each

    kind = "adaptive"

    @classmethod
    def fit(cls, symbols: np.ndarray, size: int, prior_total: int | None = None) -> AdaptiveCategorical:
        """Prior from a calibration histogram of indices in [0, size), scaled to ``prior_total`` (default 4·size)."""
        hist = np.bincount(np.asarray(symbols, dtype=np.int64).ravel(), minlength=size)[:size].astype(np.float64)
        total = prior_total or 4 * size
        prior = np.maximum(1, np.rint(hist / max(hist.sum(), 1) * total))
        return cls(prior.astype(np.uint32))

    def encode(self, encoder, symbols: np.ndarray) -> float:
        import constriction

        counts, bits = self.prior.astype(np.float64), 0.0
        for s in np.asarray(symbols, dtype=np.int32).ravel():
            encoder.encode(np.array([s], dtype=np.int32),
                           constriction.stream.model.Categorical(counts, lazy=True))
            bits -= math.log2(counts[s] / counts.sum())
            counts[s] += 1
        return bits

    def decode(self, decoder, k: int) -> np.ndarray:
        import constriction

        counts, out = self.prior.astype(np.float64), np.empty(k, dtype=np.int32)
        for i in range(k):
            s = int(decoder.decode(constriction.stream.model.Categorical(counts, lazy=True), 1)[0])
            out[i] = s
            counts[s] += 1
        return out


def encode_mask(encoder, mask: np.ndarray) -> float:
    """The kept-positions bitmap [N0] bool under the two-symbol table (N0 − K, K)."""
    k, n = int(mask.sum()), mask.size
    if k in (0, n):
        return 0.0                       # nothing to say: all or none kept (the header has K)
    counts = np.array([n - k, k], dtype=np.uint32)
    bits = mask.astype(np.int32)
    encoder.encode(bits, _categorical(counts))
    return _bits(counts, bits)


def decode_mask(decoder, n: int, k: int) -> np.ndarray:
    if k in (0, n):
        return np.full(n, k == n)
    mask = decoder.decode(_categorical(np.array([n - k, k], dtype=np.uint32)), n).astype(bool)
    return mask


__all__ = ["MAX_ALPHABET", "AdaptiveCategorical", "FactorizedTables", "decode_mask", "encode_mask"]
