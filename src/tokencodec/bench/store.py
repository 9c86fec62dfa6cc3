"""An append-only record store (JSON lines) that lets an interrupted sweep resume.

Each finished operating point is appended and flushed as soon as it exists, so a crash or
Ctrl-C loses at most the points still in flight. A torn last line (a crash mid-write) is
ignored on reading.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class RecordStore:
    def __init__(self, path: str | Path, key_fields: tuple[str, ...]):
        self.path = Path(path)
        self.key_fields = key_fields
        self.records: dict[tuple, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn write from an interrupted run
                self.records[self.key(record)] = record

    def key(self, record: dict[str, Any]) -> tuple:
        return tuple(record[f] for f in self.key_fields)

    def __contains__(self, key: tuple) -> bool:
        return key in self.records

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
