"""Opening and checking the inputs of the evaluation: a simulation (or observation) file and its reconstructions.

A reconstruction is accepted only if it was made from this very file (provenance, via
:func:`deepcmb.io.reconstruction.open_reconstruction`), has its maps' shape and pixel size, and names distinct
rows of it; the evaluation then uses the rows every reconstruction holds. A simulation file carries the
truth; an observation file (:mod:`deepcmb.io.observations`) has none, and the methods are then
compared with each other only.
"""

from __future__ import annotations

import re
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InputError
from ..io.reconstruction import open_reconstruction
from ..io.maps import open_maps

if TYPE_CHECKING:
    import h5py
    from numpy.typing import ArrayLike

    from ..sample import Instrument

LABEL = re.compile(r"^[A-Za-z0-9_]+$")
"""Allowed method labels (they name HDF5 groups and JSON keys)."""

RESERVED = ("index", "cosmology_index", "noise_index", "T", "Q", "U", "kappa", "E_unlensed")
"""Names used by ``/examples`` datasets, so not available as labels."""


def check_labels(recs: dict[str, str | Path]) -> dict[str, Path]:
    """Validate the mapping label -> reconstruction path; returns it as ``{label: Path}``."""
    if not isinstance(recs, dict) or not recs:
        raise InputError("recs: give at least one reconstruction as label -> file (e.g. --rec nn=REC.h5)")
    for label in recs:
        if not isinstance(label, str) or not LABEL.match(label):
            raise InputError(f"reconstruction label {label!r}: use letters, digits and '_' only")
        if label in RESERVED:
            raise InputError(f"reconstruction label {label!r}: reserved (names an /examples dataset); choose another")
    return {label: Path(path) for label, path in recs.items()}


def read_rows(dataset: h5py.Dataset, idx: ArrayLike) -> np.ndarray:
    """``dataset[idx]`` for distinct, possibly unsorted row numbers ``idx`` (contiguous reads when possible)."""
    idx = np.asarray(idx, dtype=np.int64)
    order = np.argsort(idx)
    srt = idx[order]
    if srt.size and srt[-1] - srt[0] + 1 == srt.size:
        data = dataset[int(srt[0]):int(srt[-1]) + 1]
    else:
        data = dataset[srt]
    out = np.empty_like(data)
    out[order] = data
    return out


