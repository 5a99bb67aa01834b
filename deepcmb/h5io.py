"""HDF5 layout of the simulate stage's output, its writer and a reader.

Layout (``format = 'deepcmb.sims'``, ``format_version = 1``), readable with h5py alone
(``f["maps/kappa"][i]`` is map ``i``)::

    /                      attrs: format, format_version, deepcmb_version, git_revision, stage,
                                  created (UTC ISO 8601), config (the full resolved config, JSON),
                                  seed, kind ('flat' | 'curved'), periodic (bool),
                                  shape (ny, nx), pixel_arcmin, n_maps, fields
    /maps/<FIELD>          (n_maps, ny, nx) float32, chunks (1, ny, nx); attrs: units, description
    /meta/cosmology_index  (n_maps,) int64   row of /cosmology/params used by the map
    /meta/noise_index      (n_maps,) int64   row of /instrument/* used by the map
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
``T, Q, U``       µK      observed: lensed, beam-convolved, plus white noise
``T_lensed`` etc  µK      lensed sky (T, Q, U), no beam, no noise
``T_unlensed``    µK      unlensed temperature
``E_unlensed``    µK      unlensed E (and ``B_unlensed``) as scalar maps
``Q_unlensed``    µK      unlensed Stokes Q (and ``U_unlensed``)
``phi``           rad²    lensing potential
``kappa``         1       convergence, kappa = -lap(phi)/2 (flat sky: kappa_l = l^2 phi_l / 2)
================  ======  ==================================================================

Conventions: x runs along the last array axis, y along the first; pixel ``(iy, ix)`` sits at
``(iy, ix) * pixel``. Polarization follows Hu & Okamoto (2002):
``Q(l) + i U(l) = (E(l) + i B(l)) exp(2 i phi_l)``, ``phi_l = atan2(l_y, l_x)``. Fourier modes are
``m(l) = pixel_area * FFT(m)``, so ``<|m(l)|^2> = area * C_l``.

The file is written to ``<out>.tmp`` and renamed when complete, so a file under the final name is
always whole.
"""

import os
from pathlib import Path

import h5py
import numpy as np

from .cosmology import PARAM_NAMES
from .errors import InputError, OutputExistsError
from .provenance import provenance_attrs
from .sample import Instrument

FORMAT = "deepcmb.sims"
FORMAT_VERSION = 1

UNITS = {
    "T": "uK", "Q": "uK", "U": "uK",
    "T_lensed": "uK", "Q_lensed": "uK", "U_lensed": "uK",
    "T_unlensed": "uK", "E_unlensed": "uK", "B_unlensed": "uK", "Q_unlensed": "uK", "U_unlensed": "uK",
    "phi": "rad^2", "kappa": "1",
}
DESCRIPTIONS = {
    "T": "observed temperature: lensed, beam-convolved, plus white noise",
    "Q": "observed Stokes Q: lensed, beam-convolved, plus white noise",
    "U": "observed Stokes U: lensed, beam-convolved, plus white noise",
    "T_lensed": "lensed temperature, no beam, no noise",
    "Q_lensed": "lensed Stokes Q, no beam, no noise",
    "U_lensed": "lensed Stokes U, no beam, no noise",
    "T_unlensed": "unlensed temperature",
    "E_unlensed": "unlensed E mode as a scalar map",
    "B_unlensed": "unlensed B mode as a scalar map",
    "Q_unlensed": "unlensed Stokes Q",
    "U_unlensed": "unlensed Stokes U",
    "phi": "lensing potential",
    "kappa": "lensing convergence kappa = -laplacian(phi)/2",
}


