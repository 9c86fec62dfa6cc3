"""Quantisers for visual tokens: uniform scalar per channel, and a k-means codebook (vector quantisation).

Both are fitted on a calibration split and are pure functions of numpy arrays afterwards:
``quantize(x [K, D] float) -> symbols (int)``, ``dequantize(symbols) -> [K, D] float32``.

- :class:`ScalarQuantizer`: q = round((x − μ_c) / step) per channel c, μ_c the calibration mean
  (so the symbols centre on 0 where a Laplace/Gaussian model expects them); ``step`` is the knob.
- :class:`VectorQuantizer`: each token → the index of its nearest of ``k`` centroids (squared
  Euclidean), fitted by k-means++ initialisation and Lloyd iterations, seeded. One symbol per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class QuantizerError(ValueError):
    """A bad quantiser parameter or input shape; the message names what is allowed."""


def _check_tokens(x: np.ndarray, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[K, {dim}]" if dim is not None else "[K, D]"
        raise QuantizerError(f"tokens of shape {x.shape}; expected {want} floats")
    if not np.isfinite(x).all():
        raise QuantizerError("tokens hold NaN or infinite values")
    return x


@dataclass(frozen=True)
class ScalarQuantizer:
    """Uniform scalar quantisation per channel around the calibration mean."""

    mean: np.ndarray        # [D] float32
    step: float

    kind = "scalar"

    @classmethod
    def fit(cls, calibration: np.ndarray, step: float) -> ScalarQuantizer:
        if not (isinstance(step, int | float) and np.isfinite(step) and step > 0):
            raise QuantizerError(f"step={step!r}: a positive finite number (the quantisation step)")
        x = _check_tokens(calibration)
        return cls(x.mean(0).astype(np.float32), float(step))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """[K, D] floats → [K, D] int32 symbols."""
        x = _check_tokens(x, self.dim)
        return np.rint((x - self.mean) / np.float32(self.step)).astype(np.int32)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q, dtype=np.float32) * np.float32(self.step) + self.mean).astype(np.float32)


@dataclass(frozen=True)
class VectorQuantizer:
    """Nearest-centroid vector quantisation with a k-means codebook."""

    codebook: np.ndarray    # [k, D] float32

    kind = "vector"

    @classmethod
    def fit(cls, calibration: np.ndarray, k: int, iterations: int = 25, seed: int = 0) -> VectorQuantizer:
        x = _check_tokens(calibration)
        if not isinstance(k, int) or not 2 <= k <= min(len(x), 65536):
            raise QuantizerError(f"k={k!r}: a codebook size in [2, min(calibration tokens, 65536)] = "
                                 f"[2, {min(len(x), 65536)}]")
        rng = np.random.default_rng(seed)
        centres = [x[rng.integers(len(x))]]
        d2 = ((x - centres[0]) ** 2).sum(1)
        for _ in range(1, k):                    # k-means++: far points are likelier next centres
            p = d2 / d2.sum() if d2.sum() > 0 else None
            centres.append(x[rng.choice(len(x), p=p)])
            d2 = np.minimum(d2, ((x - centres[-1]) ** 2).sum(1))
        c = np.stack(centres)
        for _ in range(iterations):
            assign = cls(c).quantize(x)
            for j in range(k):
                members = x[assign == j]
                if len(members):
                    c[j] = members.mean(0)
        return cls(c.astype(np.float32))

    @property
    def dim(self) -> int:
        return int(self.codebook.shape[1])

    @property
    def size(self) -> int:
        return int(self.codebook.shape[0])

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """[K, D] floats → [K] int32 centroid indices."""
        x = _check_tokens(x, self.dim)
        d = (x * x).sum(1, keepdims=True) - 2 * x @ self.codebook.T + (self.codebook ** 2).sum(1)
        return d.argmin(1).astype(np.int32)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return self.codebook[np.asarray(q, dtype=np.int64)].astype(np.float32)


__all__ = ["QuantizerError", "ScalarQuantizer", "VectorQuantizer"]
