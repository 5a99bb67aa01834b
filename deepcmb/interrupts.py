"""SIGTERM and SIGINT end a command cleanly.

A batch system sends SIGTERM at a job's time limit (and to every process of the job when it is
cancelled); Ctrl-C sends SIGINT. While a command runs (:func:`deepcmb.cli.main`), either signal raises
:class:`Interrupted` in the main thread, wherever it is. The stage's ``finally`` blocks and context
managers then do what they do on any error: temporary files are removed, local workers killed
(:mod:`deepcmb.executor`) and the output's lock given back (:mod:`deepcmb.io.lock`). The command prints
one line, without a traceback, and exits with ``128 + the signal's number`` (143 for SIGTERM, 130 for
SIGINT), as a shell reports a process that a signal ended. What a resumable stage had saved
(simulated units in ``OUT.partial/``, training checkpoints) stays, so the same command resumes.

Further signals during that clean-up are ignored, so that it completes; SIGKILL still ends the process at
once, and its workers with it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGTERM, signal.SIGINT)
"""The signals that interrupt a command."""


class Interrupted(KeyboardInterrupt):
    """A command was interrupted by a signal (raised by the handler of :func:`interruptible`).

    A subclass of KeyboardInterrupt, so that every library treats SIGTERM as it treats Ctrl-C and no
    ``except Exception`` swallows it.

    Parameters
    ----------
    signum : int
        The signal received.
    """

    def __init__(self, signum: int):
        self.signum = int(signum)
        super().__init__(self.name)

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``'SIGTERM'``."""
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """``128 + signum``: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


class TimeLimitReached(Exception):
    """A resumable stage stopped at the wall-time limit it was given (``deepcmb train --time-limit``).

    What it had done is saved as after an interruption, so the same command continues. The command line
    prints the message on one line and exits with :attr:`exit_code`.
    """

    exit_code = 75
    """``EX_TEMPFAIL`` of ``sysexits.h``: not finished, try again; a job chain (``afterok``) stops here."""


def _raise(signum: int, frame: object) -> None:
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)  # the clean-up that follows is not interrupted in turn
    raise Interrupted(signum)


@contextmanager
def interruptible() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGINT raise :class:`Interrupted` in the main thread; the
    handlers in place before are restored afterwards. Called from another thread, where Python cannot
    set signal handlers, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
