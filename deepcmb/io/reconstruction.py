"""The reconstruction file: a lensing reconstruction (network or quadratic estimator), its layout,
writer and readers.

Every reconstruction method writes the same layout, so the evaluation treats them alike
(``format = 'deepcmb.reconstruction'``, ``format_version = 1``)::

    /              attrs: format, format_version, deepcmb_version, git_revision, software, stage, created,
                          config (JSON), method ('nn' | 'qe' | 'map'), sims_file (absolute path of the
                          simulation or observation file reconstructed), sims_created,
                          sims_git_revision (copied from a simulation file; empty for an observation
                          file) and sims_config_sha256 (SHA-256 of a simulation file's config attribute,
                          of an observation file's attributes and data), so that a mismatched input
                          file can be refused; n_maps, shape (ny, nx), pixel_arcmin,
                          plus the method's own attributes (below)
    /maps/kappa    (n, ny, nx) float32, chunks (1, ny, nx): reconstructed convergence (dimensionless)
    /maps/<NAME>   further maps of the same shape, e.g. E_unlensed (µK) from the network's second head
    /meta/index    (n,) int64: row of each map in the simulation (or observation) file
    /meta/<NAME>   further per-map arrays (n, ...), e.g. noise_index

A quadratic-estimator file (``method = 'qe'``) also has the root attributes estimator (canonical
label), estimators (the single estimators it combines), lmin, lmax (CMB multipoles of the filters),
Lmin, Lmax (lensing multipoles kept), wiener, response, mv_covariance, apodize_arcmin (cosine-taper
width of the window applied to the maps, 0: none), window_w2, window_w4 (its moments, windowed maps
only) and mean_field, and the analytic N0 of each noise level of the simulation file (the one level of an observation file)
(:func:`read_n0`)::

    /n0/edges        (nbin + 1,) float64   L bin edges
    /n0/L            (nbin,) float64       mode-weighted bin centres
    /n0/kappa        (n_levels, nbin) float64   binned analytic N0 of the kappa estimate (sr)
    /n0/kappa_2d     (n_levels, ny, nx // 2 + 1) float64  N0 on the rfft grid (sr; inf outside the band,
                                                          NaN for a level without maps)

A QE file of masked maps (a mask not all ones or a non-constant ``ivar_p``, :mod:`deepcmb.qe.masked_stage`)
also has the root attributes filter (``'cinv'``: the C^-1 filter of :mod:`deepcmb.qe.cinv`),
response_correction and mean_field (how they were simulated), mask_w2 and mask_w4 (the moments
:math:`w_n = \\langle M^n \\rangle` of the file's masks, pixel and map mean, that normalise pseudo-spectra over the
observed region), its ``/n0`` is the analytic N0 at the mean inverse noise of the observed pixels, and::

    /maps/kappa_mean_field (n, ny, nx) float32: the simulated mean field subtracted from each map (same
                                                response correction as kappa)
    /meta/cg_iterations    (n,) int64: conjugate-gradient iterations of each map's C^-1 filter
    /response/edges        (nbin + 1,) float64   L bin edges (those of /n0)
    /response/L            (nbin,) float64       mode-weighted bin centres
    /response/R_mc         (n_levels, nbin) float64   Monte Carlo response over the analytic one (NaN: no maps)
    /response/R_mc_error   (n_levels, nbin) float64   its standard error
    /response/applied      (n_levels, nbin) int8      1 where kappa was divided by R_mc (R_mc / error >=
                                                      response_min_snr), 0 where the analytic response stands
    /response/n0_mc        (n_levels, nbin) float64   simulated reconstruction noise over the observed region
                                                      after the correction (sr)

A network file (``method = 'nn'``) has the attributes model (path of the run folder or ``.keras``
file), model_inputs (its input channels), split (the maps reconstructed) and model_shape (the map shape
it was trained on, which differs from shape under ``--any-shape``).

A MAP file (``method = 'map'``, :mod:`deepcmb.iterative.stage`) has the attributes estimator
(``'MAP'``), lmin, lmax, Lmin, Lmax, mean_field and start (and, for masked or non-periodic maps,
weights: how the data were weighted), the maps ``phi``, ``E_delensed`` and ``B_delensed`` beside
``kappa``, and per map ``/meta/iterations``, ``converged``, ``gradient_ratio`` and ``cg_iterations``.

A reconstruction made with ``--uncertainty CALIBRATION`` (:mod:`deepcmb.uncertainty.stage`) also has the
root attributes uq_lmax (L_uq), uq_calibration (path of the calibration file) and ood_threshold, and::

    /maps/kappa_mean   (n, ny, nx) float32: posterior mean of the true kappa low-passed to |L| <= uq_lmax
    /maps/kappa_sigma  (n, ny, nx) float32: its posterior standard deviation per pixel (the same in every
                       pixel of a periodic map without a mask; following the local depth on masked maps,
                       deepcmb.uncertainty.window)
    /meta/ood_score    (n,) float64: how unlike the calibration maps the input is (deepcmb.uncertainty.ood;
                       above ood_threshold = 1: unlike those of every noise level)
    /meta/uq_level     (n,) int64: the calibrated noise level each map used
    /uncertainty/edges (nring + 1,), /uncertainty/transfer, /uncertainty/residual (n_levels, nring), or
                       (n_levels, ny, nx // 2 + 1) per cell of the rfft grid for a calibration on masked
                       maps, /uncertainty/noise_p (n_levels,): the per-mode posterior
                       (deepcmb.uncertainty.modes)

A network file records the weights it used as model_sha256 (of the ``.keras`` file) and symmetrize.
Every method writes ``/meta/noise_index``.

The file is written to ``OUT.tmp`` and renamed when complete, so a file under the final name is whole; a
disk without room for the maps is refused before any is computed, and a write that fails (full disk,
file size limit) stops with one :class:`~deepcmb.errors.OutputError` naming ``OUT``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from ..errors import InputError
from ..provenance import provenance_attrs
from ..fields import units as field_units
from .files import check_free_space, check_output_file, close_h5, create_h5, open_checked, temporary_name, writing
from .maps import open_maps

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

FORMAT = "deepcmb.reconstruction"
FORMAT_VERSION = 1
METHODS = ("nn", "qe", "map")


def sims_identity(sims_path: str | Path) -> dict:
    """What identifies a simulation or observation file, whatever its path.

    Returns
    -------
    dict
        ``path`` (absolute), ``created``, ``git_revision``, ``config_sha256`` (of a simulation file's
        config JSON; of an observation file's attributes and data,
        :meth:`deepcmb.io.observations.Observations.identity`), ``shape``, ``pixel_arcmin``, ``n_maps``.
    """
    path = Path(sims_path).resolve()
    with open_maps(path) as m:
        return {"path": str(path), **m.identity(), "shape": list(m.shape), "pixel_arcmin": m.pixel_arcmin,
                "n_maps": m.n_maps}


def same_sims(identity: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two :func:`sims_identity` records (or reconstruction attributes) name the same simulations."""
    keys = ("created", "git_revision", "config_sha256")
    return all(str(identity.get(k, "")) == str(other.get(k, "")) for k in keys)


