"""Executors run the jobs of a sweep: in this process, in a pool of processes, or on Ray.

All three hand each job's result to the caller as soon as that job finishes, so the sweep can put
its records on disk at once (any ``-j``) and a progress bar moves. Workers of the process pool die
with their parent, even on ``kill -9`` (Linux ``PR_SET_PDEATHSIG``, and a watchdog thread that
exits when the parent is gone, for other platforms). Ray is an optional extra
(``pip install tokencodec[ray]``): ``RayExecutor()`` starts a local Ray, ``address=...`` joins a
cluster; each Ray worker is an actor that builds the observer once.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

OnResult = Callable[[int, Any], bool]  # (job index, result) -> keep going?


class Executor(ABC):
    name: str = ""

    @abstractmethod
    def run(self, fn: Callable[[Any], Any], jobs: Sequence[Any], on_result: OnResult) -> None:
        """Run ``fn(job)`` for every job; ``on_result`` returning False stops starting new jobs."""

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name}


class SerialExecutor(Executor):
    name = "serial"

    def run(self, fn, jobs, on_result) -> None:
        for i, job in enumerate(jobs):
            if not on_result(i, fn(job)):
                return


def _die_with_parent(parent: int) -> None:
    """Worker initializer: never outlive the sweep that started us."""
    try:  # Linux: the kernel sends SIGKILL when the parent thread dies
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class ProcessExecutor(Executor):
    """A pool of ``workers`` processes (spawned: forking a parent that runs torch threads can deadlock)."""

    name = "process"

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError(f"workers={workers}: need at least 1")
        self.workers = workers

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers}

    def run(self, fn, jobs, on_result) -> None:
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_die_with_parent,
                                   initargs=(os.getpid(),))
        try:
            pending = {pool.submit(fn, job): i for i, job in enumerate(jobs)}
            keep_going = True
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    if future.cancelled():
                        continue
                    result = future.result()  # a worker's exception is a bug: let it raise here
                    if keep_going and not on_result(i, result):
                        keep_going = False
                        for other in pending:
                            other.cancel()  # jobs already running still finish and are kept
                    elif not keep_going:
                        on_result(i, result)
        except BaseException:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.kill()  # Ctrl-C: stop now; finished points are already on disk
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


class RayExecutor(Executor):
    """Ray actors, one per worker, each running jobs with the observer it built once."""

    name = "ray"

    def __init__(self, workers: int = 2, address: str | None = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ImportError("the Ray executor needs Ray: pip install 'tokencodec[ray]'") from None
        if workers < 1:
            raise ValueError(f"workers={workers}: need at least 1")
        self.workers, self.address = workers, address

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "workers": self.workers, "address": self.address or "local"}

    def run(self, fn, jobs, on_result) -> None:
        import ray

        started = not ray.is_initialized()
        if started:
            kw = {"address": self.address} if self.address else {"num_cpus": self.workers}
            ray.init(include_dashboard=False, log_to_driver=False, **kw)
        try:
            actor = ray.remote(_RayWorker)
            workers = [actor.remote(fn) for _ in range(self.workers)]
            queue = list(enumerate(jobs))
            running: dict[Any, tuple[int, int]] = {}
            free = list(range(len(workers)))
            keep_going = True
            while queue or running:
                while keep_going and queue and free:
                    w = free.pop()
                    i, job = queue.pop(0)
                    running[workers[w].run.remote(job)] = (i, w)
                if not running:
                    break
                ready, _ = ray.wait(list(running), num_returns=1)
                i, w = running.pop(ready[0])
                free.append(w)
                if not on_result(i, ray.get(ready[0])):
                    keep_going = False
        finally:
            if started:
                ray.shutdown()


class _RayWorker:
    def __init__(self, fn):
        self.fn = fn

    def run(self, job):
        return self.fn(job)


def make_executor(name: str = "serial", workers: int = 1, address: str | None = None) -> Executor:
    """``serial``, ``process`` (``workers`` processes) or ``ray`` (local, or the cluster at ``address``)."""
    if name == "serial":
        return SerialExecutor()
    if name == "process":
        return ProcessExecutor(workers)
    if name == "ray":
        return RayExecutor(workers, address)
    raise ValueError(f"unknown executor {name!r}; allowed: serial, process, ray")


__all__ = ["Executor", "ProcessExecutor", "RayExecutor", "SerialExecutor", "make_executor"]
