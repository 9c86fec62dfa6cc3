"""A sweep killed with SIGKILL at -j 2 loses only the jobs in flight, leaves no orphaned workers,
and its rerun computes exactly what is missing (real processes, really killed)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CODECS, QUALITIES, IMAGES = ("jpeg", "webp"), list(range(10, 100, 10)), 24


def _children(pid: int) -> set[int]:
    out = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        out |= {int(x) for x in text.split()}
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its table entry is left


def _records(path: Path) -> list[dict]:
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line torn by the kill
    return out


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads process trees from Linux /proc")
def test_kill_9_at_j2_keeps_finished_points_kills_workers_and_resumes(tmp_path, photo):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        y, x = rng.integers(0, 20, 2)
        Image.fromarray(np.ascontiguousarray(photo[y:y + 170, x:x + 230])).save(images / f"img{i:02d}.png")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tokencodec", "codecs", "-d", str(images), "-o", str(out), "-j", "2",
           "-q", "10:90:10", *(a for c in CODECS for a in ("-c", c))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    points = out / "points.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and len(_records(points)) < 2 * len(CODECS) * len(QUALITIES):
        assert proc.poll() is None, "the sweep ended before it could be killed"
        time.sleep(0.05)
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {(r["pipeline"], r["sample"], r["knob"]["quality"]) for r in _records(points)}
    total = IMAGES * len(CODECS) * len(QUALITIES)
    assert 0 < len(before) < total, f"{len(before)} of {total} points on disk when killed"
    assert workers, "no worker processes were seen"
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "workers outlived their killed parent"

    valid_before = len(_records(points))
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    after = _records(points)
    keys = [(r["pipeline"], r["sample"], r["knob"]["quality"]) for r in after]
    assert len(set(keys)) == total  # every point is there
    assert len(after) == valid_before + (total - len(before))  # and none was computed twice
    assert set(keys[valid_before:]).isdisjoint(before)  # the rerun ran only what was missing
    print(f"killed with {len(before)} of {total} points on disk ({len(workers)} workers, all gone); "
          f"the rerun computed {len(after) - valid_before}")
    assert json.loads((out / "jpeg.json").read_text())["results"]["quality"] == sorted(QUALITIES)  # ascending rate