class ReconstructionWriter:
    """Write a reconstruction file map by map (a context manager).

    Parameters
    ----------
    out : str or Path
        Final path; data go to ``OUT.tmp`` until :meth:`close`.
    index : array_like of int, shape (n,)
        Row of each reconstructed map in the simulation file.
    fields : sequence of str
        Names of the maps written (must include ``'kappa'``).
    sims_path : str or Path
        The simulation or observation file the maps were reconstructed from.
    method : {'nn', 'qe', 'map'}
    config : dict
        The resolved config of the stage (stored as JSON with the provenance).
    attrs : dict, optional
        Extra root attributes (e.g. the model or estimator used).
    units : dict, optional
        Field -> units string for fields not in :data:`deepcmb.fields.FIELDS`.
    overwrite : bool
        Replace an existing file.

    Examples
    --------
    >>> with ReconstructionWriter(out, index, ["kappa"], sims, "nn", cfg) as w:
    ...     w.write(0, {"kappa": batch})           # rows 0 .. len(batch) - 1
    """

    def __init__(self, out, index, fields, sims_path, method, config, attrs=None, units=None, overwrite=False):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        fields = list(fields)
        if "kappa" not in fields:
            raise ValueError("a reconstruction must contain 'kappa'")
        self.out = check_output_file(out, overwrite)
        self.tmp = temporary_name(self.out)
        ident = sims_identity(sims_path)
        path, shape, n_sims = ident["path"], tuple(ident["shape"]), ident["n_maps"]
        self.index = np.asarray(index, dtype=np.int64)
        if self.index.ndim != 1 or self.index.size == 0:
            raise InputError("reconstruction index: expected a non-empty 1-d array of rows")
        if self.index.min() < 0 or self.index.max() >= n_sims:
            raise InputError(f"reconstruction index: rows must lie in [0, {n_sims}) of {path}")
        self.shape, self.n, self.fields = shape, self.index.size, fields
        self._written = np.zeros(self.n, bool)
        check_free_space(self.out, 4 * self.n * shape[0] * shape[1] * len(fields))
        a = provenance_attrs(config, "reconstruct")
        a.update(format=FORMAT, format_version=FORMAT_VERSION, method=method, sims_file=path,
                 sims_created=ident["created"], sims_git_revision=ident["git_revision"],
                 sims_config_sha256=ident["config_sha256"], n_maps=self.n, shape=np.array(shape),
                 pixel_arcmin=ident["pixel_arcmin"])
        a.update(attrs or {})
        units = units or {}
        with writing(self.out):
            self._f = create_h5(self.tmp)
        try:
            with writing(self.out):
                self._f.attrs.update(a)
                g = self._f.create_group("maps")
                for name in fields:
                    d = g.create_dataset(name, (self.n,) + shape, dtype="f4", chunks=(1,) + shape)
                    d.attrs["units"] = units.get(name, field_units(name))
                self._f.create_group("meta").create_dataset("index", data=self.index)
        except BaseException:
            self.abort()
            raise

    def write(self, start: int, maps: Mapping[str, np.ndarray]) -> None:
        """Store rows ``start .. start + k - 1`` of every field; ``maps`` maps field -> ``(k, ny, nx)``."""
        if set(maps) != set(self.fields):
            raise ValueError(f"expected maps {sorted(self.fields)}, got {sorted(maps)}")
        k = None
        for name, m in maps.items():
            m = np.asarray(m)
            if m.ndim != 3 or m.shape[1:] != self.shape or (k is not None and m.shape[0] != k):
                raise ValueError(f"{name}: expected ({k or 'k'}, {self.shape[0]}, {self.shape[1]}), got {m.shape}")
            k = m.shape[0]
            if start < 0 or start + k > self.n:
                raise ValueError(f"rows {start}..{start + k} outside 0..{self.n}")
            with writing(self.out):
                self._f["maps"][name][start:start + k] = m.astype(np.float32)
        self._written[start:start + k] = True

    def write_meta(self, name: str, values: ArrayLike) -> None:
        """Store a per-map array ``/meta/<name>`` of shape ``(n, ...)``."""
        values = np.asarray(values)
        if values.shape[:1] != (self.n,):
            raise ValueError(f"meta {name}: expected {self.n} rows, got shape {values.shape}")
        with writing(self.out):
            self._f["meta"].create_dataset(name, data=values)

    def write_group(self, name: str, datasets: Mapping[str, ArrayLike]) -> None:
        """Store a group ``/<name>`` of datasets that are not per map (e.g. the analytic N0)."""
        with writing(self.out):
            g = self._f.create_group(name)
            for key, values in datasets.items():
                g.create_dataset(key, data=np.asarray(values))

    def close(self) -> None:
        """Finish the file and move it to its final name (all rows must have been written)."""
        if not self._written.all():
            missing = np.flatnonzero(~self._written)
            raise RuntimeError(f"{self.out}: rows {missing[:5].tolist()}... were never written")
        with writing(self.out):
            close_h5(self._f)
            os.replace(self.tmp, self.out)

    def abort(self) -> None:
        """Close and drop the temporary file."""
        try:
            close_h5(self._f, quiet=True)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


