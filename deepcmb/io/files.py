"""What every output file shares: atomic writes, the output checks, write errors, JSON and checked HDF5
opening.

An output is written under a temporary name beside its final one and renamed when complete
(:func:`atomic_path`, :func:`atomic_h5`, :func:`atomic_folder`, :func:`atomic_files`), so a file or folder
under its final name is always whole. Before any work starts, a stage checks its output with
:func:`check_output_file` or :func:`check_output_folder`: an existing output is refused unless
``overwrite`` is asked for, and a missing or read-only parent folder is refused at once, not after hours
of work. A write that fails because the disk is full, a file size limit or quota is reached or the
folder is read-only raises :class:`~deepcmb.errors.OutputError` naming the output (:func:`writing`), and
the temporary file is removed. Every JSON file a stage writes goes through :func:`write_json`: numpy
scalars and arrays become numbers and lists, non-finite numbers become ``null``. HDF5 outputs are read
through :func:`open_checked` (format check) and :class:`H5View` (missing or malformed members name the
file and the member).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, OutputError, OutputExistsError

if TYPE_CHECKING:
    import h5py


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


_HINTS = {
    errno.ENOSPC: "free some space, then re-run the same command",
    errno.EDQUOT: "free some space, then re-run the same command",
    errno.EFBIG: "the file size limit (ulimit -f) is reached; raise it, then re-run the same command",
    errno.EROFS: "write it elsewhere (--out)",
    errno.EACCES: "write it elsewhere (--out) or make the folder writable",
    errno.EPERM: "write it elsewhere (--out) or make the folder writable",
    errno.EIO: "check the disk, then re-run the same command",
}
"""The errors of a write that the user's disk or folder causes -> what to do."""


def _write_errno(exc: BaseException) -> int | None:
    """The errno of a failed write listed in :data:`_HINTS`, else None. h5py raises some failures of
    the HDF5 library (closing a file it could not flush) as RuntimeError, the errno in the text."""
    if isinstance(exc, OSError) and exc.errno in _HINTS:
        return exc.errno
    found = re.search(r"errno = (\d+)", str(exc))
    return int(found.group(1)) if found and int(found.group(1)) in _HINTS else None


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a write error of the block that the disk or folder causes (full disk, file size limit, quota,
    read-only or unwritable folder, I/O error) into one :class:`~deepcmb.errors.OutputError` naming
    ``path``; other errors pass unchanged."""
    try:
        yield
    except (OSError, RuntimeError) as exc:
        code = _write_errno(exc)
        if code is None:
            raise
        raise OutputError(f"{path}: cannot be written ({os.strerror(code)}); {_HINTS[code]}") from None


@contextmanager
def atomic_path(path: str | Path, prefix: str = "") -> Iterator[Path]:
    """Write a file under a temporary name, renamed to ``path`` when the block ends without error.

    Examples
    --------
    >>> with atomic_path(out) as tmp:
    ...     np.save(tmp, array)

    On an error the temporary file is removed and ``path`` is left as it was; a write error of the
    disk or folder is raised as :class:`~deepcmb.errors.OutputError` naming ``path`` (:func:`writing`).
    """
    path = Path(path)
    tmp = temporary_name(path, prefix)
    try:
        with writing(path):
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def create_h5(path: str | Path) -> h5py.File:
    """Create an HDF5 file for writing, without a chunk cache.

    Every write then reaches the file system in its own call, which raises a full disk or a file size
    limit at once. With a chunk cache, HDF5 writes the cached chunks when a dataset is closed, where h5py
    can only print the error (hundreds of lines of ignored exceptions), and closing the file after such a
    failure crashed the process with a segmentation fault (h5py 3.14, HDF5 1.14). deepcmb writes whole
    chunks (one map each) once, so the cache saved nothing.
    """
    import h5py

    return h5py.File(path, "w", rdcc_nbytes=0)


def close_h5(f: h5py.File, quiet: bool = False) -> None:
    """Close an HDF5 file opened by :func:`create_h5`; when closing fails (the metadata cannot be written),
    its identifier is released anyway, so nothing touches the file later, and the error is raised
    unless ``quiet``."""
    try:
        f.close()
    except (OSError, RuntimeError):
        if f.id.valid:
            try:
                f.id.close()
            except (OSError, RuntimeError):
                pass  # released as far as the library allows; the first error is the one to report
        if not quiet:
            raise


@contextmanager
def new_h5(path: str | Path) -> Iterator[h5py.File]:
    """An HDF5 file created for the block (:func:`create_h5`) and closed when it ends (:func:`close_h5`;
    quietly when the block raised, whose error is the one to report)."""
    f = create_h5(path)
    try:
        yield f
    except BaseException:
        close_h5(f, quiet=True)
        raise
    close_h5(f)


@contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Write an HDF5 file under its temporary name ``PATH.tmp`` (:func:`new_h5`), closed and renamed to
    ``path`` when the block ends without error.

    On an error the file is closed and removed, ``path`` is left as it was, and a write error of the
    disk or folder is raised as :class:`~deepcmb.errors.OutputError` naming ``path``.

    Examples
    --------
    >>> with atomic_h5(out) as f:
    ...     f["maps/kappa"] = kappa
    """
    with atomic_path(path) as tmp, new_h5(tmp) as f:
        yield f


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Fill a folder under the temporary name ``PATH.tmp``; it replaces ``path`` when the block ends.

    A stale ``PATH.tmp`` of an interrupted run is removed first; on an error the temporary folder is
    removed and ``path`` is left as it was (a write error of the disk or folder is raised as
    :class:`~deepcmb.errors.OutputError`).
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with writing(path):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            yield tmp
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextmanager
def atomic_files(folder: str | Path) -> Iterator[Path]:
    """Write the files of a stage into ``folder`` together: they are made in the temporary folder
    ``FOLDER.tmp`` and moved into ``folder`` (created if missing) when the block ends without error.

    On an error nothing reaches ``folder`` (not even the folder itself), the temporary folder is
    removed, and a write error of the disk or folder is raised as :class:`~deepcmb.errors.OutputError`.
    Files of ``folder`` under other names stay; those under the same names are replaced.

    Examples
    --------
    >>> with atomic_files(out) as tmp:
    ...     write_report(tmp / "report.h5", ev)
    ...     write_summary(tmp / "summary.json", ev)
    """
    folder = Path(folder)
    tmp = temporary_name(folder)
    try:
        with writing(folder):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            yield tmp
            folder.mkdir(exist_ok=True)
            for path in sorted(tmp.iterdir()):
                os.replace(path, folder / path.name)
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


