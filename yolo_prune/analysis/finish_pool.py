"""Scorers' ``finish`` (COCOeval and test.py's metrics, once per configuration) in worker processes, so that one
chunk's configurations are summarised while the next chunk's forward passes run.

At COCO scale this host work costs more than the GPU's downstream forwards (BENCHMARKS.md, "Sensitivity analysis
speed"); it is pure Python/C++ on the CPU and independent per configuration, so it scales with processes (threads
would serialise on the GIL and stall the forward loop). Each worker is a fresh interpreter running this module
(``python -m``: nothing of the caller's script is imported again, unlike multiprocessing's spawn) and receives the
scorer once over a pipe; each state travels in the scorer's ``portable`` form (plain arrays), and the numbers that
come back are the ones an in-process ``finish`` gives for the same state. One feeder thread per worker hands it the
next state when it is free (blocking pipe I/O releases the GIL), so the forward loop never waits on a busy worker.
"""
from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Sequence

from yolo_prune.errors import YoloPruneError

AUTO_CPU_WORKERS = 1  # CPU analyses: the forward passes keep the other cores busy (and only a spare core helps)
AUTO_GPU_WORKERS = 4  # GPU analyses: the host does little else
WORTH_SECONDS = 2.0  # automatic workers start once the finishing left is estimated above a start (~2 s of CPU)


@dataclass(frozen=True)
class WorkerPolicy:
    """How many worker processes finish configurations, and when they start: at once (``worth_seconds`` 0), or
    once the first rounds, finished in this process, put the finishing still to do above ``worth_seconds``."""

    workers: int = 0
    worth_seconds: float = 0.0


def score_workers(device_type: str, requested: int | None = None, cpus: int | None = None,
                  threads: int | None = None) -> WorkerPolicy:
    """``requested`` workers from the start; else 4 next to a GPU (at most the CPUs besides this process) and 1 on a
    CPU when a core is left besides this process's ``threads`` intra-op threads (default: torch's; a worker beside
    forwards that use every core slows them more than it saves: BENCHMARKS.md), started when worth it (small analyses
    finish faster than a worker starts)."""
    if requested is not None:
        return WorkerPolicy(max(0, int(requested)))
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    if device_type == "cuda":
        return WorkerPolicy(max(0, min(AUTO_GPU_WORKERS, cpus - 1)), WORTH_SECONDS)
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    return WorkerPolicy(max(0, min(AUTO_CPU_WORKERS, cpus - threads)), WORTH_SECONDS)


class _Tasks:
    """The states waiting for a worker, oldest first: feeders take the next one (blocking), the pool takes back
    the oldest when it was submitted no later than a limit (never blocking). ``None`` tells a feeder to stop."""

    def __init__(self) -> None:
        self._items: deque = deque()
        self._ready = threading.Condition()

    def put(self, item: tuple[int, Any, Any] | None) -> None:
        with self._ready:
            self._items.append(item)
            self._ready.notify()

    def take(self) -> tuple[int, Any, Any] | None:
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self._items.popleft()

    def take_back(self, limit: int) -> tuple[int, Any, Any] | None:
        """The oldest waiting state if its sequence number is <= ``limit``, else None."""
        with self._ready:
            if self._items and self._items[0] is not None and self._items[0][0] <= limit:
                return self._items.popleft()
            return None


class _Worker:
    """One ``python -m yolo_prune.analysis.finish_pool`` process and the two pipe ends that talk to it."""

    def __init__(self, scorer: Any):
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        env = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])  # so a source checkout imports the same code
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        env["OMP_NUM_THREADS"] = "1"  # its few tensor ops must not take the cores of the forward passes
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, str(to_child_r), str(from_child_w)],
                                     pass_fds=(to_child_r, from_child_w), env=env)
        os.close(to_child_r)
        os.close(from_child_w)
        self.send = Connection(to_child_w, readable=False)
        self.recv = Connection(from_child_r, writable=False)
        self.scorer = scorer  # sent by the feeder: the pipe blocks until the new interpreter has imported
        self.used = False  # set by the feeder once it has sent the scorer

    def kill(self) -> None:
        self.proc.kill()

    def close(self) -> None:
        """Ask the worker to end (it is idle) and close the pipes, without waiting for it: its interpreter takes
        ~1 s to shut down, time the analysis need not spend (a daemon thread reaps it). A worker that never got work
        may still be importing: it is stopped instead, having nothing to finish."""
        if not self.used:
            self.proc.kill()
        try:
            self.send.send(None)
        except OSError:
            pass
        self.send.close()
        self.recv.close()
        threading.Thread(target=_reap, args=(self.proc,), daemon=True).start()


def _reap(proc: subprocess.Popen) -> None:
    """Wait for a worker told to end (no zombie left); one that hangs is killed."""
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _feed(worker: _Worker, tasks: _Tasks, results: queue.Queue) -> None:
    """Feeder thread: the scorer, then the next (key, state) to the worker once it is free; its answer (or death)
    to ``results``."""
    first = True
    while (task := tasks.take()) is not None:
        _, key, state = task
        try:
            if first:
                worker.used = True
                worker.send.send(worker.scorer)
                first = False
            worker.send.send((key, state))
            results.put(worker.recv.recv())
        except (EOFError, OSError):
            results.put((key, None, f"the worker process ended (exit code {worker.proc.poll()}; out of memory?)",
                         0.0))
            return