def write_reconstruction(out: str | Path, kappa: np.ndarray, extra_maps: Mapping[str, np.ndarray] | None = None, *,
                         sims_path: str | Path, method: str, config: dict, meta: Mapping[str, ArrayLike] | None = None,
                         attrs: dict | None = None, overwrite: bool = False) -> Path:
    """Write a whole reconstruction at once (see :class:`ReconstructionWriter` to stream it).

    Parameters
    ----------
    out : str or Path
    kappa : ndarray, shape (n, ny, nx)
        Reconstructed convergence, dimensionless.
    extra_maps : dict, optional
        Name -> ``(n, ny, nx)`` maps, e.g. ``{'E_unlensed': e}`` (µK) or ``{'phi': phi}`` (rad²).
    sims_path : str or Path
        Simulation or observation file the maps come from.
    method : {'nn', 'qe', 'map'}
    config : dict
        Resolved config of the stage (provenance).
    meta : dict, optional
        Per-map arrays stored under ``/meta``; ``'index'`` (rows in the simulation file) defaults to
        ``0 .. n - 1``.
    attrs : dict, optional
        Extra root attributes.
    overwrite : bool

    Returns
    -------
    Path
    """
    maps = {"kappa": kappa, **(extra_maps or {})}
    meta = dict(meta or {})
    n = np.shape(kappa)[0]
    index = meta.pop("index", np.arange(n))
    with ReconstructionWriter(out, index, list(maps), sims_path, method, config, attrs=attrs,
                              overwrite=overwrite) as w:
        w.write(0, maps)
        for name, values in meta.items():
            w.write_meta(name, values)
    return w.out


