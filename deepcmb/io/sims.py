"""The simulation file: the simulate stage's HDF5 output, its layout, writer and readers.

Layout (``format = 'deepcmb.sims'``, ``format_version = 1``), readable with h5py alone
(``f["maps/kappa"][i]`` is map ``i``)::

    /                      attrs: format, format_version, deepcmb_version, git_revision, software, stage,
                                  created (UTC ISO 8601), config (the full resolved config, JSON),
                                  seed, kind ('flat' | 'curved'), periodic (bool: flat maps that are
                                  their whole periodic box; false for curved patches and for flat maps
                                  cut from larger boxes, survey.periodic),
                                  shape (ny, nx), pixel_arcmin, n_maps, fields
    /maps/<FIELD>          (n_maps, ny, nx) float32, chunks (1, ny, nx); attrs: units, description
                           (the fields of :data:`deepcmb.fields.FIELDS` chosen by simulation.fields)
    /mask                  (n_maps, ny, nx) float32 in [0, 1], chunks (1, ny, nx), only with survey.mask:
                           the map's mask, 1 where observed, 0 in holes and on the edge, smooth in between
    /ivar_p                (n_maps, ny, nx) float32 > 0, chunks (1, ny, nx), only with survey.noise: the
                           map's inverse noise variance of each of Q and U per pixel, 1/µK²
                           (both have attrs units, description, min and max over all maps; same meaning
                           as in the observation file, :mod:`deepcmb.io.observations`)
    /meta/cosmology_index  (n_maps,) int64   row of /cosmology/params used by the map
    /meta/noise_index      (n_maps,) int64   row of /instrument/* used by the map
                                             (both follow :func:`assignment` of seed_index)
    /meta/seed_index       (n_maps,) int64   the map's random streams are
                                             SeedSequence(seed, spawn_key=(seed_index, component))
    /meta/patch_centre     (n_maps, 2) float64, curved only: (lon, lat) in degrees
    /cosmology/params/<NAME>  (n_cosmo,) float64  H0 [km/s/Mpc], ombh2, omch2, As, ns, tau, mnu [eV],
                                                  Alens
    /cosmology/cl_unlensed (n_cosmo, 4, lmax + 1) float64  TT, EE, BB, TE in µK² (plain C_l)
    /cosmology/cl_lensed   (n_cosmo, 4, lmax + 1) float64  idem, lensed
    /cosmology/cl_pp       (n_cosmo, lmax + 1) float64     C_L^phiphi (includes Alens)
    /cosmology/cl_kk       (n_cosmo, lmax + 1) float64     [L(L+1)]^2 C_L^phiphi / 4
    /cosmology/cl_gradient (n_cosmo, 4, lmax + 1) float64  lensed gradient spectra TgradT, EgradE,
                                                           BgradB, TgradE in µK² (QE responses)
    /instrument            attrs: beam_fwhm_arcmin
    /instrument/noise_t_uk_arcmin, /instrument/noise_p_uk_arcmin   (n_levels,) float64

Fields (``simulation.fields`` chooses which are stored; :data:`deepcmb.sample.FIELDS`):

================  ======  ==================================================================
``T, Q, U``       µK      observed: lensed, beam-convolved, plus noise (white, or drawn from
                          ``/ivar_p``: :mod:`deepcmb.survey`)
``T_lensed`` etc  µK      lensed sky (T, Q, U), no beam, no noise
``T_unlensed``    µK      unlensed temperature
``E_unlensed``    µK      unlensed E (and ``B_unlensed``) as scalar maps
``Q_unlensed``    µK      unlensed Stokes Q (and ``U_unlensed``)
``phi``           rad²    lensing potential
``kappa``         1       convergence, kappa = -lap(phi)/2 (flat sky: kappa_l = l^2 phi_l / 2)
================  ======  ==================================================================

The observed maps are not multiplied by ``/mask``: every pixel holds sky plus noise, holes and edge
included, and a method weighs the data with the mask (e.g. an inverse variance ``mask * ivar_p``), as
it does for an observation file.

Conventions: x runs along the last array axis, y along the first; pixel ``(iy, ix)`` sits at
``(iy, ix) * pixel``. Polarization follows Hu & Okamoto (2002):
``Q(l) + i U(l) = (E(l) + i B(l)) exp(2 i phi_l)``, ``phi_l = atan2(l_y, l_x)``. Fourier modes are
``m(l) = pixel_area * FFT(m)``, so ``<|m(l)|^2> = area * C_l``.

The file is written to ``<out>.tmp`` and renamed when complete, so a file under the final name is
always whole.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from ..cosmology import PARAM_NAMES, CMBSpectra
from ..errors import InputError
from ..fields import FIELDS
from ..geometry import FlatSkyGeometry
from ..provenance import provenance_attrs
from ..sample import Instrument
from ..survey import SURVEY_MAPS
from .files import atomic_h5, open_checked, read_rows

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..simulate import SimPlan

FORMAT = "deepcmb.sims"
FORMAT_VERSION = 1
_SURVEY_ATTRS = {
    "mask": {"units": "1", "description": "mask: 1 where observed, 0 in holes and on the edge, smooth in between"},
    "ivar_p": {"units": "1/uK^2", "description": "inverse noise variance of each of Q and U per pixel"},
}


def write_sims(out: Path, plan: SimPlan, spectra: Sequence[CMBSpectra],
               units: Iterable[tuple[tuple, dict, dict]]) -> None:
    """Write a complete simulation file.

    Parameters
    ----------
    out : Path
        Final path; data go to ``<out>.tmp`` first.
    plan : deepcmb.simulate.SimPlan
    spectra : list of CMBSpectra
        One per cosmology, in order.
    units : iterable of ``(unit, maps, meta)``
        Every unit of ``plan.units`` with its maps (field or survey map, ``plan.products`` -> array
        ``(n, ny, nx)``) and meta arrays.
    """
    n, (ny, nx) = plan.n_maps, plan.geom.shape
    with atomic_h5(out) as f:
        attrs = provenance_attrs(plan.config, "simulate")
        attrs.update(format=FORMAT, format_version=FORMAT_VERSION, seed=plan.config["seed"], kind=plan.kind,
                     periodic=plan.periodic, shape=np.array(plan.geom.shape),
                     pixel_arcmin=plan.geom.pixel_arcmin, n_maps=n, fields=list(plan.fields))
        f.attrs.update(attrs)
        maps = f.create_group("maps")
        for name in plan.fields:
            d = maps.create_dataset(name, (n, ny, nx), dtype="f4", chunks=(1, ny, nx))
            d.attrs.update(units=FIELDS[name].units, description=FIELDS[name].description)
        for name in plan.survey.maps:
            d = f.create_dataset(name, (n, ny, nx), dtype="f4", chunks=(1, ny, nx))
            d.attrs.update(_SURVEY_ATTRS[name])
        meta = f.create_group("meta")
        for name in ("cosmology_index", "noise_index", "seed_index"):
            meta.create_dataset(name, (n,), dtype="i8")
        if plan.kind == "curved":
            meta.create_dataset("patch_centre", (n, 2), dtype="f8").attrs["units"] = "deg (lon, lat)"
        bounds = {name: (np.inf, -np.inf) for name in plan.survey.maps}
        for (_, start, stop, _), unit_maps, unit_meta in units:
            for name in plan.fields:
                maps[name][start:stop] = unit_maps[name]
            for name, (lo, hi) in bounds.items():
                f[name][start:stop] = unit_maps[name]
                bounds[name] = min(lo, float(unit_maps[name].min())), max(hi, float(unit_maps[name].max()))
            for name, values in unit_meta.items():
                meta[name][start:stop] = values
        for name, (lo, hi) in bounds.items():
            f[name].attrs.update(min=lo, max=hi)
        _write_cosmology(f, plan, spectra)
        inst = f.create_group("instrument")
        inst.attrs["beam_fwhm_arcmin"] = plan.instruments[0].beam_fwhm_arcmin
        inst["noise_t_uk_arcmin"] = [i.noise_t_uk_arcmin for i in plan.instruments]
        inst["noise_p_uk_arcmin"] = [i.noise_p_uk_arcmin for i in plan.instruments]


def _write_cosmology(f, plan, spectra):
    g = f.create_group("cosmology")
    params = g.create_group("params")
    for name in PARAM_NAMES:
        params[name] = np.array([p[name] for p in plan.cosmologies], dtype=float)
    g["cl_unlensed"] = np.stack([s.unlensed for s in spectra])
    g["cl_lensed"] = np.stack([s.lensed for s in spectra])
    g["cl_pp"] = np.stack([s.clpp for s in spectra])
    g["cl_kk"] = np.stack([s.clkk for s in spectra])
    g["cl_gradient"] = np.stack([s.gradient for s in spectra])
    for key in ("cl_unlensed", "cl_lensed", "cl_gradient"):
        g[key].attrs.update(units="uK^2", columns="TT, EE, BB, TE", convention="C_l (no l(l+1)/2pi)")
    g["cl_pp"].attrs["units"] = "1"
    g["cl_kk"].attrs["units"] = "1"


def open_sims(path: str | Path) -> h5py.File:
    """Open a simulation file read-only, checking that it is one (the caller closes it)."""
    return open_checked(path, FORMAT, "simulation")


def geometry(f: h5py.File) -> FlatSkyGeometry:
    """The :class:`~deepcmb.geometry.FlatSkyGeometry` of the maps of an open deepcmb HDF5 file (its
    ``shape`` and ``pixel_arcmin`` attributes; simulation, reconstruction and report files carry both)."""
    return FlatSkyGeometry(tuple(int(n) for n in f.attrs["shape"]), float(f.attrs["pixel_arcmin"]))


def assignment(seed_index: int | np.ndarray, n_cosmologies: int,
               n_levels: int) -> tuple[int | np.ndarray, int | np.ndarray]:
    """``(cosmology_index, noise_index)`` of sample ``seed_index`` (ints or integer arrays): samples
    cycle through the cosmologies, then through the noise levels."""
    return seed_index % n_cosmologies, (seed_index // n_cosmologies) % n_levels


def read_spectra(f: h5py.File, index: int) -> CMBSpectra:
    """The :class:`~deepcmb.cosmology.CMBSpectra` of cosmology ``index`` stored in an open sims file."""
    g = f["cosmology"]
    params = {name: float(g["params"][name][index]) for name in PARAM_NAMES}
    return CMBSpectra(params, g["cl_unlensed"][index], g["cl_lensed"][index], g["cl_pp"][index],
                      g["cl_gradient"][index])


def read_instruments(f: h5py.File) -> list[Instrument]:
    """One :class:`~deepcmb.sample.Instrument` per noise level stored in an open sims file."""
    inst = f["instrument"]
    beam = float(inst.attrs["beam_fwhm_arcmin"])
    return [Instrument(beam, float(t), float(p))
            for t, p in zip(inst["noise_t_uk_arcmin"][...], inst["noise_p_uk_arcmin"][...])]


class SimsMaps:
    """The maps of a simulation file behind the interface of
    :class:`~deepcmb.io.observations.Observations` (a context manager), for the stages that take
    either file (:func:`deepcmb.io.maps.open_maps`).

    Parameters
    ----------
    path : str or Path

    Attributes
    ----------
    path : Path
    kind : str
        ``'simulations'``.
    file : h5py.File
        The open file (for what only a simulation file has: truth, cosmology, meta).
    n_maps : int
    pixel_arcmin : float
    geom : FlatSkyGeometry
        The maps' geometry; its ``(ny, nx)`` is also the attribute ``shape``.
    periodic : bool
    fields : list of str
        The stored maps (``/maps`` members).
    weights : list of str
        The survey's ``'mask'`` and ``'ivar_p'`` the file has (``/mask``, ``/ivar_p``).
    weight_range : dict
        ``'mask'``, ``'ivar_p'`` (those present) -> their ``(min, max)`` (the datasets' attributes).
    masked : bool
        Whether the mask is not all ones or ``ivar_p`` is not constant (from the ``min`` and ``max``
        attributes of the datasets): as for an observation file, only the quadratic estimator takes
        such files (:data:`deepcmb.io.maps.MASK_AWARE`).
    noise_index : ndarray of int64, shape (n_maps,)
        Noise level of each map (``/meta/noise_index``).
    """

    kind = "simulations"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = open_sims(self.path)
        try:
            a = self.file.attrs
            self.geom = geometry(self.file)
            self.shape, self.pixel_arcmin = self.geom.shape, self.geom.pixel_arcmin
            self.n_maps, self.periodic = int(a["n_maps"]), bool(a["periodic"])
            self.fields = list(self.file["maps"].keys())
            self.weights = [name for name in SURVEY_MAPS if name in self.file]
            self.weight_range = {name: (float(self.file[name].attrs["min"]), float(self.file[name].attrs["max"]))
                                 for name in self.weights}
            r = self.weight_range
            self.masked = ("mask" in r and r["mask"] != (1.0, 1.0) or "ivar_p" in r and r["ivar_p"][0] != r["ivar_p"][1])
            self.noise_index = self.file["meta/noise_index"][...]
        except KeyError as exc:
            self.file.close()
            raise InputError(f"{self.path}: not a complete simulation file ({exc.args[0] if exc.args else exc})") \
                from None

    def instruments(self) -> list[Instrument]:
        """One :class:`~deepcmb.sample.Instrument` per noise level (:func:`read_instruments`)."""
        return read_instruments(self.file)

    def read(self, name: str, rows: ArrayLike) -> np.ndarray:
        """Maps ``name`` (a field, ``'mask'`` or ``'ivar_p'``) at ``rows`` as float32 ``(len(rows), ny, nx)``
        (one chunk read per map)."""
        if name in self.weights:
            return read_rows(self.file[name], np.asarray(rows, np.int64))
        if name not in self.fields:
            raise InputError(f"{self.path}: no map {name!r} (the file has {', '.join(self.fields + self.weights)})")
        return read_rows(self.file["maps"][name], np.asarray(rows, np.int64))

    def identity(self) -> dict:
        """``created``, ``git_revision`` and ``config_sha256`` (SHA-256 of the config attribute): what
        identifies the simulations, whatever the file's path."""
        a = self.file.attrs
        return {"created": str(a.get("created", "")), "git_revision": str(a.get("git_revision", "")),
                "config_sha256": hashlib.sha256(str(a.get("config", "")).encode()).hexdigest()}

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
