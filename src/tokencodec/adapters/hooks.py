"""Patch a model for the span of a ``with`` block and always undo it (the kvpress pattern).

A :class:`ModelPatch` records every hook handle it registers and every attribute it replaces
(for instance a layer's ``forward`` swapped for a wrapper), and on exit removes the hooks and
puts the attributes back, even when the block raised. No model file is copied or edited.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.utils.hooks import RemovableHandle

_MISSING = object()
_MARK = "_tokencodec_patch"  # set on the patched model while a patch holds it


class PatchError(RuntimeError):
    """A patch used twice at once, or a model that another patch already holds."""


def active_patch(model: nn.Module) -> ModelPatch | None:
    """The patch that currently holds ``model``, or None."""
    return vars(model).get(_MARK)


class ModelPatch:
    """Base class: subclasses implement ``_install`` with ``add_hook``, ``add_pre_hook`` and ``swap``.

    One instance holds one model at a time. Entering an instance that is already active, or a
    second patch on a model another patch holds, is refused with :class:`PatchError`: two sets
    of hooks on one encoder would silently see each other's token counts.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._handles: list[RemovableHandle] = []
        self._swaps: list[tuple[Any, str, bool, Any]] = []
        self._active = False

    def _install(self) -> None:
        raise NotImplementedError

    # -- recording helpers ------------------------------------------------------------------
    def add_hook(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False) -> RemovableHandle:
        handle = module.register_forward_hook(fn, with_kwargs=with_kwargs)
        self._handles.append(handle)
        return handle

    def add_pre_hook(self, module: nn.Module, fn: Callable, *, with_kwargs: bool = False) -> RemovableHandle:
        handle = module.register_forward_pre_hook(fn, with_kwargs=with_kwargs)
        self._handles.append(handle)
        return handle

    def swap(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value`` until exit; an attribute the instance did not own is deleted again."""
        owned = name in vars(obj) or (isinstance(obj, nn.Module) and any(
            name in d for d in (obj._parameters, obj._buffers, obj._modules)))
        old = getattr(obj, name, _MISSING) if owned else _MISSING
        setattr(obj, name, value)
        self._swaps.append((obj, name, owned, old))

    # -- context protocol -------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return self._active

    def __enter__(self):
        if self._active:
            raise PatchError(f"this {type(self).__name__} is already active; it cannot be entered again "
                             "(nested or re-entrant use); exit it first or make a new one")
        holder = active_patch(self.model)
        if holder is not None:
            raise PatchError(f"{type(self.model).__name__} is already patched by {type(holder).__name__}; "
                             "exit that context before entering another patch on the same model")
        self._active = True
        try:
            self.swap(self.model, _MARK, self)
            self._install()
        except BaseException:
            self.restore()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self.restore()
        return False

    def restore(self) -> None:
        """Remove every hook and undo every swap, newest first; safe to call twice."""
        errors = []
        for handle in reversed(self._handles):
            handle.remove()
        for obj, name, owned, old in reversed(self._swaps):
            try:
                if owned:
                    setattr(obj, name, old)
                else:
                    delattr(obj, name)
            except Exception as e:  # keep undoing the rest; report the first failure
                errors.append(e)
        self._handles.clear()
        self._swaps.clear()
        self._active = False
        if errors:
            raise errors[0]
