"""The observer registry: observers by name, built from a name and options."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from tokencodec.registry import Registry

OBSERVERS: Registry[type] = Registry("observer", group="tokencodec.observers")


def register_observer(name: str):
    return OBSERVERS.register_named(name)


class ObserverOptionError(ValueError):
    """An option the observer does not take, or data options its task does not take."""


def _check_kwargs(fn, given: dict[str, Any], what: str) -> None:
    params = {n: p for n, p in inspect.signature(fn).parameters.items() if n != "self"}
    unknown = sorted(set(given) - set(params))
    if unknown:
        allowed = ", ".join(f"{n}" + ("" if p.default is inspect.Parameter.empty else f" (default {p.default!r})")
                            for n, p in params.items()) or "none"
        raise ObserverOptionError(f"{what}: unknown option{'s' if len(unknown) > 1 else ''} "
                                  f"{', '.join(map(repr, unknown))}; allowed: {allowed}")


@dataclass(frozen=True)
class ObserverSpec:
    """An observer as data (name + options), so that worker processes can build their own."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> type:
        """The observer class, after checking name and options (no model is loaded)."""
        cls = OBSERVERS.get(self.name)
        _check_kwargs(cls.__init__, self.options, f"observer {self.name!r}")
        return cls

    def check_data(self, data: dict[str, Any]) -> None:
        cls = self.check()
        for key in ("limit", "n"):
            value = data.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ObserverOptionError(f"data of observer {self.name!r}: {key}={value!r}; allowed: an integer >= 1")
        task_cls = getattr(cls, "task_class", None)
        if task_cls is not None:
            _check_kwargs(task_cls.samples, data, f"data of observer {self.name!r}")

    def check_machine(self) -> None:
        """What depends on this machine, checked before any data or model loads: the ``device`` option names a
        device that is here, and an observer's own ``check_machine(**options)`` (e.g. its weights can be found)."""
        cls = self.check()
        device = self.options.get("device")
        if device:
            check_device(str(device), f"observer {self.name!r}")
        hook = getattr(cls, "check_machine", None)
        if hook is not None:
            hook(**self.options)

    def build(self):
        return self.check()(**self.options)


def check_device(device: str, what: str = "device") -> None:
    """``ObserverOptionError`` (one line) unless torch can run on ``device`` on this machine."""
    import torch

    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ObserverOptionError(f"{what}: device {device!r}, but this machine has no CUDA device (torch "
                                      f"{torch.__version__}); allowed here: cpu")
        if index and (not index.isdigit() or int(index) >= count):
            raise ObserverOptionError(f"{what}: device {device!r}; allowed here: cpu, "
                                      + ", ".join(f"cuda:{i}" for i in range(count)))
    elif kind == "mps":
        if not torch.backends.mps.is_available():
            raise ObserverOptionError(f"{what}: device {device!r}, but MPS is not available here; allowed here: cpu"
                                      + (", cuda" if torch.cuda.is_available() else ""))
    elif kind != "cpu":
        try:
            torch.device(device)
        except RuntimeError:
            raise ObserverOptionError(f"{what}: device {device!r} is not a torch device; allowed: cpu, cuda, "
                                      "cuda:N, mps") from None


_BUILT: dict[str, Any] = {}


def observer_for(spec: ObserverSpec):
    """One observer per spec and process (models load once per worker)."""
    key = repr((spec.name, sorted(spec.options.items())))
    if key not in _BUILT:
        _BUILT[key] = spec.build()
    return _BUILT[key]
