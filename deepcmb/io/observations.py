"""The observation file: maps deepcmb did not simulate (data, or another code's simulations), its
layout, writer and reader.

Code outside deepcmb writes this file (with h5py alone, or with :func:`write_observations`);
``deepcmb reconstruct`` (qe and nn) and ``deepcmb evaluate`` take it wherever they take a simulation
file (``--sims``). Layout (``format = 'deepcmb.observations'``, ``format_version = 1``)::

    /               attrs: format, format_version,
                           pixel_arcmin        (float > 0) side of the square pixels, arcmin
                           beam_fwhm_arcmin    (float >= 0) Gaussian beam FWHM the maps are convolved with, arcmin
                           noise_p_uk_arcmin   (float >= 0) white noise of each of Q and U, µK-arcmin
                           noise_t_uk_arcmin   (float >= 0) white noise of T, µK-arcmin (required with /maps/T)
                           periodic            (bool) whether the maps are periodic (a full flat-sky torus,
                                               e.g. simulations); false for patches cut from the sky
                           pol_convention      'COSMO' or 'IAU': the sign of U (below)
    /maps/Q, /maps/U    (N, ny, nx) float, µK: observed (beam-convolved, noisy) Stokes maps, map i = [i]
    /maps/T             (N, ny, nx) float, µK, optional: observed temperature
    /mask               (ny, nx) or (N, ny, nx) float in [0, 1], optional: 0 where there are no data
    /ivar_p             (ny, nx) or (N, ny, nx) float >= 0, optional: inverse noise variance of each of
                        Q and U per pixel, 1/µK²
    /patches/lon_deg, /patches/lat_deg
                        (N,) float, optional: centres of patches cut from the sphere, degrees (written
                        by ``deepcmb cutout``, :mod:`deepcmb.cutout`; not read)

Other root attributes (e.g. a description, the code and version that wrote the file) are ignored by
the reader (they are part of the file's identity, :meth:`Observations.identity`). All maps of a file
share one pixel size, beam and noise level.

Axes. The datasets are ``(N, ny, nx)``: map, row, column, C order, the layout of numpy, h5py and
pixell (``(..., ny, nx)``, y the declination-like axis). Row ``iy`` and column ``ix`` of a map sit at
``y = iy * pixel`` and ``x = ix * pixel``: y runs along the rows (first map axis), x along the
columns (last axis), as in every deepcmb map (:mod:`deepcmb.geometry`). On the sky, y should
increase to the north (declination) and x to the east (right ascension increasing with the
column index).

Polarization. deepcmb refers Q and U to the pixel frame and follows Hu & Okamoto (2002):
``Q(l) + i U(l) = (E(l) + i B(l)) exp(2 i phi_l)`` with ``phi_l = atan2(l_y, l_x)``, i.e. the
polarization angle grows from +x toward +y. With x east and y north this is the sense of the
COSMO convention of HEALPix (the default of healpy and of pixell, ``iau=False``), in which the angle
grows from north through west; the IAU convention (FITS ``POLCCONV = 'IAU'``, pixell's
``iau=True``) measures it from north through east, which changes the sign of U. So:

* ``pol_convention = 'COSMO'``: Q and U are read as they are;
* ``pol_convention = 'IAU'``: U is negated on reading (:meth:`Observations.read` always returns
  the COSMO sign).

COSMO and deepcmb measure the angle from reference axes 90 degrees apart (north, and x = east), so
deepcmb's Q and U of a COSMO map are those of HEALPix up to one overall sign of both. That sign
flips E and B together and nothing the estimators see: the quadratic estimator is quadratic in the
maps, and the simulated skies a network learns from are symmetric under it. A grid whose x axis
points west (right ascension decreasing along the columns, east on the left as on most sky images)
is the mirror image of this frame: reverse its last axis (``m[..., ::-1]``) before writing it, or
declare the other convention (a reflection maps E to E and B to -B).

Masks and weights. ``/mask`` and ``/ivar_p`` are read and checked. A file whose mask is not all ones or
whose ``ivar_p`` is not constant is reconstructed by the quadratic estimator with the inverse noise
``mask * ivar_p`` (:mod:`deepcmb.qe.masked_stage`; without ``/ivar_p`` the white noise of
``noise_p_uk_arcmin``); the network and the MAP estimator refuse it. A constant ``ivar_p`` and an
all-ones mask only restate the white noise: every method takes such a file, with ``noise_p_uk_arcmin``.

A non-periodic file (``periodic = false``) without a mask is apodised by the quadratic estimator with its
default cosine taper (:func:`deepcmb.qe.default_taper`), and a mean field is subtracted, estimated from the
file's own maps (see :mod:`deepcmb.qe.stage`); with a mask, the masked estimator embeds it in a larger
periodic grid instead.

Every malformed file (wrong format or version, a missing or invalid attribute, a dataset of the
wrong shape, NaN or infinite values, a mask outside [0, 1], a negative ``ivar_p``) is refused with
one :class:`~deepcmb.errors.InputError` line naming the file and the problem. Maps are checked for
non-finite values as they are read.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from ..errors import InputError
from ..geometry import FlatSkyGeometry
from ..sample import Instrument
from .files import atomic_path, check_output_file, new_h5, open_checked, read_rows, text

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

FORMAT = "deepcmb.observations"
FORMAT_VERSION = 1
POL_CONVENTIONS = ("COSMO", "IAU")
WEIGHTS = ("mask", "ivar_p")
"""The optional per-pixel datasets at the root of the file."""

_BLOCK = 256
"""Maps read at once when a whole dataset is scanned."""


def write_observations(path: str | Path, Q: ArrayLike, U: ArrayLike, *, pixel_arcmin: float,
                       beam_fwhm_arcmin: float, noise_p_uk_arcmin: float, periodic: bool = True,
                       pol_convention: str = "COSMO", T: ArrayLike | None = None,
                       noise_t_uk_arcmin: float | None = None, mask: ArrayLike | None = None,
                       ivar_p: ArrayLike | None = None, attrs: dict | None = None,
                       datasets: dict[str, ArrayLike] | None = None, overwrite: bool = False) -> Path:
    """Write an observation file (layout in the module docstring).

    Parameters
    ----------
    path : str or Path
        Output file; data go to ``PATH.tmp`` first and the file is renamed when complete.
    Q, U : array_like, shape (N, ny, nx)
        Observed Stokes maps, µK, in the convention ``pol_convention``.
    pixel_arcmin : float
        Pixel side, arcmin.
    beam_fwhm_arcmin : float
        Gaussian beam FWHM of the maps, arcmin.
    noise_p_uk_arcmin : float
        White noise of each of Q and U, µK-arcmin.
    periodic : bool
        Whether the maps are periodic.
    pol_convention : {'COSMO', 'IAU'}
        Sign convention of U.
    T : array_like, shape (N, ny, nx), optional
        Observed temperature, µK (then ``noise_t_uk_arcmin`` is required).
    noise_t_uk_arcmin : float, optional
        White noise of T, µK-arcmin.
    mask : array_like, shape (ny, nx) or (N, ny, nx), optional
        Values in [0, 1].
    ivar_p : array_like, shape (ny, nx) or (N, ny, nx), optional
        Inverse Q/U noise variance per pixel, 1/µK², non-negative.
    attrs : dict, optional
        More root attributes (e.g. provenance); they may not replace those of the layout.
    datasets : dict, optional
        More datasets, path -> array (e.g. ``'patches/lon_deg'``), outside ``/maps`` and the weights.
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    Path

    Raises
    ------
    InputError
        For any value the reader would refuse; nothing is written then.
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    path = check_output_file(path, overwrite)
    extra = dict(attrs or {})
    attrs = {"format": FORMAT, "format_version": FORMAT_VERSION, "pixel_arcmin": float(pixel_arcmin),
             "beam_fwhm_arcmin": float(beam_fwhm_arcmin), "noise_p_uk_arcmin": float(noise_p_uk_arcmin),
             "periodic": bool(periodic), "pol_convention": str(pol_convention)}
    if noise_t_uk_arcmin is not None:
        attrs["noise_t_uk_arcmin"] = float(noise_t_uk_arcmin)
    maps = {name: np.asarray(m, np.float32) for name, m in (("Q", Q), ("U", U), ("T", T)) if m is not None}
    weights = {name: np.asarray(w, np.float32) for name, w in (("mask", mask), ("ivar_p", ivar_p)) if w is not None}
    clash = sorted(set(extra) & set(attrs)) + sorted(k for k in datasets or {}
                                                     if k.split("/")[0] in ("maps",) + WEIGHTS)
    if clash:
        raise ValueError(f"write_observations: attrs or datasets replace the layout's {', '.join(clash)}")
    with atomic_path(path) as tmp:
        with new_h5(tmp) as f:
            f.attrs.update({**extra, **attrs})
            for name, m in maps.items():
                chunks = (1,) + m.shape[1:] if m.ndim == 3 and m.size else None
                f.create_dataset(f"maps/{name}", data=m, chunks=chunks).attrs["units"] = "uK"
            for name, w in weights.items():
                f.create_dataset(name, data=w)
            for name, d in (datasets or {}).items():
                f.create_dataset(name, data=np.asarray(d))
        try:  # the reader's checks, before the file takes its name
            with Observations(tmp) as obs:
                for name in maps:
                    obs.read(name, np.arange(obs.n_maps))
        except InputError as exc:
            raise InputError(str(exc).replace(str(tmp), str(path))) from None
    return path


