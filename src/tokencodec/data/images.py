"""Loading images: a named image (name + RGB array), read with errors that name the file."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


class ImageReadError(ValueError):
    """A corrupt, truncated or unreadable image; the message names the file."""


class DatasetError(ValueError):
    """A data set that cannot be found or verified; the message says what is allowed."""


@dataclass(frozen=True)
class ImageItem:
    name: str
    image: np.ndarray  # H×W×3 uint8

    @property
    def digest(self) -> str:
        """Content hash of the pixels, so cached results are never reused for other pixels."""
        h = hashlib.sha256()
        h.update(str(self.image.shape).encode())
        h.update(np.ascontiguousarray(self.image).tobytes())
        return h.hexdigest()[:16]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB, fully decoded (truncation is detected here)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not a readable image ({err})") from None


def load_folder(folder: str | Path, limit: int | None = None) -> list[ImageItem]:
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return [ImageItem(p.stem, read_image(p)) for p in paths[:limit]]


def _loaders() -> dict[str, Callable[[int | None], list[ImageItem]]]:
    from tokencodec.data.embedded import load_embedded
    from tokencodec.data.kodak import load_kodak

    return {"embedded": load_embedded, "kodak": load_kodak}


def load_dataset(spec: str, limit: int | None = None) -> list[ImageItem]:
    """``embedded``, ``kodak``, or the path of a folder of images."""
    loaders = _loaders()
    if spec in loaders:
        return loaders[spec](limit)
    if Path(spec).is_dir():
        return load_folder(spec, limit)
    raise DatasetError(f"unknown data set {spec!r}: use one of {', '.join(loaders)} or a folder of images")
