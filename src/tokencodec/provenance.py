"""What produced a result: versions of tokencodec and of the libraries behind the numbers."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from tokencodec import __version__

# Python distributions whose version can change a number in a result file.
_DISTRIBUTIONS = (
    "numpy", "scipy", "pillow", "imagecodecs", "pillow-heif", "torch", "pytorch-msssim",
    "bjontegaard", "scikit-image", "transformers", "constriction",
)


def package_versions() -> dict[str, str]:
    found = {}
    for dist in _DISTRIBUTIONS:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            continue
    return found


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _git_commit() -> str | None:
    return _git("rev-parse", "HEAD") or None


def _git_dirty() -> bool | None:
    """Whether the source tree had uncommitted changes (None outside a git checkout)."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def provenance(config: dict[str, Any] | None = None, libraries: dict[str, str] | None = None,
               seed: int | None = None) -> dict[str, Any]:
    """A provenance block for a results file.

    ``libraries`` holds versions of native libraries reported by their bindings (libjpeg-turbo,
    libavif, …), which pip metadata cannot see.
    """
    return {
        "tokencodec": __version__,
        "git_commit": _git_commit(),
        "git_dirty": _git_dirty(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "libraries": dict(libraries or {}),
        "config": dict(config or {}),
        "seed": seed,
    }
