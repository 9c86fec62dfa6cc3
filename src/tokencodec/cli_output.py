"""Where the ``tokencodec`` command writes, so that its output pipes.

- **stdout** carries results only (tables, JSON, a decoded header, an answer): never wrapped, never
  coloured when it is not a terminal (rich turns colour off by itself there; ``soft_wrap`` stops it
  cutting lines at 80 columns).
- **stderr** carries everything else, each message on one line: notes, progress bars (``--quiet``
  turns them off), warnings (``warning: <message> (<category>)``, no source lines) and errors
  (``error: <message>``, exit code 2).
- Third-party progress bars and info logs (huggingface_hub downloads, transformers' "Loading
  weights", datasets) are switched off through their own settings: the public switch in this process
  and the documented environment variables for the worker processes it starts.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

# Settings the libraries document; set only when the user has not chosen otherwise.
LIBRARY_SETTINGS = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
                    "TRANSFORMERS_VERBOSITY": "error", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def one_line(text: object) -> str:
    """A message on one line: inner newlines and runs of spaces become single spaces."""
    return " ".join(str(text).split())


def error(message: object) -> None:
    err.print(Text("error: ", style="bold red") + Text(one_line(message)))


def warning(message: object) -> None:
    err.print(Text("warning: ", style="bold yellow") + Text(one_line(message)))


def note(message: object) -> None:
    """A status line for a person (what runs, where results went): stderr, so stdout stays data."""
    err.print(Text(one_line(message)))


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command: one line, the category named, no source line."""
    warning(f"{message} ({category.__name__})")


def install_warning_format() -> None:
    warnings.showwarning = show_warning


def quiet_libraries() -> None:
    """Switch off third-party progress bars and info logs (here and in workers started from here)."""
    for key, value in LIBRARY_SETTINGS.items():
        os.environ.setdefault(key, value)
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # pragma: no cover - a dependency of every model path
        return
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") != "0":  # the user's explicit 0 has priority (and raises)
        disable_progress_bars()          # transformers reads this switch when it is imported
    if "transformers" in sys.modules:    # already imported: its own switches
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


@contextmanager
def progress(label: str, quiet: bool = False):
    """A progress bar on stderr; yields ``update(done, total)``. Nothing at all with ``quiet``, or when stderr is
    not a terminal (a log file gets no bar frames)."""
    if quiet or not err.is_terminal:
        yield lambda done, total: None
        return
    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err)
    with bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


__all__ = ["LIBRARY_SETTINGS", "err", "error", "install_warning_format", "note", "one_line", "out", "progress",
           "quiet_libraries", "show_warning", "warning"]
