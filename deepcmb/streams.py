"""The process's standard streams at the level of file descriptors.

Compiled libraries (CAMB's Fortran, TensorFlow's C++ runtime) write straight to file descriptors 1
and 2, past Python's ``sys.stdout`` and ``sys.stderr``; :func:`silenced` is how deepcmb keeps their
chatter out of its own output.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def silenced(*fds: int) -> Iterator[None]:
    """Send what is written to the file descriptors ``fds`` (1: stdout, 2: stderr) to /dev/null meanwhile.

    Python's own streams are flushed before and after, so what Python wrote before is kept and what
    it writes meanwhile is silenced too; exceptions pass through (printed after the streams are back).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in fds:
            os.dup2(devnull, fd)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip(fds, saved):
            os.dup2(copy, fd)
        for fd in saved + [devnull]:
            os.close(fd)
