"""A named registry filled by decorators, so that adding a codec or a method is one file.

Modelled on CompressAI's ``@register_model``; lookups of unknown names fail with the list of
known ones instead of a bare KeyError.

Plug-ins: a name the registry does not hold is looked up, on first use, as

- an entry point of the registry's ``group`` (``tokencodec.methods``, ``tokencodec.codecs``,
  ``tokencodec.observers``), declared by an installed package, e.g. in its ``pyproject.toml``::

      [project.entry-points."tokencodec.methods"]
      my-method = "my_package.methods:MyMethod"

- or ``module:Class``, imported directly (``my_package.methods:MyMethod``).

The loaded class is registered under the name used, so study files, the command line and worker
processes (which resolve the same name again) all find it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """A name that is not in a registry; the message lists the allowed names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str | None = None):
        self.kind = kind
        self.group = group                      # entry-point group of plug-ins, or None
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def register_named(self, name: str) -> Callable[[T], T]:
        """Register a class and set its ``name`` attribute (codecs, methods, observers know their name)."""
        def decorator(cls: T) -> T:
            cls.name = name
            return self.register(name)(cls)

        return decorator

    def plugin_names(self) -> list[str]:
        """Names of the entry points installed for this registry's group (not loaded)."""
        if not self.group:
            return []
        return sorted({ep.name for ep in entry_points(group=self.group)} - set(self._entries))

    def _load_plugin(self, name: str) -> T | None:
        """The plug-in called ``name`` (entry point or ``module:Class``), registered; None when there is none."""
        found = [ep for ep in entry_points(group=self.group)] if self.group else []
        target = next((ep for ep in found if ep.name == name), None)
        try:
            if target is not None:
                obj = target.load()
            elif ":" in name:
                module, _, attr = name.partition(":")
                obj = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
            else:
                return None
        except (ImportError, AttributeError) as err:
            source = f"entry point {target.value!r}" if target is not None else "module:Class"
            raise UnknownNameError(f"{self.kind} {name!r}: the plug-in ({source}) cannot be loaded "
                                   f"({type(err).__name__}: {err})") from None
        if name in self._entries:               # importing it registered it under this name (a decorator)
            return self._entries[name]
        if isinstance(obj, type) and not getattr(obj, "name", ""):
            obj.name = name
        self._entries[name] = obj
        return obj

    def get(self, name: str) -> T:
        if name in self._entries:
            return self._entries[name]
        obj = self._load_plugin(name) if isinstance(name, str) else None
        if obj is not None:
            return obj
        known = ", ".join(sorted(self._entries)) or "(none)"
        plugins = self.plugin_names()
        extra = f"; plug-ins: {', '.join(plugins)}" if plugins else ""
        hint = " (or a plug-in: an entry point of " + self.group + ", or module:Class)" if self.group else ""
        raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {known}{extra}{hint}")

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name in self._entries:
            return True
        return isinstance(name, str) and self._load_plugin(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
