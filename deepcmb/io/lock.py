"""One writer per output: the lock file ``OUT.lock`` beside every file or folder a command writes.

Every stage takes the lock of its output before it looks at it (:meth:`deepcmb.stages.Stage.run`), and
``deepcmb run`` takes the lock of its run folder; the lock is given back when the command ends, whether it
succeeded, failed or was interrupted. The lock file is a line of JSON naming its holder::

    {"command": "deepcmb simulate --config sims/quick.yaml --out sims.h5", "host": "node17", "pid": 1234,
     "started": "2026-12-03T20:41:07+01:00"}

A second command on the same output stops at once, before any work, with one line naming the holder
(:class:`~deepcmb.errors.OutputLockedError`; exit code 2 on the command line)::

    sims.h5 is being written by pid 1234 on node17 (deepcmb simulate --config ...), started 2026-12-03T20:41:07+01:00

The file is created atomically (``O_CREAT | O_EXCL``) and held with ``flock`` while the command runs. The
kernel releases a ``flock`` when its process dies, even by SIGKILL, so a lock file left by a dead process
of this host is recognised as stale and taken over (a log record says so). A lock left on another host
is not taken over, since its process cannot be checked from here: the message says to delete the lock
file once that command is known to be gone. On a file system without ``flock`` (some network mounts), a
holder of this host is checked by its process id instead.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from ..errors import OutputLockedError
from .files import check_parent_writable, writing

log = logging.getLogger(__name__)

SUFFIX = ".lock"
"""What the lock file adds to the output's name."""

_WAIT_S = 0.05
_ATTEMPTS = 100
"""A lock file found empty (its holder is writing it) or replaced meanwhile is looked at again after
``_WAIT_S`` seconds, at most ``_ATTEMPTS`` times; a lock file that stays empty that long is stale."""


def lock_path(out: str | Path) -> Path:
    """The lock file of an output: ``OUT.lock`` in the same folder."""
    out = Path(out)
    return out.with_name(out.name + SUFFIX)


def _command() -> str:
    """This process's command line, its program by its name alone (``deepcmb simulate ...``)."""
    argv = sys.argv or ["python"]
    return shlex.join([Path(argv[0]).name or "python", *argv[1:]])


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
            "started": datetime.now().astimezone().isoformat(timespec="seconds")}


def _who(holder: dict) -> str:
    """``pid 1234 on node17 (deepcmb simulate ...), started 2026-...``."""
    command = str(holder.get("command", "?"))
    if len(command) > 200:
        command = command[:197] + "..."
    pid, host, started = (holder.get(k, "?") for k in ("pid", "host", "started"))
    return f"pid {pid} on {host} ({command}), started {started}"


def _flock(fd: int, block: bool) -> bool | None:
    """Take the ``flock`` of ``fd``: True when taken, False when another process holds it, None when the
    file system has no ``flock``."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise
    return True


def _read(fd: int) -> dict | None:
    """The holder recorded in an open lock file; None while it is empty or half written."""
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _alive(pid: int) -> bool:
    """Whether a process of this host has this id."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (a lock given back and made anew has another)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _create(path: Path) -> int | None:
    """Create the lock file and take it; None when one exists."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return None
    try:
        # blocking: a process looking at the new, still empty file holds the flock a moment only
        _flock(fd, block=True)
        os.write(fd, (json.dumps(_holder(), sort_keys=True) + "\n").encode())
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def _clear_stale(path: Path, out: Path, attempt: int) -> bool:
    """Look at an existing lock file: raise if its holder runs (or may run, on another host); remove it
    and return True if it is stale; return False to look again (it was being made or given back)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        free = _flock(fd, block=False)
        holder = _read(fd)
        if free is False:
            if holder is None:  # its holder is writing it
                return False
            raise OutputLockedError(f"{out} is being written by {_who(holder)}")
        if not _same_file(fd, path):
            return False
        if holder is None and attempt < _ATTEMPTS - 1:
            return False
        here = holder is not None and holder.get("host") == socket.gethostname()
        if holder is not None and not here:
            raise OutputLockedError(f"{out} is being written by {_who(holder)}; if that command no longer runs, "
                                    f"delete {path}")
        if free is None and holder is not None and _alive(int(holder.get("pid", -1))):
            raise OutputLockedError(f"{out} is being written by {_who(holder)}")
        log.warning("%s: taking over a stale lock (%s): its process is gone", out,
                    "an empty lock file" if holder is None else _who(holder))
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


@contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold the lock of an output while the block runs (see the module docstring).

    Parameters
    ----------
    out : str or Path
        The file or folder to be written; its parent folder must exist and be writable.

    Yields
    ------
    Path
        The lock file, ``OUT.lock``.

    Raises
    ------
    OutputLockedError
        Another process holds the lock; the message names it (pid, host, command, start time).
    InputError, OutputError
        The parent folder is missing, not writable, or full.
    """
    out = check_parent_writable(out)
    path = lock_path(out)
    with writing(path):
        for attempt in range(_ATTEMPTS):
            fd = _create(path)
            if fd is not None:
                break
            if not _clear_stale(path, out, attempt):
                time.sleep(_WAIT_S)
        else:
            raise OutputLockedError(f"{out}: its lock {path} keeps changing hands; try again")
    try:
        yield path
    finally:
        try:
            path.unlink(missing_ok=True)  # while still held: a newcomer never takes a lock file being removed
        finally:
            os.close(fd)
