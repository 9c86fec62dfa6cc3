"""A local host-sync counter for the token-method tests (a project-wide guard is planned elsewhere).

``local_host_syncs()`` is a context manager that records every operation which moves a tensor value
to the host: ATen ops seen by a TorchDispatchMode (``_local_scalar_dense`` behind ``.item()``,
``int(t)``, ``bool(t)``; data-dependent ``nonzero``, ``masked_select``, ``unique``; indexing with a
boolean mask) and the Tensor methods seen by a TorchFunctionMode (``item``, ``tolist``, ``__bool__``,
``__int__``, ``__float__``, ``__index__``, ``numpy``). It works on CPU, where nothing actually waits.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive"}
SYNC_METHODS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
                torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.numpy}


class _Ops(TorchDispatchMode):
    def __init__(self, seen: list[str]):
        super().__init__()
        self.seen = seen

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        bool_index = name == "index" and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()) or ())
        if name in SYNC_OPS or bool_index:
            self.seen.append(f"aten.{name}")
        return func(*args, **(kwargs or {}))


class _Methods(TorchFunctionMode):
    def __init__(self, seen: list[str]):
        super().__init__()
        self.seen = seen

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNC_METHODS:
            self.seen.append(f"Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _count():
    seen: list[str] = []
    with _Methods(seen), _Ops(seen):
        yield seen


@pytest.fixture
def local_host_syncs():
    """``with local_host_syncs() as seen: ...`` then ``seen`` lists the host syncs made inside."""
    return _count
