"""Where work runs: inline, in local worker processes, or on a Dask distributed cluster.

All three expose the same two calls, ``submit(fn, *args)`` returning a future and
:func:`as_completed`, so a stage is written once. Results do not depend on the executor: every task
derives its randomness from its own arguments.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
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
        with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield pool
    else:
        yield _InlineExecutor()


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
