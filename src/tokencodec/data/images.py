"""Loading images: a named image (name + RGB array), read with errors that name the file."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".ppm", ".webp")


class ImageReadError(ValueError):
    """A corrupt, truncated, too large or unreadable image; the message names the file, ``status`` the kind
    ("not-found", "unreadable", "too-large")."""

    def __init__(self, message: str, status: str = "unreadable"):
        super().__init__(message)
        self.status = status


class ImageSkippedWarning(UserWarning):
    """An image of a folder that could not be read and was left out (``on_error="skip"``)."""


ON_ERROR = ("skip", "stop")
# (mode, {image name: "status: reason"}) of the innermost ``read_errors`` block; skip and no record outside one.
_READ_ERRORS: ContextVar[tuple[str, dict[str, str] | None]] = ContextVar("read_errors", default=("skip", None))


@contextmanager
def read_errors(mode: str = "skip") -> Iterator[dict[str, str]]:
    """How folder loads inside the block treat an image that cannot be read: ``skip`` leaves it out (a one-line
    ``ImageSkippedWarning``) and records it in the dict yielded, ``{name: "status: reason"}``, so a sweep can
    name it in its results; ``stop`` raises ``ImageReadError``."""
    if mode not in ON_ERROR:
        raise DatasetError(f"on_error={mode!r}: allowed {', '.join(ON_ERROR)}")
    skipped: dict[str, str] = {}
    token = _READ_ERRORS.set((mode, skipped))
    try:
        yield skipped
    finally:
        _READ_ERRORS.reset(token)


class DatasetError(ValueError):
    """A data set that cannot be found or verified; the message says what is allowed."""


class ImageConversionWarning(UserWarning):
    """An image that had to be converted to 8-bit RGB (16-bit samples, alpha, greyscale…)."""


BACKGROUND = 255  # transparent pixels are composited over white, as an image viewer shows them


@dataclass(frozen=True)
class ImageItem:
    name: str          # unique within its data set: the path relative to the data set folder, suffix included
    image: np.ndarray  # H×W×3 uint8

    @property
    def digest(self) -> str:
        """Content hash of the pixels, so cached results are never reused for other pixels."""
        h = hashlib.sha256()
        h.update(str(self.image.shape).encode())
        h.update(np.ascontiguousarray(self.image).tobytes())
        return h.hexdigest()[:16]


def to_uint8(samples: np.ndarray) -> np.ndarray:
    """Samples of any integer depth scaled to 8 bits: v8 = round(v · 255 / max), max = 2^bits − 1
    (65535 for 16-bit), so white stays white and no value is clipped."""
    if samples.dtype == np.uint8:
        return samples
    if samples.dtype == bool:
        return samples.astype(np.uint8) * 255
    if np.issubdtype(samples.dtype, np.floating):  # Pillow's mode F: taken as 0…1
        return np.clip(np.rint(samples * 255.0), 0, 255).astype(np.uint8)
    top = 65535.0 if samples.dtype.itemsize >= 2 else 255.0
    return np.clip(np.rint(samples.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _rgb_and_alpha(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """(H×W×C samples, H×W alpha in 0…1 or None, what was converted)."""
    notes: list[str] = []
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if ("transparency" in im.info or im.mode == "PA") else "RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im)
        notes.append(f"{im.mode} samples scaled to 8 bits (v·255/65535)")
        arr = to_uint8(np.clip(arr, 0, 65535).astype(np.uint16))
        return np.repeat(arr[..., None], 3, 2), None, notes + ["greyscale replicated to R, G, B"]
    if im.mode == "F":
        return np.repeat(to_uint8(np.asarray(im))[..., None], 3, 2), None, ["float samples taken as 0…1"]
    if im.mode in ("L", "LA", "1"):
        alpha = np.asarray(im.getchannel("A"), dtype=np.float64) / 255 if im.mode == "LA" else None
        grey = np.asarray(im.convert("L"))
        return np.repeat(grey[..., None], 3, 2), alpha, ["greyscale replicated to R, G, B"]
    if im.mode in ("RGBA", "RGBa", "LA"):
        arr = np.asarray(im.convert("RGBA"))
        return arr[..., :3], arr[..., 3].astype(np.float64) / 255, notes
    if im.mode != "RGB":
        notes.append(f"mode {im.mode} converted to RGB")
        im = im.convert("RGB")
    return np.asarray(im), None, notes


def _read_16bit_rgb(path: Path) -> np.ndarray | None:
    """16-bit RGB(A) PNGs: Pillow reads them as 8-bit by dropping the low byte; imagecodecs keeps 16 bits."""
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - a core dependency
        return None
    try:
        return imagecodecs.png_decode(path.read_bytes())
    except Exception:
        return None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB, fully decoded (truncation is detected here).

    Conversions, each announced by an ``ImageConversionWarning`` naming the file: the EXIF
    orientation is applied; 16-bit (and 16-bit RGB PNG) samples are scaled with
    v8 = round(v·255/65535); greyscale is replicated to R, G and B; palette images are expanded;
    alpha is composited over a white background (255), because a codec sees only the RGB samples
    and a viewer shows transparency over white.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            fmt = im.format
            im = ImageOps.exif_transpose(im)  # a copy, without .format
            deep = None
            if fmt == "PNG" and im.mode in ("RGB", "RGBA") and _png_bit_depth(path) == 16:
                deep = _read_16bit_rgb(path)
            if deep is not None and deep.dtype == np.uint16 and deep.ndim == 3:
                rgb, alpha = to_uint8(deep[..., :3]), (deep[..., 3] / 65535.0 if deep.shape[-1] == 4 else None)
                notes = ["16-bit samples scaled to 8 bits (v·255/65535)"]
            else:
                rgb, alpha, notes = _rgb_and_alpha(im)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found", "not-found") from None
    except Image.DecompressionBombError as err:  # the header claims more pixels than Pillow will decode
        claimed = re.search(r"\((\d+) pixels\)", str(err))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "more pixels than allowed"
        raise ImageReadError(f"{path}: its header claims {size}; allowed: at most {2 * Image.MAX_IMAGE_PIXELS:,} "
                             "(Pillow's decompression-bomb limit, 2 × PIL.Image.MAX_IMAGE_PIXELS)",
                             "too-large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: not a readable image ({err})") from None
    if alpha is not None:
        if bool((alpha < 1).any()):
            a = alpha[..., None]
            rgb = np.rint(rgb * a + BACKGROUND * (1 - a)).astype(np.uint8)
            notes.append(f"alpha composited over a white background ({BACKGROUND})")
        else:
            notes.append("an opaque alpha channel dropped")
    if notes:
        warnings.warn(f"{path}: {'; '.join(notes)}", ImageConversionWarning, stacklevel=2)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def _png_bit_depth(path: Path) -> int:
    with path.open("rb") as f:
        head = f.read(26)
    return head[24] if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" else 8


def load_folder(folder: str | Path, limit: int | None = None) -> list[ImageItem]:
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder of images")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DatasetError(f"{folder}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    mode, record = _READ_ERRORS.get()
    items: list[ImageItem] = []
    for p in paths:
        if limit is not None and len(items) >= limit:
            break
        try:
            items.append(ImageItem(p.name, read_image(p)))
        except ImageReadError as err:
            if mode == "stop":
                raise
            if record is not None:
                record[p.name] = f"{err.status}: {err}"
            warnings.warn(f"skipped ({err.status}): {err}", ImageSkippedWarning, stacklevel=2)
    if not items:
        raise DatasetError(f"{folder}: none of its {len(paths)} images could be read")
    return items