def write_sims(out, plan, spectra, units):
    """Write a complete simulation file.

    Parameters
    ----------
    out : Path
        Final path; data go to ``<out>.tmp`` first.
    plan : deepcmb.simulate.SimPlan
    spectra : list of CMBSpectra
        One per cosmology, in order.
    units : iterable of ``(unit, maps, meta)``
        Every unit of ``plan.units`` with its maps (field -> array ``(n, ny, nx)``) and meta arrays.
    """
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    n, (ny, nx) = plan.n_maps, plan.geom.shape
    try:
        with h5py.File(tmp, "w") as f:
            attrs = provenance_attrs(plan.config, "simulate")
            attrs.update(format=FORMAT, format_version=FORMAT_VERSION, seed=plan.config["seed"], kind=plan.kind,
                         periodic=plan.kind == "flat", shape=np.array(plan.geom.shape),
                         pixel_arcmin=plan.geom.pixel_arcmin, n_maps=n, fields=list(plan.fields))
            f.attrs.update(attrs)
            maps = f.create_group("maps")
            for name in plan.fields:
                d = maps.create_dataset(name, (n, ny, nx), dtype="f4", chunks=(1, ny, nx))
                d.attrs.update(units=UNITS[name], description=DESCRIPTIONS[name])
            meta = f.create_group("meta")
            for name in ("cosmology_index", "noise_index", "seed_index"):
                meta.create_dataset(name, (n,), dtype="i8")
            if plan.kind == "curved":
                meta.create_dataset("patch_centre", (n, 2), dtype="f8").attrs["units"] = "deg (lon, lat)"
            for (_, start, stop, _), unit_maps, unit_meta in units:
                for name in plan.fields:
                    maps[name][start:stop] = unit_maps[name]
                for name, values in unit_meta.items():
                    meta[name][start:stop] = values
            _write_cosmology(f, plan, spectra)
            inst = f.create_group("instrument")
            inst.attrs["beam_fwhm_arcmin"] = plan.instruments[0].beam_fwhm_arcmin
            inst["noise_t_uk_arcmin"] = [i.noise_t_uk_arcmin for i in plan.instruments]
            inst["noise_p_uk_arcmin"] = [i.noise_p_uk_arcmin for i in plan.instruments]
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def check_output_path(out, overwrite=False):
    """Refuse an existing output (unless ``overwrite``) or an output in a missing/unwritable folder.

    Returns
    -------
    Path
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out}: exists (use --overwrite to replace it)")
    if out.is_dir():
        raise OutputExistsError(f"{out}: is a directory")
    return check_parent_writable(out)


def check_parent_writable(out):
    """Refuse an output whose parent folder is missing or not writable; returns ``Path(out)``."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{out}: parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{out}: folder {parent} is not writable")
    return out


def open_checked(path, fmt, what):
    """Open a deepcmb HDF5 file read-only, checking its ``format`` attribute.

    Parameters
    ----------
    path : str or Path
    fmt : str
        Expected ``format`` attribute.
    what : str
        What the file should be, for the message (e.g. ``'simulation'``).

    Returns
    -------
    h5py.File
        The caller closes it (use as a context manager).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    if f.attrs.get("format") != fmt:
        f.close()
        raise InputError(f"{path}: not a deepcmb {what} file (format attribute missing or wrong)")
    return f


def open_sims(path):
    """Open a simulate-stage file read-only, checking that it is one (see :func:`open_checked`)."""
    return open_checked(path, FORMAT, "simulation")


def read_spectra(f, index):
    """The :class:`~deepcmb.cosmology.CMBSpectra` of cosmology ``index`` stored in an open sims file."""
    from .cosmology import CMBSpectra

    g = f["cosmology"]
    params = {name: float(g["params"][name][index]) for name in PARAM_NAMES}
    return CMBSpectra(params, g["cl_unlensed"][index], g["cl_lensed"][index], g["cl_pp"][index],
                      g["cl_gradient"][index])


def read_instruments(f):
    """One :class:`~deepcmb.sample.Instrument` per noise level stored in an open sims file."""
    inst = f["instrument"]
    beam = float(inst.attrs["beam_fwhm_arcmin"])
    return [Instrument(beam, float(t), float(p))
            for t, p in zip(inst["noise_t_uk_arcmin"][...], inst["noise_p_uk_arcmin"][...])]
