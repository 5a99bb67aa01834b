"""Where work runs: inline, in local worker processes, or on a Dask distributed cluster.

All three expose the same two calls, ``submit(fn, *args)`` returning a future and
:func:`as_completed`, so a stage is written once. Results do not depend on the executor: every task
derives its randomness from its own arguments.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
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


@contextmanager
def open_executor(workers: int = 1,
                  scheduler: str | None = None) -> Iterator[cf.ProcessPoolExecutor | _InlineExecutor | Client]:
    """Context manager yielding an executor with ``submit(fn, *args) -> future``.

    Parameters
    ----------
    workers : int
        Local worker processes, at least 1 (1: run inline); the stage checks the user's value.
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://host:8786``); overrides ``workers``.
    """
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--scheduler: needs dask distributed (pip install 'deepcmb[dask]')") from None
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler: cannot connect to {scheduler} ({exc})") from None
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


def run_tasks(executor: cf.ProcessPoolExecutor | _InlineExecutor | Client, fn: Callable[..., Any],
              tasks: Iterable[Sequence[Any]], max_in_flight: int) -> Iterator[Any]:
    """Run ``fn(*task)`` for every task, yielding results as they complete.

    At most ``max_in_flight`` tasks are pending at once, so memory stays bounded however many tasks
    there are.
    """
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
