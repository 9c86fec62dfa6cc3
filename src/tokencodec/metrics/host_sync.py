"""Host syncs: every place where a tensor's value crosses between host and device, with its file:line.

On an accelerator, reading a device value on the host (``.item()``, ``.tolist()``, ``bool(t)``,
an op whose output size depends on the data: ``nonzero``, a boolean-mask index, ``unique``) makes
the CPU wait until every queued kernel has run, and a blocking host→device copy (``x.to(device)``
of a tensor built on the host, a host index into a device tensor) does the same. At batch 1 a
forward is bound by launching kernels, so each such stall costs more than the work it guards
(../shared/docs/gpu-measurements.md). :class:`HostSyncs` records them:

    with HostSyncs() as syncs:
        method(batch, budget)
    syncs.count()       # events caused by tokencodec
    print(syncs)        # "1 host syncs in tokencodec: tokens/compress/random.py:76 Tensor.cpu"

Two torch modes see two levels, and each event is counted once (the outer one wins):

- a ``TorchFunctionMode`` sees the Python calls: ``Tensor.item/tolist/numpy/cpu/__bool__/__int__/
  __index__/__float__/__complex__`` on a device tensor (a CPU ``tolist`` dispatches no aten op at
  all), ``.to(device)``/``.cuda()`` of a host tensor (not with ``non_blocking=True``: from pinned
  memory such a copy does not wait, see ``tokens/transfer.py``), ``torch.tensor/as_tensor(data, device=...)``,
  and any call mixing host tensors (not 0-d) with device tensors (an implicit copy);
- a ``TorchDispatchMode`` sees the aten ops that read values, also when a library calls them:
  ``_local_scalar_dense``, ``nonzero``, ``masked_select``, ``index``/``index_put`` with a boolean
  index, ``unique*``, ``repeat_interleave`` without ``output_size``, ``bincount``, ``equal``,
  ``allclose``, ``is_nonzero``, and blocking copies between a CPU and a non-CPU tensor.

**CPU runs emulate a device** (``emulate=True``, the default), so that CI enforces a sync budget
without a GPU: every tensor lives in host memory there, so the recorder tracks where a tensor
*would* live. A tensor that enters the context from outside, or is created with an explicit
``device=`` (hot-path code takes it from a tensor, ``x.device``), or is computed from such a
tensor, is a device tensor; one created on the host (a factory without ``device=``, or with the
string ``"cpu"``; ``torch.from_numpy``; the result of ``.cpu()``) or computed from host tensors
alone is a host tensor. The emulation sees what runs on CPU: code that branches on the device type
(torch's own CPU-only value checks, e.g. in ``F.one_hot``) may count on CPU what a GPU skips, or
the reverse. With ``emulate=False`` (on an accelerator, beside
``torch.cuda.set_sync_debug_mode``) a device tensor is one that is not on the CPU.

Each event names the innermost frame inside tokencodec (``where``; torch, transformers and this
module skipped), so a failing budget says which line to fix. An event with no tokencodec frame on
the stack, or inside a module forward that tokencodec runs or hooks (a model's own reads), belongs
to the library (``where`` None, ``site`` the library line); compare its count with the unpatched
model's to see reads a patch causes inside the library. Iterating a device
tensor (``for x in t``) is not itself a sync: it yields device tensors, and each read of them is.
"""

from __future__ import annotations

import functools
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_PACKAGE = str(Path(__file__).resolve().parents[1])          # .../tokencodec
_THIS = str(Path(__file__).resolve())
# helpers whose reads belong to their caller: events name the line that called them
_PASS_THROUGH = (_THIS, str(Path(_PACKAGE, "tokens", "transfer.py")))
_TORCH = str(Path(torch.__file__).resolve().parent)
_MODULE_FILE, _MODULE_CALL = str(Path("nn", "modules", "module.py")), {"_call_impl", "_wrapped_call_impl"}

