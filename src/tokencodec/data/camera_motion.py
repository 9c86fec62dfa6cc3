"""Video from a still photo by camera motion: a pan that shifts the content a fixed number of pixels
per frame (the uncovered border filled with a constant), so frame-to-frame change is known exactly.

With a shift of one patch per frame the content moves one token per frame, which a token-domain
motion search of radius 1 can match; other shifts fall between tokens.
"""

from __future__ import annotations

import numpy as np

ORDER = ("right", "down", "left", "up")          # directions cycled over a set of photos

DIRECTIONS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def shift(image: np.ndarray, dy: int, dx: int, fill: int = 0) -> np.ndarray:
    """``image`` (H×W or H×W×C) moved by (dy, dx) pixels; uncovered pixels are ``fill``."""
    h, w = image.shape[:2]
    out = np.full_like(image, fill)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = image[ys, xs]
    return out


def pan(image: np.ndarray, frames: int, step: int, direction: str, fill: int = 0) -> np.ndarray:
    """T frames (T×H×W[×C]) of a pan: frame t shows the content moved by (t − ⌊T/2⌋)·step pixels, so the
    middle frame is the photo itself and the content stays as close to the centre as it can."""
    if direction not in DIRECTIONS:
        raise ValueError(f"unknown pan direction {direction!r}; expected one of {tuple(DIRECTIONS)}")
    if frames < 1 or step < 0:
        raise ValueError(f"frames={frames}, step={step}: at least one frame and a step ≥ 0 pixels")
    dy, dx = DIRECTIONS[direction]
    centre = frames // 2
    return np.stack([shift(image, (t - centre) * step * dy, (t - centre) * step * dx, fill) for t in range(frames)])


def pan_sequence(image: np.ndarray, size: int, frames: int, step: int, direction: str) -> np.ndarray:
    """T×size×size×3 frames of a pan over ``image`` (resized with Lanczos so its short side leaves a
    margin), centre-cropped so the fill border never shows."""
    from PIL import Image

    margin = (frames // 2 + 1) * step
    full = size + 2 * margin
    h, w = image.shape[:2]
    scale = full / min(h, w)
    resized = np.asarray(Image.fromarray(image).resize((max(full, round(w * scale)), max(full, round(h * scale))),
                                                       Image.Resampling.LANCZOS))
    y0, x0 = (resized.shape[0] - full) // 2, (resized.shape[1] - full) // 2
    moving = pan(resized[y0:y0 + full, x0:x0 + full], frames, step, direction)
    return np.ascontiguousarray(moving[:, margin:margin + size, margin:margin + size])


__all__ = ["DIRECTIONS", "ORDER", "pan", "pan_sequence", "shift"]
