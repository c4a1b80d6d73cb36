"""Training every model a run needs into the cache, several processes side by side."""
from __future__ import annotations

import os
import time
from typing import Any

import torch
from tqdm.auto import tqdm

from workbench.analyses.icl.training import TrainSpec, cache_path, train


def _train_spec_worker(spec: TrainSpec) -> float:
    """Train one spec into the cache in a worker process (one thread); returns its seconds."""
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train(spec, progress=False)
    return time.perf_counter() - t0


def train_all(specs: list[TrainSpec], workers: int, progress: bool) -> dict[TrainSpec, float]:
    """Train every spec not yet in the cache, ``workers`` processes at a time; {spec: seconds}
    (0 for specs found in the cache)."""
    seconds = {spec: 0.0 for spec in specs}
    todo = [spec for spec in dict.fromkeys(specs) if not cache_path(spec).is_file()]
    if not todo:
        return seconds
    workers = max(1, min(workers, len(todo), os.cpu_count() or 1))
    bar = tqdm(total=len(todo), desc=f"training {len(todo)} models ({workers} at a time)", disable=not progress, leave=False)
    if workers == 1:
        for spec in todo:
            t0 = time.perf_counter()
            train(spec, progress=progress)
            seconds[spec] = time.perf_counter() - t0
            bar.update()
    else:
        for spec, spent in _train_in_processes(todo, workers):
            seconds[spec] = spent
            bar.update()
    bar.close()
    return seconds


def _train_in_processes(todo: list[TrainSpec], workers: int) -> Any:
    """(spec, seconds) as each worker finishes. Workers ignore Ctrl-C and leave it to this
    process, whose ``with`` ends in ``Pool.terminate``: an interrupt (or an error) stops and
    reaps every worker at once, where ProcessPoolExecutor waited for the running trainings
    (about 34 s) and left a zombie."""
    import multiprocessing
    from multiprocessing import util

    # last of the exit finalizers, after the pool's semaphores are gone: reap the helper
    # process spawn pools start, which would outlive us as a zombie wherever process 1 does
    # not reap orphans (containers)
    util.Finalize(None, _stop_resource_tracker, exitpriority=-100)
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_leave_ctrl_c_to_the_parent) as pool:
        yield from pool.imap_unordered(_train_spec_pair, todo)


def _stop_resource_tracker() -> None:
    from multiprocessing import resource_tracker

    stop = getattr(getattr(resource_tracker, "_resource_tracker", None), "_stop", None)
    if callable(stop):
        try:
            stop()
        except (OSError, RuntimeError):
            pass


def _leave_ctrl_c_to_the_parent() -> None:
    """Worker set-up: Ctrl-C is the parent's to handle. And tqdm gets a thread lock: by default
    its first bar makes a multiprocessing lock (a named semaphore), and a worker terminated
    mid-training cannot release it, so the resource tracker reported it as leaked after the
    parent's "interrupted"."""
    import signal
    import threading

    from tqdm import tqdm

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())


def _train_spec_pair(spec: TrainSpec) -> tuple[TrainSpec, float]:
    return spec, _train_spec_worker(spec)
