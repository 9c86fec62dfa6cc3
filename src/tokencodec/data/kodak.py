"""The Kodak PhotoCD test set (24 images, 768×512), verified by SHA-256.

Where it comes from, in order: an explicit folder; the folder in ``$TOKENCODEC_KODAK``; the cache
(``$TOKENCODEC_CACHE`` or ``~/.cache/tokencodec``) ``/kodak``, filled on first use by downloading
from the usual public location. Every file is checked against the SHA-256 sums shipped with the
package; a mismatch is refused, never silently used.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from importlib.resources import files
from pathlib import Path

from tokencodec.data.images import DatasetError, ImageItem, read_image
from tokencodec.io import write_bytes_atomic

KODAK_URL = "https://r0k.us/graphics/kodak/kodak/{name}"
ENV_FOLDER = "TOKENCODEC_KODAK"


def expected_sums() -> dict[str, str]:
    text = files("tokencodec.data").joinpath("kodak_sha256sums.txt").read_text()
    return {name: digest for digest, name in (line.split() for line in text.splitlines() if line.strip())}


def cache_dir() -> Path:
    root = os.environ.get("TOKENCODEC_CACHE") or Path.home() / ".cache" / "tokencodec"
    return Path(root) / "kodak"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _verify(path: Path, digest: str) -> None:
    actual = _sha256(path)
    if actual != digest:
        raise DatasetError(f"{path}: SHA-256 {actual} does not match the Kodak reference {digest}; "
                           "refusing to use it (delete the file to download it again)")


def _download(name: str, digest: str, dest: Path) -> None:
    url = KODAK_URL.format(name=name)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https URL)
            data = response.read()
    except OSError as err:
        raise DatasetError(f"cannot download {url} ({err}); set ${ENV_FOLDER} to a folder that holds "
                           "kodim01.png … kodim24.png") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise DatasetError(f"{url}: downloaded bytes do not match the Kodak SHA-256 {digest}; refused")
    write_bytes_atomic(dest, data)


def kodak_folder(folder: str | Path | None = None, download: bool = True) -> Path:
    """A folder holding all 24 verified Kodak images."""
    sums = expected_sums()
    chosen = folder or os.environ.get(ENV_FOLDER)
    if chosen:
        path = Path(chosen)
        missing = [n for n in sums if not (path / n).is_file()]
        if missing:
            raise DatasetError(f"{path}: Kodak folder lacks {len(missing)} of 24 images (e.g. {missing[0]})")
    else:
        path = cache_dir()
        for name, digest in sums.items():
            if not (path / name).is_file():
                if not download:
                    raise DatasetError(f"Kodak is not in {path}; set ${ENV_FOLDER} or allow the download")
                _download(name, digest, path / name)
    for name, digest in sums.items():
        _verify(path / name, digest)
    return path


def load_kodak(limit: int | None = None, folder: str | Path | None = None) -> list[ImageItem]:
    path = kodak_folder(folder)
    return [ImageItem(n, read_image(path / n)) for n in sorted(expected_sums())[:limit]]
