"""Atomic file writes: a crash mid-write never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=True) + "\n")


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class OutputPathError(ValueError):
    """An output that cannot be written (read-only, under a file, an impossible name); one line says which."""


class InputPathError(ValueError):
    """An input file that is missing, a folder, or unreadable; one line says which."""


def _existing_ancestor(path: Path) -> Path:
    for parent in (path, *path.parents):
        try:
            if parent.exists() or parent.is_symlink():
                return parent
        except OSError:          # a name the file system refuses (too long…): look further up
            continue
    return Path(".")


def _shown(path: Path) -> str:
    """The path for a one-line message: very long names shortened in the middle."""
    text = str(path)
    return text if len(text) <= 100 else f"{text[:48]}…{text[-48:]}"


def check_writable_folder(folder: str | os.PathLike, option: str = "--out") -> Path:
    """Create ``folder`` (with its parents) and prove that a file can be written in it, before any work.

    Raises ``OutputPathError`` naming ``option``, the path and why: a read-only folder, a path under a file,
    a name the file system refuses. Creating the folder early is harmless: the results go there anyway.
    """
    folder = Path(folder)
    base = _existing_ancestor(folder)
    if base.exists() and not base.is_dir():
        what = "is a file" if base == folder else f"is under the file {_shown(base)}"
        raise OutputPathError(f"{option} {_shown(folder)}: {what}; give a folder that can be written")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tokencodec-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise OutputPathError(f"{option} {_shown(folder)}: cannot write there ({err.strerror or err}); "
                              "give a folder that can be written") from None
    return folder


def check_writable_file(path: str | os.PathLike, option: str = "--out") -> Path:
    """The folder of the file ``path`` is writable and ``path`` is not a folder (``OutputPathError`` else)."""
    path = Path(path)
    try:
        is_dir = path.is_dir()
    except OSError as err:
        raise OutputPathError(f"{option} {_shown(path)}: cannot write there ({err.strerror or err})") from None
    if is_dir:
        raise OutputPathError(f"{option} {_shown(path)}: is a folder; give a file name")
    base = _existing_ancestor(path.parent)
    if base.exists() and not base.is_dir():
        raise OutputPathError(f"{option} {_shown(path)}: is under the file {_shown(base)}; give a path in a folder "
                              "that can be written")
    check_writable_folder(path.parent, option)
    return path


def check_input_file(path: str | os.PathLike, what: str = "input") -> Path:
    """``path`` is an existing, readable regular file (``InputPathError`` naming it and what it is else)."""
    path = Path(path)
    try:
        if path.is_dir():
            raise InputPathError(f"{_shown(path)}: is a folder; the {what} is a file")
        if not path.exists():
            raise InputPathError(f"{_shown(path)}: file not found (the {what})")
    except OSError as err:
        raise InputPathError(f"{_shown(path)}: cannot be read ({err.strerror or err})") from None
    if not os.access(path, os.R_OK):
        raise InputPathError(f"{_shown(path)}: cannot be read (permission denied)")
    return path