def _plain(value):
    """An attribute value as a plain Python value (for messages)."""
    value = text(value)
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value


def _number(path: Path, attrs, name: str, low: float, strict: bool = False) -> float:
    """Root attribute ``name`` as a finite float ``>= low`` (``> low`` if ``strict``)."""
    if name not in attrs:
        raise InputError(f"{path}: missing root attribute '{name}'")
    try:
        value = float(attrs[name])
    except (TypeError, ValueError):
        raise InputError(f"{path}: attribute {name} = {_plain(attrs[name])!r} is not a number") from None
    if not np.isfinite(value) or value < low or (strict and value == low):
        raise InputError(f"{path}: attribute {name} = {value!r} must be a finite number "
                         f"{'>' if strict else '>='} {low:g}")
    return value


class Observations:
    """An observation file opened read-only and checked (a context manager).

    Parameters
    ----------
    path : str or Path

    Attributes
    ----------
    path : Path
    kind : str
        ``'observations'``.
    n_maps : int
    pixel_arcmin : float
    geom : FlatSkyGeometry
        The maps' geometry; its ``(ny, nx)`` is also the attribute ``shape``.
    periodic : bool
    pol_convention : {'COSMO', 'IAU'}
    instrument : Instrument
        Beam and white noise of the maps; without ``noise_t_uk_arcmin`` (a file without T) its
        temperature noise is :class:`~deepcmb.sample.Instrument`'s default, which nothing uses.
    noise_t_uk_arcmin : float or None
        The attribute, None when absent.
    fields : list of str
        The maps of the file (``'Q'``, ``'U'``, and ``'T'`` when present).
    weights : list of str
        The optional ``'mask'`` and ``'ivar_p'`` present.
    weight_range : dict
        ``'mask'``, ``'ivar_p'`` (those present) -> their ``(min, max)``.
    masked : bool
        Whether the mask is not all ones or ``ivar_p`` is not constant (only the quadratic estimator
        takes such files).
    noise_index : ndarray of int64, shape (N,)
        All zeros: the file has one noise level (as a simulation file's ``/meta/noise_index``).

    Raises
    ------
    InputError
        One line naming the file and the problem, for any malformed file.
    """

    kind = "observations"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f = open_checked(self.path, FORMAT, "observation")
        try:
            self._check()
        except BaseException:
            self._f.close()
            raise

    def _check(self):
        path, f = self.path, self._f
        a = f.attrs
        version = a.get("format_version")
        if version is None:
            raise InputError(f"{path}: missing root attribute 'format_version'")
        if version != FORMAT_VERSION:
            raise InputError(f"{path}: format_version {_plain(version)!r} is not supported (this deepcmb reads "
                             f"{FORMAT_VERSION})")
        self.pixel_arcmin = _number(path, a, "pixel_arcmin", 0.0, strict=True)
        beam = _number(path, a, "beam_fwhm_arcmin", 0.0)
        noise_p = _number(path, a, "noise_p_uk_arcmin", 0.0)
        if "periodic" not in a:
            raise InputError(f"{path}: missing root attribute 'periodic'")
        if not isinstance(a["periodic"], (bool, np.bool_, np.integer)) or a["periodic"] not in (0, 1):
            raise InputError(f"{path}: attribute periodic = {_plain(a['periodic'])!r} must be a boolean")
        self.periodic = bool(a["periodic"])
        if "pol_convention" not in a:
            raise InputError(f"{path}: missing root attribute 'pol_convention'")
        self.pol_convention = str(text(a["pol_convention"]))
        if self.pol_convention not in POL_CONVENTIONS:
            raise InputError(f"{path}: pol_convention {self.pol_convention!r} must be 'COSMO' or 'IAU'")
        if "maps" not in f or not isinstance(f["maps"], h5py.Group):
            raise InputError(f"{path}: missing group /maps")
        for name in ("Q", "U"):
            if name not in f["maps"]:
                raise InputError(f"{path}: missing dataset /maps/{name}")
        self.fields = [name for name in ("T", "Q", "U") if name in f["maps"]]
        shape = f["maps/Q"].shape
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"{path}: /maps/Q has shape {shape}, expected (N, ny, nx) with N, ny, nx >= 1")
        for name in self.fields:
            if f["maps"][name].shape != shape:
                raise InputError(f"{path}: /maps/{name} has shape {f['maps'][name].shape}, /maps/Q {shape}")
        noise_t = _number(path, a, "noise_t_uk_arcmin", 0.0) if "noise_t_uk_arcmin" in a else None
        if "T" in self.fields and noise_t is None:
            raise InputError(f"{path}: /maps/T needs the root attribute 'noise_t_uk_arcmin'")
        self.n_maps, self.shape = int(shape[0]), (int(shape[1]), int(shape[2]))
        self.geom = FlatSkyGeometry(self.shape, self.pixel_arcmin)
        self.noise_t_uk_arcmin = noise_t
        self.instrument = Instrument(beam_fwhm_arcmin=beam, noise_p_uk_arcmin=noise_p,
                                     **({} if noise_t is None else {"noise_t_uk_arcmin": noise_t}))
        self.noise_index = np.zeros(self.n_maps, np.int64)
        self.weights = [name for name in WEIGHTS if name in f]
        self.weight_range = {name: self._scan_weight(name) for name in self.weights}
        self.masked = any((hi != 1 or lo != 1) if name == "mask" else lo != hi
                          for name, (lo, hi) in self.weight_range.items())

    def _scan_weight(self, name):
        """Check ``/mask`` or ``/ivar_p``; returns its ``(min, max)``."""
        d = self._f[name]
        if d.shape not in (self.shape, (self.n_maps,) + self.shape):
            raise InputError(f"{self.path}: /{name} has shape {d.shape}, expected {self.shape} or "
                             f"{(self.n_maps,) + self.shape}")
        lo, hi = np.inf, -np.inf
        for start in range(0, d.shape[0] if d.ndim == 3 else 1, _BLOCK):
            w = d[start:start + _BLOCK] if d.ndim == 3 else d[...]
            if not np.all(np.isfinite(w)):
                raise InputError(f"{self.path}: /{name} holds NaN or infinite values")
            lo, hi = min(lo, float(w.min())), max(hi, float(w.max()))
        if name == "mask" and (lo < 0 or hi > 1):
            raise InputError(f"{self.path}: /mask has values in [{lo:g}, {hi:g}], outside [0, 1]")
        if name == "ivar_p" and lo < 0:
            raise InputError(f"{self.path}: /ivar_p has negative values (min {lo:g})")
        return lo, hi

    def instruments(self) -> list[Instrument]:
        """The file's one :attr:`instrument`, as a list indexed by :attr:`noise_index`."""
        return [self.instrument]

    def read(self, name: str, rows: ArrayLike) -> np.ndarray:
        """Maps ``name`` (a field, ``'mask'`` or ``'ivar_p'``) of ``rows`` as float32 ``(len(rows), ny, nx)``.

        U is returned in the COSMO convention (negated for an IAU file); a 2-d mask or ``ivar_p`` is
        repeated for every row.

        Raises
        ------
        InputError
            For a name the file does not have, a row out of range, or NaN or infinite values.
        """
        rows = np.asarray(rows, np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= self.n_maps):
            raise InputError(f"{self.path}: rows outside the {self.n_maps} maps of the file")
        if name in self.weights:
            d = self._f[name]
            if d.ndim == 2:
                return np.broadcast_to(d[...].astype(np.float32), (rows.size,) + self.shape).copy()
            return read_rows(d, rows)
        if name not in self.fields:
            raise InputError(f"{self.path}: no map {name!r} (the file has {', '.join(self.fields + self.weights)})")
        out = read_rows(self._f["maps"][name], rows)
        bad = ~np.all(np.isfinite(out), axis=(1, 2))
        if bad.any():
            raise InputError(f"{self.path}: /maps/{name} holds NaN or infinite values (map {rows[bad][0]})")
        if name == "U" and self.pol_convention == "IAU":
            np.negative(out, out=out)
        return out

    def identity(self) -> dict:
        """What identifies the file's content, whatever its path: ``created`` and ``git_revision``
        (empty: the file does not record them) and ``config_sha256``, the SHA-256 of its root
        attributes and of every dataset's bytes (the whole file is read once)."""
        h = hashlib.sha256()
        for key in sorted(self._f.attrs):
            h.update(f"{key}={text(self._f.attrs[key])!r};".encode())
        for name in [f"maps/{n}" for n in self.fields] + self.weights:
            d = self._f[name]
            h.update(f"{name}{d.shape}{d.dtype};".encode())
            for start in range(0, d.shape[0], _BLOCK):
                h.update(np.ascontiguousarray(d[start:start + _BLOCK]).tobytes())
        return {"created": "", "git_revision": "", "config_sha256": h.hexdigest()}

    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def open_observations(path: str | Path) -> Observations:
    """Open and check an observation file (the caller closes it; use it as a context manager)."""
    return Observations(path)
