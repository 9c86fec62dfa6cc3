"""Count the device kernels a PyTorch forward launches, per layer group, by tracing its aten ops on any device.

A ``TorchDispatchMode`` sees every aten op after autograd and composite decomposition, which is one
kernel launch on CUDA for all but view and allocation ops (``view``, ``transpose``, ``empty`` launch
nothing). So the count taken on CPU on a tiny config is the count a GPU launches for the same code at any
width: it is what :mod:`tokencodec.metrics.roofline` charges a per-kernel launch floor for, and what its
kernel recipes are checked against. Per op it also records the bytes of its tensor operands (inputs read
once, outputs written once) and whether it moves a value to the host (``_local_scalar_dense``: ``.item()``,
``.tolist()``, ``bool(t)``, a host sync on CUDA).

Two known gaps against a CUDA profiler: an op that launches several kernels on CUDA (``masked_scatter``,
``nonzero``, cuDNN convolutions) counts once, and a sync that an op's CUDA implementation makes inside
(``nonzero`` and boolean-mask indexing reading a count, ``index_put_`` copying a Python scalar from the
host) is not seen on CPU: ``torch.cuda.set_sync_debug_mode`` on a GPU sees those. On LLaVA-1.5-7B's
shapes the traced forward has 1 657 kernels and 3 host reads where the H200 profiler counted 1 664
launches and 3 syncs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass

# aten ops that allocate or alias without launching a kernel (views are recognised by OpOverload.is_view)
NO_KERNEL = frozenset({"_unsafe_view", "empty", "empty_strided", "empty_like", "lift_fresh", "set_", "resize_"})
HOST_READS = frozenset({"_local_scalar_dense"})  # .item(), .tolist(), bool(t), int(t): a device-to-host sync


@dataclass(frozen=True)
class TracedOp:
    """One aten op that launches a kernel: its name, the group it ran in, the bytes of its operands."""

    op: str
    group: str
    bytes: int
    host_read: bool


def _tensor_bytes(values: Iterable) -> int:
    import torch

    total = 0
    for value in values:
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, (list, tuple)):
            total += _tensor_bytes(value)
    return total


def launches_kernel(func) -> bool:
    """Whether an aten ``OpOverload`` launches a device kernel (views and allocations do not)."""
    return not func.is_view and func.overloadpacket.__name__ not in NO_KERNEL


def trace_kernels(fn: Callable[[], object], groups: Mapping[str, Iterable] | None = None,
                  default_group: str = "other") -> list[TracedOp]:
    """Run ``fn()`` under ``torch.no_grad()`` and return the kernel-launching aten ops in order.

    ``groups`` maps a group name to modules; an op runs in the group of the innermost module being
    called (forward pre/post hooks), ``default_group`` outside all of them.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    stack = [default_group]
    ops: list[TracedOp] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if launches_kernel(func):
                name = func.overloadpacket.__name__
                moved = _tensor_bytes(args) + _tensor_bytes(kwargs.values()) + _tensor_bytes(
                    out if isinstance(out, (list, tuple)) else (out,))
                ops.append(TracedOp(name, stack[-1], moved, name in HOST_READS))
            return out

    def enter(name: str) -> Callable:
        def hook(*_) -> None:  # a hook that returns a value replaces the module's input or output
            stack.append(name)
        return hook

    def leave(*_) -> None:
        stack.pop()

    with ExitStack() as hooks:
        for name, modules in (groups or {}).items():
            for module in modules:
                pre = module.register_forward_pre_hook(enter(name))
                post = module.register_forward_hook(leave)
                hooks.callback(pre.remove)
                hooks.callback(post.remove)
        with torch.no_grad(), Recorder():
            fn()
    return ops


def count_by_group(ops: Iterable[TracedOp]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.group] = counts.get(op.group, 0) + 1
    return counts


__all__ = ["HOST_READS", "NO_KERNEL", "TracedOp", "count_by_group", "launches_kernel", "trace_kernels"]
