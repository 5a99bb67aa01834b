"""Progress of deepcmb's long loops: a bar on a terminal, periodic one-line log records elsewhere.

Every loop of deepcmb that reports its progress (maps simulated or reconstructed, the batches of a
training epoch, CAMB calls, MCMC steps, figures) goes through :class:`Progress`, or :func:`track` for
an iterable. What it shows depends on where the output goes:

- stderr is a terminal (or the code runs in a Jupyter kernel) and bars are allowed (:func:`bars`): a
  tqdm bar, updated in place;
- otherwise (a log file, a batch job, ``deepcmb run`` without ``--verbose``): one log record every
  :data:`INTERVAL_S` seconds, a line each and never a carriage return, e.g.
  ``simulate: 1200/4800 maps (25%), 3.9 maps/s, elapsed 5m08s, ETA 15m23s``, and, for a loop that
  reported and whose bar would be kept (``leave``), one when it ends.

The records go to a logger of the ``deepcmb`` hierarchy at level INFO. The command line shows them
on stderr with a timestamp; library code configures no logging, so from Python they appear once the
caller configures it (e.g. ``logging.basicConfig(level=logging.INFO)``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

INTERVAL_S = 30.0
"""Seconds between two progress records of a loop that shows no bar."""

_log = logging.getLogger(__name__)
_bars_allowed = True
T = TypeVar("T")


@contextmanager
def bars(allowed: bool) -> Iterator[None]:
    """Context in which progress bars are allowed or not (not: records only, even on a terminal).

    ``deepcmb run`` runs its stages in ``bars(verbose)``: one line per stage on a terminal, with the
    stages' periodic records in between.
    """
    global _bars_allowed
    saved, _bars_allowed = _bars_allowed, allowed
    try:
        yield
    finally:
        _bars_allowed = saved


def format_duration(seconds: float) -> str:
    """``'42s'``, ``'3m05s'``, ``'2h07m'``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _plural(unit: str) -> str:
    if unit.endswith("y") and unit[-2:-1] not in "aeiou":
        return unit[:-1] + "ies"
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


def _draws_bars() -> bool:
    """Whether a bar can be drawn: stderr is a terminal, or this is a Jupyter kernel (widget bars)."""
    return "ipykernel" in sys.modules or (sys.stderr is not None and sys.stderr.isatty())


class Progress:
    """Progress of a loop of ``total`` steps (see the module docstring for what is shown where).

    Parameters
    ----------
    total : int or None
        Steps of the whole loop (None: unknown, no percentage or ETA).
    desc : str
        What the loop does, first on the bar or record (``'simulate'``).
    unit : str
        One step (``'map'``); records use its plural.
    enabled : bool
        Show anything at all (a stage's ``progress`` argument).
    initial : int
        Steps already done (a resumed loop); rates and ETA count only the steps done here.
    leave : bool
        Keep the finished bar; without a bar, record the end of a loop that reported.
    log : logging.Logger, optional
        Logger of the records (the caller's module logger; default this module's).
    interval : float, optional
        Seconds between records (default :data:`INTERVAL_S`).

    Examples
    --------
    >>> with Progress(len(rows), "reconstruct", "map", enabled=progress) as bar:  # doctest: +SKIP
    ...     for batch in batches:
    ...         ...
    ...         bar.update(len(batch))
    """

    def __init__(self, total: int | None, desc: str, unit: str = "step", *, enabled: bool = True, initial: int = 0,
                 leave: bool = True, log: logging.Logger | None = None, interval: float | None = None):
        self.total, self.desc, self.unit, self.enabled, self.leave = total, desc, unit, enabled, leave
        self.n = self.initial = initial
        self.log = log or _log
        self.interval = INTERVAL_S if interval is None else interval
        self.postfix: dict[str, Any] = {}
        self.t0 = self.last = time.monotonic()
        self.reported = False
        self.bar = None
        if enabled and _bars_allowed and _draws_bars():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, smoothing=0.1)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Count ``n`` more steps done; ``postfix`` (e.g. ``loss='0.123'``) is shown after the count."""
        self.n += n
        self.postfix.update(postfix)
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(self.postfix, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last, self.reported = now, True
                self.log.info("%s", self.status(now))

    def status(self, now: float | None = None) -> str:
        """One line: ``desc: n/total units (pct%), rate, elapsed, ETA[, postfix]``."""
        elapsed = (time.monotonic() if now is None else now) - self.t0
        done = self.n - self.initial
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{self.desc}: {count} {_plural(self.unit)}"
                 + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.1f} {_plural(self.unit)}/s" if rate >= 1 else f"{1 / rate:.1f} s/{self.unit}")
        parts.append(f"elapsed {format_duration(elapsed)}")
        if self.total and done > 0:
            parts.append(f"ETA {format_duration((self.total - self.n) * elapsed / done)}")
        parts += [f"{k} {v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def close(self) -> None:
        """Close the bar, or record the end of a loop that reported (with ``leave``)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.reported and self.leave:
            self.reported = False
            self.log.info("%s: %d %s done in %s", self.desc, self.n, _plural(self.unit),
                          format_duration(time.monotonic() - self.t0))


def track(iterable: Iterable[T], desc: str, unit: str = "step", *, total: int | None = None, enabled: bool = True,
          leave: bool = True, log: logging.Logger | None = None) -> Iterator[T]:
    """Iterate over ``iterable`` with a :class:`Progress` (``total`` defaults to its length, if it has one).

    Parameters are those of :class:`Progress`.
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, unit, enabled=enabled, leave=leave, log=log) as bar:
        for item in iterable:
            yield item
            bar.update()