_T = torch.Tensor
# Python-level reads of a device value (the function mode records them by name)
_READS = {_T.item: "item", _T.tolist: "tolist", _T.numpy: "numpy", _T.cpu: "cpu", _T.__bool__: "__bool__",
          _T.__int__: "__int__", _T.__index__: "__index__", _T.__float__: "__float__",
          _T.__complex__: "__complex__", _T.__array__: "__array__"}
_TO_HOST = {_T.cpu, _T.numpy, _T.__array__}
_FACTORIES_FROM_DATA = {torch.tensor, torch.as_tensor}
# aten ops whose output (or return value) depends on the data: the host must read device values
_aten = torch.ops.aten
_DATA_DEPENDENT = {_aten._local_scalar_dense.default, _aten.nonzero.default, _aten.masked_select.default,
                   _aten.unique_dim.default, _aten._unique.default, _aten._unique2.default,
                   _aten.unique_consecutive.default, _aten.bincount.default, _aten.equal.default,
                   _aten.allclose.default, _aten.is_nonzero.default}


@dataclass(frozen=True)
class HostSync:
    """One value crossing: ``kind`` "read" (device → host) or "copy" (host → device, blocking)."""

    kind: str
    op: str                 # "Tensor.item", "aten.nonzero", "Tensor.to (host tensor to device)"…
    where: str | None       # "tokens/batch.py:67" inside tokencodec, or None (a library's own)
    site: str               # the innermost frame outside torch: where the read happened

    def __str__(self) -> str:
        return f"{self.where or self.site} {self.op}"


def _frame_label(filename: str, line: int) -> str:
    if filename.startswith(_PACKAGE):
        return f"{Path(filename).relative_to(_PACKAGE).as_posix()}:{line}"
    parts = Path(filename).parts
    short = "/".join(parts[-3:]) if "site-packages" not in parts else "/".join(parts[parts.index("site-packages") + 1:])
    return f"{short}:{line}"


_WRAPPERS: set = set()            # code of tokencodec functions that only call a model's own method


def model_call(fn):
    """Mark ``fn`` as a wrapper that calls one of the model's own methods (an adapter's swapped-in
    ``get_image_features``): reads below it are the model's, as inside a module's forward."""
    _WRAPPERS.add(fn.__code__)
    return fn


def _locate() -> tuple[str | None, str]:
    """(the tokencodec line responsible, or None; the innermost frame outside torch and this module).

    A read inside a library counts as tokencodec's when tokencodec called that library code directly
    (a helper such as ``get_rope_index``), not when it happens inside a module's forward that
    tokencodec merely runs or hooks (the model's own reads, which it has without tokencodec too).
    """
    frame = sys._getframe(2)
    site = None
    in_forward = False              # a module call (nn.Module.__call__) lies between the read and this frame
    while frame is not None:
        name = frame.f_code.co_filename
        if frame.f_code in _WRAPPERS:
            in_forward = True
        elif name.startswith(_TORCH):
            in_forward |= frame.f_code.co_name in _MODULE_CALL and name.endswith(_MODULE_FILE)
        elif name not in _PASS_THROUGH:
            label = _frame_label(name, frame.f_lineno)
            if name.startswith(_PACKAGE):
                return (label if site is None or not in_forward else None), site or label
            site = site or label
        frame = frame.f_back
    return None, site or "?"


def _is_host_device_arg(device, emulate: bool) -> bool:
    """A ``device=`` argument naming the host. Emulating, only the string "cpu" does: a device object
    comes from a tensor (``x.device``) and stands for the accelerator (see the module docstring)."""
    if not emulate:
        return isinstance(device, str | torch.device) and torch.device(device).type == "cpu"
    return isinstance(device, str) and device.split(":")[0] == "cpu"


