"""Moving data between host and device without stalling the device: the three moves token methods need.

A method's hot path runs on the model's device; every value it reads on the host, and every blocking
copy of host data to the device, makes the CPU wait for the GPU (a host sync; see
``tokencodec.metrics.host_sync``). Methods that must build something on the host use these:

- :func:`to_device`: host data (an index drawn with a CPU generator) to the device, non-blocking from
  pinned memory, so the host does not wait.
- :func:`on_device`: a constant built on the host (a pooling operator, a DCT matrix) cached per device,
  so it is copied once per shape, not once per call.
- :func:`to_host`: several device tensors to the host in one transfer (one sync instead of one each),
  where an algorithm truly needs values on the host (a data-dependent count, an entropy coder).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils._pytree import tree_map


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """``x`` (on the host) on ``device``, without blocking: from pinned memory when that is an accelerator."""
    device = torch.device(device)
    if device.type != "cpu" and x.device.type == "cpu":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def on_device(build: Callable) -> Callable:
    """Decorate ``build(*args) -> tensors`` (hashable args, host tensors out) into ``f(device, *args)``, cached.

    The result is shared: callers must not modify it in place (``expand`` and friends are fine).
    """
    @functools.lru_cache(maxsize=256)
    def cached(device: torch.device, *args):
        return tree_map(lambda t: to_device(t, device) if isinstance(t, Tensor) else t, build(*args))

    @functools.wraps(build)
    def wrapper(device, *args):
        return cached(torch.device(device), *args)

    wrapper.cache_clear = cached.cache_clear
    return wrapper


def to_host(*tensors: Tensor) -> tuple[Tensor, ...]:
    """The tensors on the CPU, read in one transfer: packed as float64 (exact for every float of 32 bits or
    fewer and for integers below 2⁵³), copied once, unpacked to their shapes and dtypes."""
    if len(tensors) == 1:
        return (tensors[0].detach().cpu(),)
    flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors]).cpu()
    out, at = [], 0
    for t in tensors:
        out.append(flat[at:at + t.numel()].reshape(t.shape).to(t.dtype))
        at += t.numel()
    return tuple(out)


__all__ = ["on_device", "to_device", "to_host"]
