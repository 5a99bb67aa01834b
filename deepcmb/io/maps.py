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

import hashlib
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import observations, sims
from .files import text

MASK_AWARE = ("qe", "map")
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
        what = ("need a network that reads the mask and the noise map (--model survey)" if method == "nn"
                else f"are not supported by method {method}")
        raise InputError(f"{path}: masked maps (a mask not all ones or a non-constant ivar_p) {what}")
    return maps


def read_weights(source: sims.SimsMaps | observations.Observations, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The masks and polarization inverse noise variances of some maps of an open file.

    Parameters
    ----------
    source : SimsMaps or Observations
        An open file (:func:`open_maps`).
    rows : ndarray of int
        Maps to read, all of one noise level.

    Returns
    -------
    mask : ndarray, shape (len(rows), ny, nx)
        The file's ``/mask`` (in [0, 1]); ones without one.
    ivar : ndarray, shape (len(rows), ny, nx)
        The file's ``/ivar_p``, 1/µK² per pixel for each of Q and U; without one, the white noise of the
        level, :math:`(\\Delta_{\\rm pix} / \\Delta_P)^2` (pixel side in arcmin over µK-arcmin).

    Raises
    ------
    InputError
        Without ``/ivar_p`` at a noiseless level.
    """
    shape = (len(rows),) + source.shape
    mask = source.read("mask", rows).astype(float) if "mask" in source.weights else np.ones(shape)
    if "ivar_p" in source.weights:
        ivar = source.read("ivar_p", rows).astype(float)
    else:
        noise = source.instruments()[source.noise_index[rows[0]]].noise_p_uk_arcmin
        if noise == 0:
            raise InputError(f"{source.path}: masked maps without /ivar_p need noise_p_uk_arcmin > 0")
        ivar = np.full(shape, (source.pixel_arcmin / noise) ** 2)
    return mask, ivar


def weight_groups(mask: np.ndarray, ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (mask, inverse-variance) pairs of some maps: what a mean field is simulated for.

    Parameters
    ----------
    mask, ivar : ndarray, shape (n, ny, nx)

    Returns
    -------
    first : ndarray of int, shape (n_groups,)
        The first map of each distinct pair.
    group : ndarray of int, shape (n,)
        The pair (group) of every map.
    """
    keys, first, group = {}, [], np.empty(len(mask), np.int64)
    for i in range(len(mask)):
        key = hashlib.sha256(np.ascontiguousarray(mask[i]).tobytes() + np.ascontiguousarray(ivar[i]).tobytes())
        key = key.hexdigest()
        if key not in keys:
            keys[key] = len(first)
            first.append(i)
        group[i] = keys[key]
    return np.array(first, dtype=np.int64), group