class HostSyncs:
    """Records host syncs while active (a context manager); see the module docstring.

    ``emulate``: on CPU, count tensors from outside and their results as device tensors (True,
    for CI); False counts only tensors that really live on an accelerator.
    """

    def __init__(self, emulate: bool = True):
        self.emulate = emulate
        self.events: list[HostSync] = []
        self._host = WeakIdKeyDictionary()     # tensors created on the host inside the context
        self._quiet = 0                        # > 0 while a recorded Python-level call runs
        self._modes = (_FunctionMode(self), _DispatchMode(self))

    # -- where a tensor lives --------------------------------------------------------------------
    def on_device(self, t: torch.Tensor) -> bool:
        if t.device.type != "cpu":
            return True
        return self.emulate and t not in self._host

    def _mark_host(self, out) -> None:
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._host[t] = True

    def record(self, kind: str, op: str) -> None:
        if self._quiet:
            return
        where, site = _locate()
        self.events.append(HostSync(kind, op, where, site))

    # -- results -----------------------------------------------------------------------------------
    def inside(self) -> list[HostSync]:
        """The events with a tokencodec frame on the stack (tokencodec caused them)."""
        return [e for e in self.events if e.where is not None]

    def count(self, library: bool = False) -> int:
        """Events caused by tokencodec (``library=True``: every event, libraries' own included)."""
        return len(self.events if library else self.inside())

    def by_line(self, library: bool = False) -> Counter:
        return Counter(str(e) for e in (self.events if library else self.inside()))

    def __str__(self) -> str:
        lines = self.by_line()
        detail = ", ".join(f"{k} ×{v}" if v > 1 else k for k, v in sorted(lines.items()))
        outside = self.count(library=True) - self.count()
        tail = f" (+{outside} outside tokencodec)" if outside else ""
        return f"{self.count()} host syncs in tokencodec{': ' + detail if detail else ''}{tail}"

    def __enter__(self) -> HostSyncs:
        # torch.from_numpy and torch.frombuffer bypass both modes: wrap them to mark their results as host data
        self._factories = {name: getattr(torch, name) for name in ("from_numpy", "frombuffer")}
        for name, factory in self._factories.items():
            setattr(torch, name, self._host_factory(factory))
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)
        for name, factory in self._factories.items():
            setattr(torch, name, factory)

    def _host_factory(self, factory):
        @functools.wraps(factory)
        def wrapper(*args, **kwargs):
            out = factory(*args, **kwargs)
            self._host[out] = True
            return out
        return wrapper


class _FunctionMode(TorchFunctionMode):
    """Python-level calls: named reads, host→device copies, mixed host/device calls; tracks host tensors."""

    def __init__(self, rec: HostSyncs):
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        device = [t for t in tensors if rec.on_device(t)]
        host = [t for t in tensors if not rec.on_device(t)]
        event, moved = None, None           # moved: "host" | "device" when the call moves its input there
        if func in _READS and device:
            event, moved = ("read", f"Tensor.{_READS[func]}"), "host"
        elif func in (_T.to, _T.cuda) and host and (func is _T.cuda or self._targets_device(args, kwargs)):
            moved = "device"
            if not kwargs.get("non_blocking", False):
                event = ("copy", f"Tensor.{func.__name__} (host tensor to device)")
        elif func is _T.to and device and _is_host_device_arg(_target(args, kwargs), rec.emulate):
            event, moved = ("read", "Tensor.to('cpu')"), "host"
        elif func in _FACTORIES_FROM_DATA and kwargs.get("device") is not None \
                and not _is_host_device_arg(kwargs["device"], rec.emulate) and not device:
            event = ("copy", f"torch.{func.__name__}(data, device=...)")
        elif device and any(t.dim() > 0 for t in host):
            event = ("copy", f"{getattr(func, '__qualname__', func)} mixing host and device tensors")
        elif func in (_T.__getitem__, _T.__setitem__) and device and rec.on_device(args[0]):
            event = _indexing_event(func, args)
        quiet = event is not None or (func is _T.__setitem__ and _masked_fill(args))
        if quiet:
            rec._quiet += 1                 # the aten ops under a recorded call are not counted again
        try:
            out = func(*args, **kwargs)
        finally:
            if quiet:
                rec._quiet -= 1
        if event is not None and not (func in _FACTORIES_FROM_DATA and out.numel() == 0):   # nothing to copy
            rec.record(*event)
        if moved is not None and any(out is t for t in tensors):
            out = out.view_as(out)          # on CPU a move returns its input: the moved tensor gets its own identity
            rec._host.pop(out, None)
        if moved == "host":
            rec._mark_host(out)
        elif moved == "device" or (event is not None and event[0] == "copy"):
            pass                            # now on the device
        elif tensors:
            if not device:
                rec._mark_host(out)         # computed from host tensors alone
        elif kwargs.get("device") is None or _is_host_device_arg(kwargs["device"], rec.emulate):
            rec._mark_host(out)             # a factory without device=: built on the host
        return out

    def _targets_device(self, args, kwargs) -> bool:
        target = _target(args, kwargs)
        if isinstance(target, torch.Tensor):
            return self.rec.on_device(target)
        return isinstance(target, str | torch.device) and not _is_host_device_arg(target, self.rec.emulate)


