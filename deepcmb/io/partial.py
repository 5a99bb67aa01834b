"""The folder of partial results that makes a long stage resumable.

A stage that works in independent units (blocks of maps) saves each finished unit atomically as
``OUT.partial/<name>.npz``; a re-run of the same command with the same config skips the units already
there, and the final file is assembled from them (then the folder is removed). The folder's
``config.json`` records what the units belong to: a re-run with another config starts afresh, or, for a
folder shared by several processes (the shards of an array job), is refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError
from .files import atomic_path


class PartialFolder:
    """``OUT.partial/``: units saved as ``.npz`` files beside a ``config.json`` stamp.

    Parameters
    ----------
    out : str or Path
        The stage's final output file.
    stamp : str
        Text identifying the units' config and inputs (e.g. canonical JSON).
    fresh : bool
        Discard units already there (``--overwrite``).
    shared : bool
        The folder is shared by several processes, which must never delete it: a folder of another
        stamp (or ``fresh``) is refused instead.

    Raises
    ------
    InputError
        For a shared folder holding units of another stamp.
    """

    def __init__(self, out: str | Path, stamp: str, fresh: bool = False, shared: bool = False):
        out = Path(out)
        self.path = out.with_name(out.name + ".partial")
        config = self.path / "config.json"
        stale = self.path.exists() and (config.exists() and config.read_text() != stamp or fresh)
        if shared and stale:
            raise InputError(f"{self.path}: holds units of another config (or --overwrite was given); the "
                             "processes sharing it never delete it, so remove it yourself first")
        if stale or self.path.exists() and not config.exists() and not shared:
            shutil.rmtree(self.path)
        self.path.mkdir(exist_ok=True)
        if not config.exists():
            with atomic_path(config) as tmp:
                tmp.write_text(stamp)

    def _file(self, name: str) -> Path:
        return self.path / f"{name}.npz"

    def has(self, name: str) -> bool:
        """Whether unit ``name`` is saved."""
        return self._file(name).exists()

    def save(self, name: str, arrays: Mapping[str, np.ndarray]) -> None:
        """Save unit ``name`` atomically (a unit under its final name is whole)."""
        with atomic_path(self._file(name), prefix="tmp_") as tmp:  # np.savez keeps a .npz name
            np.savez(tmp, **arrays)

    def load(self, name: str) -> dict[str, np.ndarray]:
        """The arrays of unit ``name``.

        Raises
        ------
        InputError
            If the unit cannot be read (the message says to delete it and re-run).
        """
        path = self._file(name)
        try:
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"{path}: unreadable partial result ({exc}); delete it and re-run") from None

    def remove(self) -> None:
        """Delete the folder (once the final file is written)."""
        shutil.rmtree(self.path)