def _portable(scorer: Any, state: Any) -> Any:
    convert = getattr(scorer, "portable", None)
    return convert(state) if convert is not None else state


class FinishPool:
    """``submit(key, state)`` now, ``results(keys)`` later; without workers ``finish`` runs at submit time.
    ``steal``: ``results`` finishes still-queued states in this process instead of waiting idle for the workers."""

    def __init__(self, scorer: Any, workers: int = 0, steal: bool = True):
        self.scorer = scorer
        self.steal = steal
        self.stolen = 0  # states submitted to the workers but finished here
        self._done: dict[Any, Any] = {}
        self._waiting = 0  # submitted to the workers, not yet back
        self.local_seconds = 0.0  # time spent in ``finish`` in this process
        self.worker_seconds = 0.0  # ... and in the workers
        self._tasks = _Tasks()
        self._results: queue.Queue = queue.Queue()
        self._submitted: dict[Any, int] = {}  # key -> sequence number, for the states sent to the workers
        self._workers: list[_Worker] = []
        self._feeders: list[threading.Thread] = []
        self.start(workers)

    @property
    def workers(self) -> int:
        return len(self._workers)

    def start(self, workers: int) -> None:
        """Start ``workers`` processes (none when some already run); later submissions go to them."""
        if self._workers or workers <= 0:
            return
        self._workers = [_Worker(self.scorer) for _ in range(workers)]
        self._feeders = [threading.Thread(target=_feed, args=(w, self._tasks, self._results), daemon=True)
                         for w in self._workers]
        for t in self._feeders:
            t.start()

    def __enter__(self) -> "FinishPool":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def submit(self, key: Any, state: Any) -> None:
        if not self._workers:
            t0 = time.perf_counter()
            self._done[key] = self.scorer.finish(state)
            self.local_seconds += time.perf_counter() - t0
        else:
            seq = len(self._submitted)
            self._submitted[key] = seq
            self._tasks.put((seq, key, _portable(self.scorer, state)))
            self._waiting += 1

    def results(self, keys: Sequence[Any]) -> list[Any]:
        """The metrics of ``keys`` (a worker's exception is raised here). Answers already back are read first; then,
        rather than wait idle, this process finishes states no worker has taken yet, but only those submitted no
        later than the last of ``keys`` (later ones stay with the workers, beside this process's next forwards)."""
        limit = max((self._submitted.get(k, -1) for k in keys), default=-1)
        while any(k not in self._done for k in keys):
            if self._collect(block=False):
                continue
            if self.steal and self._take_back(limit):
                continue
            self._collect(block=True)
        return [self._done.pop(k) for k in keys]

    def _collect(self, block: bool) -> bool:
        """Store one worker answer (waiting for it when ``block``); False when none was there."""
        try:
            got, metrics, error, seconds = self._results.get(block=block)
        except queue.Empty:
            return False
        self._waiting, self.worker_seconds = self._waiting - 1, self.worker_seconds + seconds
        if error is not None:
            raise YoloPruneError(f"scoring configuration {got} failed in a worker process "
                                 f"(--score-workers 0 scores in this process):\n{error}")
        self._done[got] = metrics
        return True

    def _take_back(self, limit: int) -> bool:
        """Finish here the oldest state no worker has taken, if submitted no later than ``limit``; False if none."""
        task = self._tasks.take_back(limit)
        if task is None:
            return False
        _, key, state = task
        self._waiting -= 1
        self.stolen += 1
        t0 = time.perf_counter()
        try:
            self._done[key] = self.scorer.finish(state)  # an error is raised as scoring in this process raises it
        finally:
            self.local_seconds += time.perf_counter() - t0
        return True

    def close(self) -> None:
        """Stop the workers; work still pending (an error elsewhere ended the analysis) is dropped at once."""
        if self._waiting:
            for w in self._workers:
                w.kill()  # their feeders see the pipes close
        for _ in self._feeders:
            self._tasks.put(None)
        for t in self._feeders:
            t.join(timeout=10)
        for w in self._workers:
            w.close()
        self._workers, self._feeders = [], []


def _serve(tasks: Connection, results: Connection) -> None:
    """Worker side: the scorer first, then (key, state) -> (key, metrics, error text, seconds) until None."""
    try:
        scorer = tasks.recv()  # None: closed before any work came
        while scorer is not None and (task := tasks.recv()) is not None:
            _answer(scorer, task, results)
    except (EOFError, BrokenPipeError):  # the analysis ended without saying so (killed): nothing left to do
        pass


def _answer(scorer: Any, task: tuple, results: Connection) -> None:
    key, state = task
    t0 = time.perf_counter()
    try:
        metrics, error = scorer.finish(state), None
    except Exception:  # reported to the parent, which raises it
        metrics, error = None, traceback.format_exc()
    results.send((key, metrics, error, time.perf_counter() - t0))


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
