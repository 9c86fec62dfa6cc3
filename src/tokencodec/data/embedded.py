"""The embedded default: natural photos bundled in scikit-image's wheel, so no download is needed."""

from __future__ import annotations

from tokencodec.data.images import ImageItem

# Colour photos of varied content; all are large enough for MS-SSIM's five scales.
EMBEDDED_NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def load_embedded(limit: int | None = None) -> list[ImageItem]:
    from skimage import data

    return [ImageItem(name, getattr(data, name)()) for name in EMBEDDED_NAMES[:limit]]
