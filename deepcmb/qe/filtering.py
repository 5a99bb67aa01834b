"""Inverse-variance filters, spectra on the Fourier grid, and checks of the maps given to the QE.

The quadratic estimators act on beam-deconvolved data :math:`X_d(\\mathbf{l}) = X_{\\rm obs}(\\mathbf{l}) /
B_l` (``X`` in T, E, B), whose power is

.. math:: C^{XY}_{{\\rm tot}, l} = \\tilde C^{XY}_l + \\delta_{XY} N^{X}_l / B_l^2,

with :math:`\\tilde C` the lensed CMB spectra and :math:`N^X_l = (\\Delta_X\\,{\\rm arcmin})^2` white
noise of depth :math:`\\Delta_X` µK-arcmin. The inverse-variance (diagonal) filter is
:math:`F^X_l = 1 / C^{XX}_{{\\rm tot}, l}` for :math:`l_{\\min} \\le |\\mathbf{l}| \\le l_{\\max}` and zero
elsewhere, so that the filtered field is :math:`\\bar X = F^X X_d`. The T-E correlation is not
inverted (see :mod:`deepcmb.qe.estimators`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError, InputError
from ..flatsky import gaussian_beam, white_noise_cl
from ..geometry import interp_spectrum

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..geometry import FlatSkyGeometry
    from ..sample import Instrument

_PAIR = {("T", "T"): "TT", ("E", "E"): "EE", ("B", "B"): "BB", ("T", "E"): "TE", ("E", "T"): "TE",
         ("T", "B"): "TB", ("B", "T"): "TB", ("E", "B"): "EB", ("B", "E"): "EB"}


def pair_name(x: str, y: str) -> str:
    """Spectrum name of the field pair ``(x, y)``, e.g. ``('E', 'T') -> 'TE'``."""
    return _PAIR[(x, y)]


def check_band(geom: FlatSkyGeometry, lmin: float, lmax: float) -> tuple[float, float]:
    """Validate the CMB multipole range of the filters against the map's Fourier band.

    Raises
    ------
    ConfigError
        If ``lmin >= lmax``, ``lmin < 0`` or ``lmax`` reaches the grid's Nyquist multipole.
    """
    try:
        lmin, lmax = float(lmin), float(lmax)
    except (TypeError, ValueError):
        raise ConfigError(f"qe.lmin/qe.lmax: expected numbers, got {lmin!r}, {lmax!r}") from None
    if not (np.isfinite(lmin) and np.isfinite(lmax)) or lmin < 0 or lmin >= lmax:
        raise ConfigError(f"qe.lmin/qe.lmax: need 0 <= lmin < lmax, got lmin={lmin:g}, lmax={lmax:g}")
    if lmax >= geom.ell_nyquist:
        raise ConfigError(
            f"qe.lmax: {lmax:g} is outside the map's Fourier band (Nyquist multipole {geom.ell_nyquist:.1f} "
            f"for {geom.pixel_arcmin:g} arcmin pixels); use lmax < {geom.ell_nyquist:.0f}")
    if lmax <= geom.ell_fundamental:
        raise ConfigError(
            f"qe.lmax: {lmax:g} is below the patch's fundamental multipole {geom.ell_fundamental:.1f}: no modes")
    return lmin, lmax


def grid_spectra(geom: FlatSkyGeometry, cls) -> dict[str, np.ndarray]:
    """Spectra on the rfft grid.

    Parameters
    ----------
    geom : FlatSkyGeometry
    cls : ndarray, shape (4, lmax + 1)
        ``TT, EE, BB, TE`` at integer multipoles, µK² (as in :class:`~deepcmb.cosmology.CMBSpectra`).

    Returns
    -------
    dict
        ``'TT', 'EE', 'BB', 'TE'`` -> arrays of shape ``geom.fourier_shape()`` (zero beyond the table).
    """
    cls = np.asarray(cls, dtype=float)
    if cls.ndim != 2 or cls.shape[0] != 4:
        raise InputError(f"spectra: expected an array of shape (4, lmax + 1) [TT, EE, BB, TE], got {cls.shape}")
    ell = geom.ell()
    return {name: interp_spectrum(cls[k], ell) for k, name in enumerate(("TT", "EE", "BB", "TE"))}


@dataclass(frozen=True)
class Filters:
    """Inverse-variance filters and total spectra of beam-deconvolved data on the rfft grid.

    Attributes
    ----------
    lmin, lmax : float
        CMB multipole range kept by the filters.
    beam : ndarray, shape ``geom.fourier_shape()``
        Beam transfer :math:`B_l`.
    mask : ndarray of bool
        ``lmin <= |l| <= lmax`` (and ``l != 0``).
    inverse : dict
        ``'T', 'E', 'B'`` -> :math:`F^X_l = 1 / C^{XX}_{\\rm tot}` inside ``mask``, 0 outside, µK⁻² sr⁻¹.
    total : dict
        ``'TT', 'EE', 'BB', 'TE'`` -> :math:`C^{XY}_{\\rm tot}` (µK² sr) on the grid; ``'TB'`` and
        ``'EB'`` are absent (zero).
    noise : dict
        ``'T', 'P'`` -> beam-deconvolved white-noise power :math:`N_l / B_l^2` (µK² sr).
    """

    lmin: float
    lmax: float
    beam: np.ndarray
    mask: np.ndarray
    inverse: dict
    total: dict
    noise: dict


def instrument_values(instrument: Instrument | dict) -> tuple[float, float, float]:
    """``(beam_fwhm_arcmin, noise_t_uk_arcmin, noise_p_uk_arcmin)`` from an instrument-like object.

    Accepts a :class:`~deepcmb.sample.Instrument`, any object with those three attributes, or a
    mapping with those keys.
    """
    names = ("beam_fwhm_arcmin", "noise_t_uk_arcmin", "noise_p_uk_arcmin")
    try:
        if isinstance(instrument, dict):
            values = [float(instrument[n]) for n in names]
        else:
            values = [float(getattr(instrument, n)) for n in names]
    except (KeyError, AttributeError, TypeError, ValueError):
        raise ConfigError(f"instrument: expected {', '.join(names)}, got {instrument!r}") from None
    for n, v in zip(names, values):
        if not np.isfinite(v) or v < 0:
            raise ConfigError(f"instrument.{n}: must be a non-negative number, got {v!r}")
    return tuple(values)


def inverse_variance_filters(geom: FlatSkyGeometry, lensed_cls: np.ndarray, instrument: Instrument | dict, lmin: float,
                             lmax: float, total_cls: np.ndarray | None = None) -> Filters:
    """Build the diagonal inverse-variance filters for beam-deconvolved T, E, B.

    Parameters
    ----------
    geom : FlatSkyGeometry
    lensed_cls : ndarray, shape (4, lmax_cl + 1)
        Lensed ``TT, EE, BB, TE`` (µK², plain C_l); the signal part of the total power.
    instrument : Instrument-like
        Beam FWHM (arcmin) and white-noise depths (µK-arcmin); see :func:`instrument_values`.
    lmin, lmax : float
        CMB multipole range kept (``lmax`` must be below the grid's Nyquist multipole).
    total_cls : ndarray, shape (4, lmax_cl + 1), optional
        Signal spectra to use in the total power instead of ``lensed_cls`` (e.g. a residual,
        partially delensed BB in :mod:`deepcmb.qe.iterative`).

    Returns
    -------
    Filters
    """
    lmin, lmax = check_band(geom, lmin, lmax)
    fwhm, depth_t, depth_p = instrument_values(instrument)
    ell = geom.ell()
    beam = gaussian_beam(fwhm, ell)
    mask = (ell >= lmin) & (ell <= lmax) & (ell > 0)
    signal = grid_spectra(geom, lensed_cls if total_cls is None else total_cls)
    with np.errstate(divide="ignore", over="ignore"):
        inv_b2 = np.where(mask, 1.0 / beam**2, 0.0)
    noise = {"T": white_noise_cl(depth_t) * inv_b2, "P": white_noise_cl(depth_p) * inv_b2}
    total = {
        "TT": signal["TT"] + noise["T"],
        "EE": signal["EE"] + noise["P"],
        "BB": signal["BB"] + noise["P"],
        "TE": signal["TE"],
    }
    inverse = {}
    for field, name in (("T", "TT"), ("E", "EE"), ("B", "BB")):
        tot = total[name]
        if np.any(mask & ~(tot > 0)):
            raise ConfigError(
                f"qe: the total {name} power is not positive everywhere in {lmin:g} <= l <= {lmax:g} "
                "(zero noise and zero signal); add noise or narrow the multipole range")
        with np.errstate(divide="ignore"):
            inverse[field] = np.where(mask, 1.0 / np.where(mask, tot, 1.0), 0.0)
    return Filters(lmin, lmax, beam, mask, inverse, total, noise)


def as_map_stack(geom: FlatSkyGeometry, maps: Mapping[str, ArrayLike],
                 needed: Sequence[str]) -> tuple[dict[str, np.ndarray], bool]:
    """Validate input maps and stack them with a leading sample axis.

    Parameters
    ----------
    geom : FlatSkyGeometry
    maps : dict
        Map name -> array of shape ``(ny, nx)`` or ``(N, ny, nx)`` (µK); all the same shape.
    needed : sequence of str
        Names that must be present (from ``'T', 'Q', 'U'``).

    Returns
    -------
    stack : dict
        Name -> float64 array ``(N, ny, nx)``.
    single : bool
        True if the inputs were single maps ``(ny, nx)``.

    Raises
    ------
    InputError
        For a missing map, a shape that does not match the geometry, inconsistent shapes between
        maps, or non-finite values.
    """
    if not hasattr(maps, "keys"):
        raise InputError(f"maps: expected a dict of 'T', 'Q', 'U' arrays, got {type(maps).__name__}")
    missing = [n for n in needed if n not in maps]
    if missing:
        raise InputError(f"maps: missing map(s) {missing}; this estimator needs {list(needed)}")
    out, shape = {}, None
    for name in needed:
        try:
            arr = np.asarray(maps[name], dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"maps['{name}']: not a numeric array") from None
        if arr.ndim not in (2, 3) or arr.shape[-2:] != geom.shape:
            raise InputError(
                f"maps['{name}']: shape {arr.shape} does not match the geometry; expected {geom.shape} "
                f"or (N, {geom.shape[0]}, {geom.shape[1]})")
        if shape is not None and arr.shape != shape:
            raise InputError(f"maps['{name}']: shape {arr.shape} differs from maps['{needed[0]}'] {shape}")
        shape = arr.shape
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise InputError(f"maps['{name}']: {bad} non-finite value(s) (NaN or inf)")
        out[name] = arr if arr.ndim == 3 else arr[None]
    return out, len(shape) == 2
