"""Where work runs: inline, in local worker processes, or on a Dask distributed cluster.

All three expose the same two calls, ``submit(fn, *args)`` returning a future and
:func:`as_completed`, so a stage is written once. Results do not depend on the executor: every task
derives its randomness from its own arguments.

Local workers end with their parent, however it ends: when the stage stops on an error or an interruption
(SIGTERM, SIGINT) the workers are killed at once instead of finishing their tasks, whose results the
stage would not keep; and each worker watches its parent (:func:`watch_parent`), so that the workers and
the resource tracker of :mod:`multiprocessing` do not outlive a parent killed with SIGKILL. Workers ignore
SIGINT and SIGTERM: a Ctrl-C to the process group, or a batch system's SIGTERM to every process of a job,
is handled by the parent alone.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client


class _InlineExecutor:
    """Runs each task at submission in the calling process (workers = 1: simplest to debug)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future:
        future = cf.Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # the future carries the exception to the caller, as a pool would
            future.set_exception(exc)
        return future


def default_workers() -> int:
    """Local worker processes by default: the cores this process may run on (its CPU affinity, which a batch
    scheduler such as SLURM or ``taskset`` sets), not every core of the machine."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


@contextmanager
def open_executor(workers: int = 1, scheduler: str | None = None,
                  scheduler_file: str | None = None) -> Iterator[cf.ProcessPoolExecutor | _InlineExecutor | Client]:
    """Context manager yielding an executor with ``submit(fn, *args) -> future``.

    Parameters
    ----------
    workers : int
        Local worker processes, at least 1 (1: run inline); the stage checks the user's value.
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://host:8786``); overrides ``workers``.
    scheduler_file : str, optional
        A Dask scheduler file (``dask scheduler --scheduler-file PATH``, the usual way on a cluster);
        overrides ``workers``.
    """
    if scheduler and scheduler_file:
        raise ConfigError("--scheduler and --scheduler-file: give one")
    if scheduler or scheduler_file:
        flag = "--scheduler" if scheduler else "--scheduler-file"
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError(f"{flag}: needs dask distributed (pip install 'deepcmb[dask]')") from None
        try:
            client = Client(scheduler, timeout="20s") if scheduler else Client(scheduler_file=scheduler_file,
                                                                                timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"{flag}: cannot connect to {scheduler or scheduler_file} ({exc})") from None
        try:
            yield client
        finally:
            client.close()
    elif workers > 1:
        pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                      initializer=start_worker,
                                      initargs=(os.getpid(), max(default_workers() // workers, 1)))
        try:
            yield pool
        except BaseException:
            _kill_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        yield _InlineExecutor()


PARENT_POLL_S = 1.0
"""How often a worker without ``prctl`` (not Linux) checks that its parent lives, seconds."""


THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "DUCC0_NUM_THREADS")
"""Environment variables that cap the threads of the libraries a worker runs (CAMB's OpenMP, BLAS, ducc0)."""


def start_worker(parent_pid: int, threads: int) -> None:
    """Initializer of a local worker process: cap its libraries at ``threads`` threads each (the cores
    this process may use shared among the workers; set before CAMB or numpy's BLAS load in the worker),
    then :func:`watch_parent`."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    watch_parent(parent_pid)


def watch_parent(parent_pid: int) -> None:
    """Initializer of a local worker process: end it when its parent dies; leave SIGINT and SIGTERM to the
    parent.

    On Linux the kernel sends the worker SIGKILL when its parent dies (``prctl(PR_SET_PDEATHSIG)``);
    elsewhere a daemon thread checks every :data:`PARENT_POLL_S` seconds that the parent is still
    there and ends the worker otherwise.

    Parameters
    ----------
    parent_pid : int
        Process id of the parent (the process that made the pool).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the call
                os._exit(1)
            return
    threading.Thread(target=_poll_parent, args=(parent_pid,), daemon=True, name="deepcmb-watch-parent").start()


def _poll_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os._exit(1)


def _kill_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Kill the worker processes of a pool now (their tasks are abandoned), cancel the pending ones, and
    let the pool's manager thread end.

    A worker killed while it sends a result leaves half a message in the result pipe, which the pool's
    manager thread would wait for forever, and the interpreter with it at exit. Once no worker is left,
    closing this process's end of that pipe turns the wait into an end of file, which the pool handles
    as a worker that died. The pool has no public handle on its workers or its pipe, hence the private
    attributes (those of Python 3.8 to 3.13).
    """
    processes = list((pool._processes or {}).values())
    results = pool._result_queue
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.kill()
    for p in processes:
        p.join()
    if results is not None:
        results._writer.close()


def as_completed(futures: Iterable[Any]) -> Iterator[Any]:
    """Iterate over futures as they finish (concurrent.futures or Dask futures)."""
    futures = list(futures)
    if futures and not isinstance(futures[0], cf.Future):
        from distributed import as_completed as dask_as_completed

        return dask_as_completed(futures)
    return cf.as_completed(futures)


def capacity(executor: cf.ProcessPoolExecutor | _InlineExecutor | Client) -> int:
    """Tasks the executor runs at once: its processes, a Dask cluster's threads (all its workers'), or 1 inline."""
    if isinstance(executor, _InlineExecutor):
        return 1
    if isinstance(executor, cf.ProcessPoolExecutor):
        return executor._max_workers
    return max(sum(executor.nthreads().values()), 1)


def run_tasks(executor: cf.ProcessPoolExecutor | _InlineExecutor | Client, fn: Callable[..., Any],
              tasks: Iterable[Sequence[Any]], max_in_flight: int | None = None) -> Iterator[Any]:
    """Run ``fn(*task)`` for every task, yielding results as they complete.

    At most ``max_in_flight`` tasks (default: twice :func:`capacity`, so every worker has the next task
    waiting) are pending at once, so memory stays bounded however many tasks there are.
    """
    max_in_flight = max_in_flight or 2 * capacity(executor)
    tasks = iter(tasks)
    pending = set()
    for task in tasks:
        pending.add(executor.submit(fn, *task))
        if len(pending) >= max_in_flight:
            break
    while pending:
        done = next(iter(as_completed(pending)))
        pending.discard(done)
        result = done.result()
        for task in tasks:
            pending.add(executor.submit(fn, *task))
            break
        yield result