class EvaluationInputs:
    """The open simulation (or observation) file and reconstructions, checked against each other (a context
    manager).

    Parameters
    ----------
    sims : str or Path
        Simulation file of ``deepcmb simulate`` (must hold ``/maps/kappa``), or observation file.
    recs : dict
        Label -> reconstruction file (:func:`check_labels`).

    Attributes
    ----------
    sims_path : Path
        Absolute path of the simulation or observation file.
    maps : SimsMaps or Observations
        That file opened with :func:`deepcmb.io.maps.open_maps`.
    sims : h5py.File or None
        The open simulation file (truth, cosmologies); None for an observation file (no truth).
    recs : dict
        Label -> open reconstruction ``h5py.File``.
    rec_paths : dict
        Label -> absolute path.
    geom : FlatSkyGeometry
    periodic : bool
    rows : ndarray of int, shape (n,)
        Sorted rows of the simulation file present in every reconstruction.
    positions : dict
        Label -> ndarray (n,): position of each of ``rows`` in that reconstruction.
    e_labels : list of str
        Labels whose reconstruction has ``/maps/E_unlensed`` (and the sims the truth for it).
    cosmology_index, noise_index : ndarray of int, shape (n,)
        Of ``rows`` (all zeros for an observation file: one noise level, the fiducial cosmology).
    """

    def __init__(self, sims, recs):
        self._stack = ExitStack()
        try:
            self._open(sims, check_labels(recs))
        except BaseException:
            self._stack.close()
            raise

    def _open(self, sims, recs):
        self.sims_path = Path(sims).resolve()
        self.maps = self._stack.enter_context(open_maps(sims))
        self.sims = self.maps.file if self.maps.kind == "simulations" else None
        self.geom, self.periodic, n_sims = self.maps.geom, self.maps.periodic, self.maps.n_maps
        if self.sims is not None and "kappa" not in self.sims["maps"]:
            raise InputError(f"{sims}: no /maps/kappa truth to evaluate against (add kappa to simulation.fields)")
        self.recs, self.rec_paths, index = {}, {}, {}
        for label, path in recs.items():
            f = self._stack.enter_context(open_reconstruction(path, sims))
            self.recs[label], self.rec_paths[label] = f, path.resolve()
            index[label] = self._check(label, path, f, n_sims)
        rows = None
        for idx in index.values():
            rows = idx if rows is None else np.intersect1d(rows, idx)
        self.rows = np.unique(rows)
        if self.rows.size == 0:
            raise InputError("the reconstructions " + ", ".join(f"{k}={v}" for k, v in recs.items())
                             + " have no simulation row in common")
        self.positions = {}
        for label, idx in index.items():
            where = np.full(n_sims, -1, np.int64)
            where[idx] = np.arange(idx.size)
            self.positions[label] = where[self.rows]
        has_e_truth = self.sims is not None and "E_unlensed" in self.sims["maps"]
        self.e_labels = [k for k, f in self.recs.items() if "E_unlensed" in f["maps"] and has_e_truth]
        skipped = [k for k, f in self.recs.items() if "E_unlensed" in f["maps"] and not has_e_truth]
        if skipped:
            warnings.warn(f"{sims}: no /maps/E_unlensed truth; the E maps of {', '.join(skipped)} are not evaluated",
                          stacklevel=3)
        self.noise_index = self.maps.noise_index[self.rows]
        self.cosmology_index = np.zeros_like(self.noise_index) if self.sims is None else \
            read_rows(self.sims["meta/cosmology_index"], self.rows)

    def _check(self, label, path, f, n_sims):
        """Shape, pixel, row-count and index checks of one reconstruction; returns its ``/meta/index``."""
        a, (ny, nx) = f.attrs, self.geom.shape
        shape = tuple(int(n) for n in a.get("shape", ()))
        if shape != self.geom.shape:
            raise InputError(f"{path} ({label}): maps of shape {shape}, the simulation file's are {(ny, nx)}")
        if not np.isclose(float(a.get("pixel_arcmin", np.nan)), self.geom.pixel_arcmin, rtol=1e-9, atol=0):
            raise InputError(f"{path} ({label}): pixels of {a.get('pixel_arcmin')} arcmin, the simulation file's "
                             f"are {self.geom.pixel_arcmin} arcmin")
        if "maps/kappa" not in f or "meta/index" not in f:
            raise InputError(f"{path} ({label}): missing /maps/kappa or /meta/index")
        idx = f["meta/index"][...].astype(np.int64)
        n = int(a.get("n_maps", -1))
        if idx.ndim != 1 or n != idx.size:
            raise InputError(f"{path} ({label}): n_maps = {n} but /meta/index has shape {idx.shape}")
        for name in [k for k in ("kappa", "E_unlensed") if k in f["maps"]]:
            if f["maps"][name].shape != (idx.size, ny, nx):
                raise InputError(f"{path} ({label}): /maps/{name} has shape {f['maps'][name].shape}, expected "
                                 f"({idx.size}, {ny}, {nx}) for the {idx.size} rows of /meta/index")
        if idx.size and (idx.min() < 0 or idx.max() >= n_sims):
            raise InputError(f"{path} ({label}): /meta/index names rows outside the {n_sims} maps of "
                             f"{self.sims_path}")
        if np.unique(idx).size != idx.size:
            raise InputError(f"{path} ({label}): /meta/index repeats rows")
        return idx

    def instruments(self) -> list[Instrument]:
        """One :class:`~deepcmb.sample.Instrument` per noise level of the simulation (or observation) file."""
        return self.maps.instruments()

    def close(self) -> None:
        """Close every file."""
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
