"""The embedded default: natural photos bundled in scikit-image's wheel, so no download is needed."""

from __future__ import annotations

from tokencodec.data.images import ImageItem

# Colour photos of varied content; all are large enough for MS-SSIM's five scales.
EMBEDDED_NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def load_embedded(limit: int | None = None) -> list[ImageItem]:
    from skimage import data

    return [ImageItem(name, getattr(data, name)()) for name in EMBEDDED_NAMES[:limit]]


def load_calibration(limit: int | None = None) -> list[ImageItem]:
    """The other colour images in scikit-image's wheel (microscopy, astronomy, a stereo pair): a tuning
    set disjoint from ``embedded`` and Kodak, e.g. for fitting token codec profiles."""
    from skimage import data

    left, right, _ = data.stereo_motorcycle()
    items = [ImageItem("hubble_deep_field", data.hubble_deep_field()),
             ImageItem("immunohistochemistry", data.immunohistochemistry()),
             ImageItem("retina", data.retina()), ImageItem("motorcycle_left", left),
             ImageItem("motorcycle_right", right)]
    return items[:limit]
