"""What every output file shares: atomic writes, the output checks, JSON and checked HDF5 opening.

An output is written under a temporary name beside its final one and renamed when complete
(:func:`atomic_path`, :func:`atomic_folder`), so a file or folder under its final name is always
whole. Before any work starts, a stage checks its output with :func:`check_output_file` or
:func:`check_output_folder`: an existing output is refused unless ``overwrite`` is asked for, and a
missing or read-only parent folder is refused at once, not after hours of work. Every JSON file a
stage writes goes through :func:`write_json`: numpy scalars and arrays become numbers and lists,
non-finite numbers become ``null``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, OutputExistsError


def plain(obj: Any) -> Any:
    """Nested dicts / lists / numpy values -> plain JSON types; non-finite floats -> None."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | Path, obj: Any, **dumps: Any) -> Path:
    """Write ``plain(obj)`` as JSON (indent 1, newline at the end) atomically; returns the path.

    ``dumps`` are further keywords of :func:`json.dumps` (e.g. ``sort_keys=True``).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(plain(obj), indent=1, allow_nan=False, **dumps) + "\n")
    return path


def temporary_name(path: str | Path, prefix: str = "") -> Path:
    """The temporary name of ``path`` while it is written: ``PATH.tmp``, or ``PREFIX + name`` in the
    same folder when ``prefix`` is given (for writers that insist on the file's suffix, e.g. Keras)."""
    path = Path(path)
    return path.with_name(prefix + path.name) if prefix else path.with_name(path.name + ".tmp")


@contextmanager
def atomic_path(path: str | Path, prefix: str = "") -> Iterator[Path]:
    """Write a file under a temporary name, renamed to ``path`` when the block ends without error.

    Examples
    --------
    >>> with atomic_path(out) as tmp:
    ...     np.save(tmp, array)

    On an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temporary_name(path, prefix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Fill a folder under the temporary name ``PATH.tmp``; it replaces ``path`` when the block ends.

    A stale ``PATH.tmp`` of an interrupted run is removed first; on an error the temporary folder is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temporary_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_parent_writable(out: str | Path) -> Path:
    """Refuse an output whose parent folder is missing or not writable; returns ``Path(out)``."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: folder {parent} is not writable")
    return out


def check_output_file(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing output file (unless ``overwrite``), a folder in its place, or an unwritable
    parent folder; returns ``Path(out)``."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists (use --overwrite to replace it)")
    if out.is_dir():
        raise OutputExistsError(f"{out}: is a directory")
    return check_parent_writable(out)


def check_output_folder(out: str | Path, overwrite: bool = False, *, holds: Callable[[Path], bool],
                        what: str, foreign: str | None = None) -> Path:
    """Check an output folder before a stage fills it; returns ``Path(out)`` (nothing is created).

    Parameters
    ----------
    out : str or Path
        The folder.
    overwrite : bool
        Whether a folder holding this stage's output may be replaced.
    holds : callable
        ``holds(folder)``: whether an existing folder holds this stage's output.
    what : str
        That output in words, for the message (``'an evaluation report'``).
    foreign : str, optional
        When given, a non-empty folder that does not hold this stage's output is refused with this
        message (the stage would delete it); when None such a folder is written into.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir():
        if holds(out):
            if not overwrite:
                raise OutputExistsError(f"{out}: holds {what} (use --overwrite to replace it)")
        elif foreign is not None and any(out.iterdir()):
            raise OutputExistsError(f"{out}: {foreign}")
    check_parent_writable(out)
    if out.exists() and not os.access(out, os.W_OK):
        raise InputError(f"{out}: not writable")
    return out


def open_checked(path: str | Path, fmt: str, what: str):
    """Open a deepcmb HDF5 file read-only, checking its ``format`` attribute.

    Parameters
    ----------
    path : str or Path
    fmt : str
        Expected ``format`` attribute (e.g. ``'deepcmb.sims'``).
    what : str
        What the file should be, for the message (e.g. ``'simulation'``).

    Returns
    -------
    h5py.File
        The caller closes it (use it as a context manager).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    try:
        ok = f.attrs.get("format") == fmt
    except (OSError, KeyError, RuntimeError) as exc:  # corrupted attribute metadata
        f.close()
        raise InputError(f"{path}: unreadable HDF5 metadata ({exc})") from None
    if not ok:
        f.close()
        raise InputError(f"{path}: not a deepcmb {what} file (format attribute missing or wrong)")
    return f