def _target(args, kwargs):
    """The device (or tensor) a ``Tensor.to`` call moves to, if any."""
    return kwargs.get("device", next((a for a in args[1:] if isinstance(a, str | torch.device | torch.Tensor)), None))


class _DispatchMode(TorchDispatchMode):
    """aten ops that read device values, wherever they are called from (libraries included)."""

    def __init__(self, rec: HostSyncs):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rec = self.rec
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_device = any(rec.on_device(t) for t in tensors)
        if on_device and _reads_values(func, args, kwargs):
            rec.record("read", f"aten.{func.overloadpacket.__name__}")
        elif func in (_aten._to_copy.default, _aten.copy_.default) and _crosses(args, kwargs):
            rec.record("copy", f"aten.{func.overloadpacket.__name__} across devices")
        out = func(*args, **kwargs)
        if tensors and not on_device:
            rec._mark_host(out)
        return out


def _index_parts(index) -> list:
    return list(index) if isinstance(index, tuple) else [index]


def _masked_fill(args) -> bool:
    """``t[mask] = scalar``: torch turns it into ``masked_fill_`` (no sync), not a boolean ``index_put_``."""
    parts = [i for i in _index_parts(args[1]) if isinstance(i, torch.Tensor | list)]
    return (len(args) > 2 and isinstance(args[2], bool | int | float) and len(parts) == 1
            and isinstance(parts[0], torch.Tensor) and parts[0].dtype in (torch.bool, torch.uint8))


def _indexing_event(func, args) -> tuple[str, str] | None:
    """Indexing a device tensor with host data: a Python list index, or a scalar written by integer index
    (torch builds the scalar on the host and copies it to the device: ``_index_put_impl_``)."""
    parts = _index_parts(args[1])
    if any(isinstance(i, list) for i in parts):
        return "copy", f"Tensor.{func.__name__} with a list index (copied to the device)"
    if func is _T.__setitem__ and isinstance(args[2], bool | int | float) and any(
            isinstance(i, torch.Tensor) and i.dtype not in (torch.bool, torch.uint8) for i in parts):
        return "copy", "Tensor.__setitem__ of a Python scalar at tensor indices (the scalar is copied to the device)"
    return None


def _reads_values(func, args, kwargs) -> bool:
    if func in _DATA_DEPENDENT:
        return True
    if func in (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default, _aten._index_put_impl_.default):
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1])
    if func is _aten.repeat_interleave.Tensor or func is _aten.repeat_interleave.self_Tensor:
        return kwargs.get("output_size") is None
    return False


def _crosses(args, kwargs) -> bool:
    """A blocking copy between a CPU tensor and a non-CPU one (only on a real accelerator)."""
    src = args[0] if args else None
    if not isinstance(src, torch.Tensor) or kwargs.get("non_blocking") or (len(args) > 2 and args[2] is True):
        return False
    if len(args) > 1 and isinstance(args[1], torch.Tensor):        # copy_(dst, src)
        return (args[0].device.type == "cpu") != (args[1].device.type == "cpu")
    dev = kwargs.get("device")
    return dev is not None and (torch.device(dev).type == "cpu") != (src.device.type == "cpu")


__all__ = ["HostSync", "HostSyncs"]