def open_reconstruction(path: str | Path, sims_path: str | Path | None = None) -> h5py.File:
    """Open a reconstruction file read-only, checking its format (and, optionally, its truth file).

    Parameters
    ----------
    path : str or Path
    sims_path : str or Path, optional
        When given, the simulation (or observation) file must be the one the reconstruction was made
        from: same ``created`` time stamp, git revision and config, or content for an observation file
        (:func:`sims_identity`; the path may differ, e.g. after a copy).

    Returns
    -------
    h5py.File
        The caller closes it (use as a context manager).
    """
    f = open_checked(path, FORMAT, "reconstruction")
    if sims_path is not None:
        ident = sims_identity(sims_path)
        made_from = {k: f.attrs.get(f"sims_{k}", "") for k in ("file", "created", "git_revision", "config_sha256")}
        if not same_sims(ident, made_from):
            f.close()
            raise InputError(f"{path}: was reconstructed from {made_from['file']} (created {made_from['created']}), "
                             f"not from {sims_path} (created {ident['created']})")
    return f


def estimator_settings(f: h5py.File) -> dict:
    """Keyword arguments of :class:`~deepcmb.qe.QuadraticEstimator` that made an open QE reconstruction
    file ``f``: ``estimator, lmin, lmax, Lmin, Lmax, precision``."""
    out = {k: float(f.attrs[k]) for k in ("lmin", "lmax", "Lmin", "Lmax")}
    out.update(estimator=str(f.attrs["estimator"]), precision=json.loads(f.attrs["config"])["precision"])
    return out


def read_n0(f: h5py.File) -> dict:
    """The analytic N0 an open QE reconstruction file carries (layout in the module docstring).

    Returns
    -------
    dict
        ``edges`` (nbin + 1,), ``L`` (nbin,), ``kappa`` (n_levels, nbin) and ``kappa_2d``
        (n_levels, ny, nx // 2 + 1), float64, sr.
    """
    if "n0" not in f:
        raise InputError(f"{f.filename}: a quadratic-estimator file without /n0 (made by an older deepcmb; "
                         "re-run deepcmb reconstruct --method qe)")
    return {k: f["n0"][k][...] for k in ("edges", "L", "kappa", "kappa_2d")}