def check_free_space(out: str | Path, nbytes: int) -> None:
    """Refuse to start writing about ``nbytes`` bytes beside ``out`` when its file system has less free
    space (:class:`~deepcmb.errors.OutputError`); quotas and file size limits are not seen here, they
    fail the write itself (:func:`writing`)."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    free = shutil.disk_usage(parent).free
    if free < nbytes:
        raise OutputError(f"{out}: needs about {nbytes / 2**20:.1f} MiB, only {free / 2**20:.1f} MiB are free in "
                          f"{parent}; free some space, then re-run the same command")


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


def open_checked(path: str | Path, fmt: str, what: str) -> h5py.File:
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


def read_rows(d: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``d[rows]`` as float32 ``(len(rows), ...)`` for any integer ``rows`` (unsorted, repeated), one chunk
    read per row: the way every map file is read (one chunk holds one map)."""
    out = np.empty((rows.size,) + d.shape[1:], np.float32)
    if d.dtype == np.float32:
        for k, r in enumerate(rows):
            d.read_direct(out, np.s_[r], np.s_[k])
    else:
        for k, r in enumerate(rows):
            out[k] = d[r]
    return out


def text(value: Any) -> Any:
    """An HDF5 string attribute (bytes or str) as str; other values unchanged."""
    return value.decode() if isinstance(value, bytes) else value


class H5View:
    """A deepcmb HDF5 file opened read-only (a context manager) whose missing members raise
    :class:`~deepcmb.errors.InputError` naming the file and the member.

    Parameters
    ----------
    path : str or Path
    fmt, what : str
        Expected ``format`` attribute and what the file should be (see :func:`open_checked`).
    """

    def __init__(self, path: str | Path, fmt: str, what: str):
        self.path = Path(path)
        self._f = open_checked(path, fmt, what)

    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def has(self, name: str) -> bool:
        """Whether the dataset or group ``name`` (e.g. ``'theory/n_iterative'``) exists."""
        return name in self._f

    def array(self, name: str, *, dtype: Any = None, ndim: int | None = None, shape: tuple | None = None,
              finite: bool = False) -> np.ndarray:
        """The dataset ``name`` as a numpy array, optionally converted and checked.

        Parameters
        ----------
        name : str
            Path of the dataset in the file.
        dtype : numpy dtype, optional
            Convert to it.
        ndim : int, optional
            Required number of dimensions.
        shape : tuple of int, optional
            Required shape.
        finite : bool
            Refuse NaN and infinite values.

        Raises
        ------
        InputError
            Naming the file and the dataset, if it is missing or fails a check.
        """
        if name not in self._f:
            raise InputError(f"{self.path}: missing dataset /{name}")
        d = self._f[name][()]
        if dtype is not None:
            d = np.asarray(d, dtype=dtype)
        if (ndim is not None and np.ndim(d) != ndim) or (shape is not None and np.shape(d) != tuple(shape)):
            want = tuple(shape) if shape is not None else f"{ndim} dimensions"
            raise InputError(f"{self.path}: /{name} has shape {np.shape(d)}, expected {want}")
        if finite and not np.all(np.isfinite(d)):
            raise InputError(f"{self.path}: /{name} holds non-finite values")
        return d

    def attr(self, name: str, where: str = "/") -> Any:
        """Attribute ``name`` of the group or dataset ``where`` (InputError if absent)."""
        if where not in self._f or name not in self._f[where].attrs:
            raise InputError(f"{self.path}: missing attribute '{name}' of {where}")
        return text(self._f[where].attrs[name])

    def keys(self, name: str) -> list:
        """Names of the members of group ``name`` (empty if it does not exist)."""
        return list(self._f[name].keys()) if name in self._f else []
