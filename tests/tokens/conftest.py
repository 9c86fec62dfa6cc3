"""Fixture ``host_syncs``: count host syncs (device→host reads) in a block, attributed to the tokencodec
line that caused them.

Small and local to the token-method tests (the video methods use it): a dispatch mode sees
``aten._local_scalar_dense`` (``.item()``, ``bool(t)``, ``int(t)``) and the data-dependent
``aten.nonzero``/``masked_select``/boolean indexing; a function mode sees ``Tensor.tolist`` (which
reads the whole tensor without dispatching). Each sync is recorded as (file, line) of the innermost
frame in ``src/tokencodec``.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
DATA_DEPENDENT = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default}


def _where() -> tuple[str, int]:
    for frame in reversed(traceback.extract_stack()):
        if "/src/tokencodec/" in frame.filename:
            return frame.filename.split("/src/")[-1], frame.lineno
    return "?", 0


class _Dispatch(TorchDispatchMode):
    def __init__(self, found: list):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        bool_index = func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else ()))
        if func in DATA_DEPENDENT or bool_index:
            self.found.append(_where())
        return func(*args, **(kwargs or {}))


class _Function(TorchFunctionMode):
    def __init__(self, found: list):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.tolist:
            self.found.append(_where())
        return func(*args, **(kwargs or {}))


class Syncs(list):
    """[(file, line)] of every host sync in the block."""

    def outside(self, *files: str) -> list[tuple[str, int]]:
        """The syncs not caused by ``files`` (e.g. TokenBatch's own validation in tokens/batch.py)."""
        return [f for f in self if not any(f[0].endswith(name) for name in files)]


@contextmanager
def _count():
    found = Syncs()
    with _Function(found), _Dispatch(found):
        yield found


@pytest.fixture
def host_syncs():
    """``with host_syncs() as found: ...`` → ``found`` (:class:`Syncs`)."""
    return _count
