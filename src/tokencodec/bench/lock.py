"""One writer per output folder: two sweeps writing the same results folder would compute every point twice
and interleave their records.

``folder_lock(folder)`` holds an advisory lock (``fcntl.flock``) on ``<folder>/.tokencodec.lock`` and writes the
holder's PID, host, command and start time into it. A second writer is refused with ``FolderLockedError``
naming that PID, or, with ``wait=True``, waits until the folder is free. The kernel releases the lock when
its process dies (even on ``kill -9``), so a lock file left by a dead PID is simply taken over. The lock is
re-entrant within a process (``run_study`` holds it around ``run_sweep``, which takes it too). Where
``fcntl`` does not exist (Windows) no lock is taken.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".tokencodec.lock"
_HELD: dict[Path, list[int]] = {}      # folder → [file descriptor, depth]


class FolderLockedError(RuntimeError):
    """Another process is writing this output folder; the message names its PID."""


def holder(folder: str | Path) -> dict:
    """What the lock file says about its holder (empty when it says nothing)."""
    try:
        return json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "another process"
    where = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    what = f" ({info['command']}, since {info['since']})" if info.get("command") else ""
    return f"PID {info['pid']}{where}{what}"


def _command() -> str:
    """This process's command line as typed: "tokencodec study s.yaml", not the script's full path."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    name = "python -m tokencodec" if name == "__main__.py" else name
    return " ".join([name, *sys.argv[1:]])


@contextmanager
def folder_lock(folder: str | Path, wait: bool = False, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the write lock of ``folder`` (created if missing) for the block; see the module docstring."""
    folder = Path(folder).resolve()
    if folder in _HELD:
        _HELD[folder][1] += 1
        try:
            yield
        finally:
            _HELD[folder][1] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not wait:
                    raise FolderLockedError(f"{folder} is being written by {_describe(holder(folder))}; wait for "
                                            "it to finish, or pass --wait to start when it has") from None
                time.sleep(poll_s)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command()[:200],
                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD[folder] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[folder]
            os.ftruncate(fd, 0)          # the file stays (unlinking it would race with a waiter); it says nothing
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


__all__ = ["FolderLockedError", "LOCK_NAME", "folder_lock", "holder"]
