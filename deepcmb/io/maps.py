"""The maps a reconstruction starts from: a simulation file or an observation file, behind one interface.

:func:`open_maps` looks at a file's ``format`` attribute and opens it with the reader of its own
module: :class:`deepcmb.io.sims.SimsMaps` for a simulation file (:mod:`deepcmb.io.sims`),
:class:`deepcmb.io.observations.Observations` for an observation file
(:mod:`deepcmb.io.observations`). Both give ``path``, ``kind`` (``'simulations'`` or
``'observations'``), ``n_maps``, ``shape``, ``pixel_arcmin``, ``geom``, ``periodic``, ``fields``
(the maps ``read`` accepts), ``weights``, ``masked``, ``noise_index`` (noise level of each map),
``instruments()`` (one :class:`~deepcmb.sample.Instrument` per level), ``read(name, rows)``
(float32 ``(len(rows), ny, nx)`` in µK, polarization in deepcmb's convention), ``identity()`` and
``close()``; both are context managers.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from . import observations, sims
from .files import text

MASK_AWARE = ("qe",)
"""Reconstruction methods that take masked maps (a mask not all ones or a non-constant ``ivar_p``)."""

READERS = {sims.FORMAT: sims.SimsMaps, observations.FORMAT: observations.Observations}
"""``format`` attribute -> reader class."""


def file_format(path: str | Path) -> str:
    """The ``format`` attribute of an HDF5 file (``''`` when it has none).

    Raises
    ------
    InputError
        If the file is missing or not readable HDF5.
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            return str(text(f.attrs.get("format", "")))
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None


def open_maps(path: str | Path, method: str | None = None) -> sims.SimsMaps | observations.Observations:
    """Open a simulation or an observation file for reading its maps (the caller closes it).

    Parameters
    ----------
    path : str or Path
    method : str, optional
        The reconstruction method that will read the maps (``'qe'``, ``'nn'``, ``'map'``): a file with a
        mask that is not all ones or an ``ivar_p`` that is not constant is refused unless the method is
        in :data:`MASK_AWARE`.

    Returns
    -------
    SimsMaps or Observations

    Raises
    ------
    InputError
        For a file of another kind, a malformed file, or a masked one for a method that does not take
        masks.
    """
    reader = READERS.get(file_format(path))
    if reader is None:
        raise InputError(f"{path}: not a deepcmb simulation or observation file (format attribute missing or wrong)")
    maps = reader(path)
    if method is not None and method not in MASK_AWARE and maps.masked:
        maps.close()
        raise InputError(f"{path}: masked maps (a mask not all ones or a non-constant ivar_p) are not "
                         f"supported yet by method {method}")
    return maps
