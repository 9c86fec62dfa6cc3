"""Image data sets by name: the bundled ones (embedded, calibration), Kodak, or any folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokencodec.data.embedded import load_calibration, load_embedded
from tokencodec.data.images import DatasetError, ImageItem, load_folder
from tokencodec.data.kodak import load_kodak

LOADERS: dict[str, Callable[[int | None], list[ImageItem]]] = {
    "embedded": load_embedded, "kodak": load_kodak, "calibration": load_calibration}


def _loaders() -> dict[str, Callable[[int | None], list[ImageItem]]]:
    from tokencodec.data.embedded import load_calibration, load_embedded
    from tokencodec.data.kodak import load_kodak

    return {"embedded": load_embedded, "kodak": load_kodak, "calibration": load_calibration}


def load_dataset(spec: str, limit: int | None = None) -> list[ImageItem]:
    """``embedded``, ``kodak``, ``calibration`` (a tuning set of other bundled images), or a folder of images."""
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DatasetError(f"limit={limit!r}: allowed an integer >= 1 (or no limit)")
    if spec in LOADERS:
        return LOADERS[spec](limit)
    if Path(spec).is_dir():
        return load_folder(spec, limit)
    if Path(spec).exists() or "/" in spec or spec.startswith("."):
        return load_folder(spec, limit)  # names the path: not found, or not a folder
    raise DatasetError(f"unknown data set {spec!r}: use one of {', '.join(LOADERS)} or a folder of images")


__all__ = ["LOADERS", "load_dataset"]
