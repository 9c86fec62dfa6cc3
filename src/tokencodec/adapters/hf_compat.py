"""What moved between transformers releases, in one place (tested range: see pyproject.toml).

transformers 5.24 renamed the KV-cache argument of decoder ``forward`` from ``past_key_values``
to ``cache`` (the old name is still accepted, with a deprecation warning) and the output field
likewise; hooks see whichever name the caller used, so they read both.
"""

from __future__ import annotations

from typing import Any

CACHE_NAMES = ("cache", "past_key_values")  # new name first


def cache_from(kwargs: dict[str, Any]):
    """The KV cache passed to a forward, under either name (None when there is none)."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def cache_of(output: Any):
    """The KV cache a forward returned, under either field name (None when there is none)."""
    for name in CACHE_NAMES:
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    return None
