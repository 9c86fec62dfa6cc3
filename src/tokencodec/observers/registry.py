"""The observer registry: observers by name, built from a name and options."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from tokencodec.registry import Registry

OBSERVERS: Registry[type] = Registry("observer")


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

    def build(self):
        return self.check()(**self.options)


_BUILT: dict[str, Any] = {}


def observer_for(spec: ObserverSpec):
    """One observer per spec and process (models load once per worker)."""
    key = repr((spec.name, sorted(spec.options.items())))
    if key not in _BUILT:
        _BUILT[key] = spec.build()
    return _BUILT[key]
