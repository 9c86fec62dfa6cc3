"""An append-only record store (JSON lines) that lets an interrupted sweep resume.

Each finished operating point is appended and flushed as soon as it exists, so a crash, Ctrl-C or
``kill -9`` loses at most the points still in flight. On reading, a torn line (a crash mid-write)
is ignored, and a line that is valid JSON but lacks a field the sweep needs (a record from an
older version, or an edited file) is skipped with a warning, so that its point is computed again.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class IncompleteRecordWarning(UserWarning):
    pass


class RecordStore:
    def __init__(self, path: str | Path, key_fields: tuple[str, ...], required: Iterable[str] = ()):
        self.path = Path(path)
        self.key_fields = key_fields
        self.required = tuple(required)
        self.records: dict[tuple, dict[str, Any]] = {}
        if self.path.exists():
            skipped = 0
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn write from an interrupted run
                if not isinstance(record, dict) or any(f not in record for f in (*key_fields, *self.required)):
                    skipped += 1
                    continue
                self.records[self.key(record)] = record
            if skipped:
                warnings.warn(f"{self.path}: skipped {skipped} incomplete record(s) (valid JSON without the fields "
                              f"{list(key_fields) + list(self.required)}); their points are computed again",
                              IncompleteRecordWarning, stacklevel=2)

    @staticmethod
    def _hashable(value: Any) -> Any:
        return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value

    def key(self, record: dict[str, Any]) -> tuple:
        return tuple(self._hashable(record[f]) for f in self.key_fields)

    def __contains__(self, key: tuple) -> bool:
        return tuple(self._hashable(k) for k in key) in self.records

    def get(self, key: tuple) -> dict[str, Any]:
        return self.records[tuple(self._hashable(k) for k in key)]

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Start on a fresh line even if the previous run died mid-line.
        needs_newline = self.path.exists() and self.path.stat().st_size > 0 and not self._ends_with_newline()
        with self.path.open("a", encoding="utf-8") as f:
            if needs_newline:
                f.write("\n")
            for record in records:
                f.write(json.dumps(record, allow_nan=True) + "\n")
                self.records[self.key(record)] = record
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
