"""One writer per output folder: refused with the holder's PID, or waited for; a dead holder's lock is taken over."""

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tokencodec.bench.lock import LOCK_NAME, FolderLockedError, folder_lock, holder

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _hold(folder: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", (
        "import time; from tokencodec.bench.lock import folder_lock\n"
        f"with folder_lock({str(folder)!r}):\n    print('held', flush=True); time.sleep({seconds})")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    proc = _hold(tmp_path, 60)
    try:
        assert holder(tmp_path)["pid"] == proc.pid
        with pytest.raises(FolderLockedError, match=rf"is being written by PID {proc.pid} .*pass --wait"):
            with folder_lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    with folder_lock(tmp_path):            # killed (-9): the kernel released its lock
        assert holder(tmp_path)["pid"] == os.getpid()


def test_wait_starts_when_the_holder_finishes(tmp_path):
    proc = _hold(tmp_path, 1.5)
    start = time.monotonic()
    with folder_lock(tmp_path, wait=True, poll_s=0.1):
        waited = time.monotonic() - start
        assert holder(tmp_path)["pid"] == os.getpid()
    proc.wait()
    assert waited > 0.5                     # it did wait for the other writer


def test_a_stale_lock_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": pid, "command": "tokencodec study x"}))
    with folder_lock(tmp_path):
        assert holder(tmp_path)["pid"] == os.getpid()


def test_the_lock_is_reentrant_in_one_process_and_free_after(tmp_path):
    with folder_lock(tmp_path), folder_lock(tmp_path):   # run_study holds it around run_sweep
        pass
    seen = []
    t = threading.Thread(target=lambda: seen.append(subprocess.run(
        [sys.executable, "-c", f"from tokencodec.bench.lock import folder_lock\nwith folder_lock({str(tmp_path)!r}): "
         "print('ok')"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}).stdout.strip()))
    t.start()
    t.join(60)
    assert seen == ["ok"]
    assert holder(tmp_path) == {}            # released: the file says nothing
