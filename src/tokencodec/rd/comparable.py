"""What a curve was measured on, and the check that curves compared with each other share it.

A BD value or a plot that puts two curves side by side means something only when both were measured
on the same data. Results files record it in ``provenance["config"]``:

- the current layout (the sweep engine): ``config["data"] = {"spec": {...loader args}, "items": [ids],
  "fingerprint": "<hex over item ids and content digests>"}``;
- older codec sweeps: ``config["dataset"]`` (a name or folder) and ``config["images"]`` (the item names);
- older token sweeps: ``config["data"]`` (the loader's arguments) and ``config["samples"]`` (the item ids).

A file without any of these (a CompressAI results file, say) has an *unknown* identity: comparing it
warns and never fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tokencodec.rd.curve import Curve


class DataMismatchError(ValueError):
    """Curves measured on different data were to be compared."""


class DataMismatchWarning(UserWarning):
    """Curves measured on different data (or on data nobody recorded) are compared anyway."""


@dataclass(frozen=True)
class DataIdentity:
    label: str                  # the data set's name or its loader arguments, "unknown" when not recorded
    items: tuple[str, ...]      # item (image, sample) ids, in the order measured
    fingerprint: str = ""       # hash over ids and contents; "" when the file does not record one

    @property
    def known(self) -> bool:
        return bool(self.items or self.fingerprint)

    def __str__(self) -> str:
        if not self.known:
            return self.label
        return f"{self.label} ({len(self.items)} item{'' if len(self.items) == 1 else 's'})"

    def same_data(self, other: DataIdentity) -> bool:
        """Same items (in any order) and, where both record one, the same fingerprint."""
        if self.fingerprint and other.fingerprint and self.fingerprint != other.fingerprint:
            return False
        return sorted(self.items) == sorted(other.items)


UNKNOWN = DataIdentity("unknown", (), "")


def _readable(value: Any) -> str:
    """A data set name for people: a list of names joined with " + ", not Python's list text."""
    if isinstance(value, list | tuple):
        return " + ".join(str(v) for v in value)
    return str(value)


def _label(spec: Any) -> str:
    if isinstance(spec, Mapping):
        for key in ("dataset", "name", "path"):
            if spec.get(key):
                return _readable(spec[key])
        shown = [f"{k}={v}" for k, v in spec.items() if v is not None]
        return ", ".join(shown) if shown else "unnamed data"
    return str(spec) if spec else "unnamed data"


def _ids(values: Any) -> tuple[str, ...]:
    if isinstance(values, list | tuple):
        return tuple(str(v) for v in values)
    return ()


def data_identity(curve: Curve) -> DataIdentity:
    """The data ``curve`` was measured on, from its provenance (all three layouts; see the module doc)."""
    config = (curve.provenance or {}).get("config")
    if not isinstance(config, Mapping):
        return UNKNOWN
    data = config.get("data")
    if isinstance(data, Mapping) and "items" in data:  # the current layout
        return DataIdentity(_label(data.get("spec")), _ids(data.get("items")), str(data.get("fingerprint") or ""))
    if isinstance(data, Mapping) and "samples" in config:  # older token sweeps
        return DataIdentity(_label(data), _ids(config.get("samples")), "")
    if "images" in config:  # older codec sweeps
        return DataIdentity(_label({"dataset": config.get("dataset")}), _ids(config.get("images")), "")
    return UNKNOWN


def _named(curves: Mapping[str, Curve] | Iterable[Curve]) -> list[tuple[str, Curve]]:
    if isinstance(curves, Mapping):
        return list(curves.items())
    return [(c.name, c) for c in curves]


def check_comparable(curves: Mapping[str, Curve] | Iterable[Curve], allow_mismatch: bool = False
                     ) -> DataIdentity:
    """Refuse to compare curves measured on different data; returns the shared identity.

    ``curves`` is a mapping of a name (a file name, a method label) to its curve, or curves named by
    ``curve.name``. Different item lists or fingerprints raise ``DataMismatchError`` whose one-line
    message names both curves and both data sets; with ``allow_mismatch=True`` a ``DataMismatchWarning``
    says the same instead. Curves whose data is not recorded are compared with a warning. The identity
    returned is that of the first curve whose data is known (``UNKNOWN`` when none is).
    """
    named = [(name, curve, data_identity(curve)) for name, curve in _named(curves)]
    known = [(n, i) for n, _, i in named if i.known]
    unknown = [n for n, _, i in named if not i.known]
    if unknown and len(named) > 1:
        warnings.warn(f"{', '.join(unknown)}: the data {'it was' if len(unknown) == 1 else 'they were'} measured "
                      "on is not recorded; cannot check that the curves are comparable", DataMismatchWarning,
                      stacklevel=2)
    if not known:
        return UNKNOWN
    ref_name, ref = known[0]
    for name, ident in known[1:]:
        if ident.same_data(ref):
            continue
        what = str(ident) if str(ident) != str(ref) else f"{ident}, fingerprint {ident.fingerprint or '-'}"
        ref_what = str(ref) if str(ident) != str(ref) else f"{ref}, fingerprint {ref.fingerprint or '-'}"
        message = f"measured on different data: {ref_name}: {ref_what} vs {name}: {what}"
        if not allow_mismatch:
            raise DataMismatchError(message + " (pass allow_mismatch / --allow-mismatch to compare anyway)")
        warnings.warn(message, DataMismatchWarning, stacklevel=2)
    return ref


__all__ = ["DataIdentity", "DataMismatchError", "DataMismatchWarning", "UNKNOWN", "check_comparable",
           "data_identity"]
