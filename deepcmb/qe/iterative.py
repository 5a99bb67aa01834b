"""The iterative limit: lensing noise reached by iterative (maximum-likelihood-like) polarization estimators.

A quadratic EB estimator is limited by the lensing B modes themselves: they are "noise" in the B
filter. An iterative estimator (Hirata & Seljak 2003; Smith, Hanson, LoVerde, Hirata & Zahn 2012)
delenses the B modes with its own Wiener-filtered reconstruction, so the B filter only has to
carry the residual lensing B power, computed from

.. math:: C^{\\phi\\phi}_{{\\rm res}, L} = C^{\\phi\\phi}_L - \\frac{(C^{\\phi\\phi}_L)^2}{C^{\\phi\\phi}_L + N_L}
          = \\frac{C^{\\phi\\phi}_L N_L}{C^{\\phi\\phi}_L + N_L},

and the EB noise is recomputed with it; iterating to convergence (a few steps) gives the noise
:math:`N^{\\rm iter}_L` the iterative estimator reaches. :func:`iterative_noise` does this with the
same estimator declarations and FFT engine as the map-level estimators, on a large flat-sky grid
(a theory calculation: no maps), and the residual lensed B power from CAMB's curved-sky
``camb.correlations.lensed_cls`` fed with :math:`C^{\\phi\\phi}_{\\rm res}`.

Conventions of the approximation (Smith et al. 2012, Sec. III): only the B filter (and the small
:math:`C^{BB}` term of the EB response) changes; E keeps its lensed spectrum; the reconstruction
used for delensing is the minimum-variance combination of EE and the current EB.

References
----------
Hirata & Seljak (2003), PRD 68, 083002; Smith, Hanson, LoVerde, Hirata & Zahn (2012), JCAP 06, 014;
Hu & Okamoto (2002), ApJ 574, 566.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..errors import ConfigError
from ..geometry import ARCMIN, FlatSkyGeometry
from ..binning import bin_centres, bin_theory
from . import engine
from .filtering import grid_spectra, instrument_values, inverse_variance_filters

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from ..cosmology import CMBSpectra
    from ..sample import Instrument


def residual_lensed_bb(spectra: CMBSpectra, clpp_res: np.ndarray, lmax: int | None = None) -> np.ndarray:
    """Lensed BB power of the unlensed CMB lensed by :math:`C^{\\phi\\phi}_{\\rm res}` (µK², plain C_l).

    Parameters
    ----------
    spectra : CMBSpectra
        Unlensed spectra (``.unlensed``, 4 x (lmax + 1), µK²).
    clpp_res : ndarray, shape (lmax + 1,)
        Lensing-potential power to lens with.
    lmax : int, optional
        Highest multipole (default: that of ``spectra``).

    Returns
    -------
    ndarray, shape (lmax + 1,)
    """
    from camb import correlations

    lmax = spectra.lmax if lmax is None else int(lmax)
    ell = np.arange(lmax + 1, dtype=float)
    dl = ell * (ell + 1) / (2 * np.pi)
    unl = (np.asarray(spectra.unlensed)[:, : lmax + 1] * dl).T.copy()
    pp = np.asarray(clpp_res)[: lmax + 1] * (ell * (ell + 1)) ** 2 / (2 * np.pi)
    lensed = correlations.lensed_cls(unl, pp, lmax=lmax)[: lmax + 1, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(dl > 0, lensed / dl, 0.0)


def _theory_geometry(lmax, npix):
    """A flat grid whose circular convolutions are alias-free up to L = 2 * Nyquist - 2 * lmax."""
    nyquist = 1.5 * lmax
    pixel_arcmin = np.pi / nyquist / ARCMIN
    return FlatSkyGeometry((npix, npix), pixel_arcmin)


def _n0_pol(geom, spectra, instrument, lmin, lmax, bb_signal):
    """Normalised N0 (phi, sr) of EE, EB and their MV combination on the grid, for a given BB signal."""
    cls = np.array(spectra.lensed, dtype=float)
    cls[2, : bb_signal.size] = bb_signal
    cls[2, bb_signal.size:] = 0.0
    filters = inverse_variance_filters(geom, cls, instrument, lmin, lmax)
    grid_cls = grid_spectra(geom, cls)
    factors = engine.FourierFactors(geom, filters, grid_cls, grid_cls)
    names = ("EE", "EB")
    resp = np.stack([engine.response(factors, n) for n in names])
    cov = engine.noise_covariance(factors, names)
    ok = np.all(resp > 0, axis=0)
    resp = np.where(ok, resp, 1.0)
    n0 = cov / (resp[:, None] * resp[None, :])
    out = {"EE": np.where(ok, n0[0, 0], np.inf), "EB": np.where(ok, n0[1, 1], np.inf)}
    det = n0[0, 0] * n0[1, 1] - n0[0, 1] ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        mv = det / (n0[0, 0] + n0[1, 1] - 2 * n0[0, 1])
    out["MV_POL"] = np.where(ok, mv, np.inf)
    return out


def _profile(geom, n0_2d, edges):
    """Azimuthal mode-average of an rfft-grid N0 in the bins ``edges``."""
    return bin_theory(geom, n0_2d, edges)


def iterative_noise(spectra: CMBSpectra, instrument: Instrument | dict, lmin: float = 30, lmax: float = 3000,
                    L: ArrayLike | None = None, npix: int = 512, max_iter: int = 20, tol: float = 1e-3) -> dict:
    """Flat-sky lensing noise of the QE and of an iterative polarization estimator.

    Parameters
    ----------
    spectra : CMBSpectra
        Fiducial spectra (``.unlensed``, ``.lensed``, ``.clpp``).
    instrument : Instrument-like
        Beam FWHM (arcmin) and polarization noise depth ``noise_p_uk_arcmin`` (µK-arcmin).
    lmin, lmax : float
        CMB multipole range of the filters (default 30 .. 3000).
    L : array_like, optional
        Lensing multipoles at which to return results (default 100 .. 2000 in steps of 50).
    npix : int
        Side of the square theory grid; its pixel is ``pi / (1.5 lmax)`` so that the FFT
        convolutions are alias-free up to ``L = lmax`` and its fundamental multipole is
        ``3 lmax / npix`` (17.6 for the defaults). Results are mode averages in bins of two
        fundamentals, interpolated to ``L``.
    max_iter : int
        Maximum number of delensing iterations.
    tol : float
        Convergence: largest relative change of the iterated EB noise over ``L <= lmax``.

    Returns
    -------
    dict
        ``L`` (the requested multipoles); ``clpp`` and ``clkk`` (curved convention
        :math:`[L(L+1)]^2 C^{\\phi\\phi}_L / 4`); ``n0_ee``, ``n0_eb``, ``n0_mv_pol`` (quadratic estimators,
        phi noise, sr); ``n_iter_eb`` (EB with the residual-B filter) and ``n_iter`` (its MV combination
        with EE: the iterative limit); ``rho2_qe`` and ``rho2_iter``
        (:math:`C^{\\phi\\phi} / (C^{\\phi\\phi} + N)` of MV-pol QE and iterative); ``ratio``
        (``n_iter / n0_mv_pol``); ``bb_lensed``, ``bb_residual`` (µK², on ``0 .. lmax``);
        ``iterations`` and ``history`` (``n_iter`` at ``L`` after each step).

    Notes
    -----
    Noise spectra of kappa follow as :math:`N^{\\kappa\\kappa}_L = [L(L+1)]^2 N_L / 4` (the ratios and
    :math:`\\rho^2` do not depend on that convention).
    """
    _, _, depth_p = instrument_values(instrument)
    if not (0 < lmin < lmax):
        raise ConfigError(f"qe.iterative: need 0 < lmin < lmax, got {lmin}, {lmax}")
    lmax_cl = spectra.lmax
    if lmax > lmax_cl:
        raise ConfigError(f"qe.iterative: lmax={lmax} exceeds the spectra's lmax={lmax_cl}")
    L = np.arange(100.0, 2001.0, 50.0) if L is None else np.atleast_1d(np.asarray(L, dtype=float))
    if np.any(L > lmax) or np.any(L <= 0):
        raise ConfigError(f"qe.iterative: requested L must lie in (0, lmax={lmax}]")
    geom = _theory_geometry(lmax, int(npix))
    width = 2.0 * geom.ell_fundamental
    edges = np.arange(0.5 * width, lmax + width, width)
    centres = bin_centres(geom, edges)
    ell = np.arange(lmax_cl + 1, dtype=float)
    clpp = np.asarray(spectra.clpp, dtype=float)

    l4 = geom.ell() ** 4

    def profile(n0_2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # average L^4 N (nearly white) rather than the steep N itself, then interpolate in log-log
        with np.errstate(invalid="ignore"):
            weighted = np.where(l4 > 0, l4 * n0_2d, np.inf)
        prof = _profile(geom, weighted, edges) / centres**4
        good = np.isfinite(prof) & np.isfinite(centres) & (centres > 0)
        return centres[good], prof[good]

    def on(ells: np.ndarray, xy: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        x, y = xy
        with np.errstate(divide="ignore"):
            out = np.exp(np.interp(np.log(np.maximum(ells, 1e-30)), np.log(x), np.log(y), right=np.inf))
        return out

    def clpp_residual(n_profile: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        n_l = on(ell, n_profile)  # inf beyond the reconstructed range: no delensing there
        with np.errstate(invalid="ignore", divide="ignore"):
            res = np.where(np.isfinite(n_l), clpp * n_l / (clpp + n_l), clpp)
        res[ell < 2] = 0.0
        return res

    bb_lensed = residual_lensed_bb(spectra, clpp)
    qe = _n0_pol(geom, spectra, instrument, lmin, lmax, bb_lensed)
    prof_qe = {k: profile(v) for k, v in qe.items()}
    current, history, n_prev = prof_qe["MV_POL"], [], None
    bb_res, it_eb = bb_lensed, prof_qe["EB"]
    for step in range(1, int(max_iter) + 1):
        bb_res = residual_lensed_bb(spectra, clpp_residual(current))
        it = _n0_pol(geom, spectra, instrument, lmin, lmax, bb_res)
        it_eb, current = profile(it["EB"]), profile(it["MV_POL"])
        history.append(on(L, current))
        n_now = on(L, it_eb)
        if n_prev is not None and np.max(np.abs(n_now / n_prev - 1.0)) < tol:
            break
        n_prev = n_now
    n0_mv = on(L, prof_qe["MV_POL"])
    n_iter = on(L, current)
    cl = np.interp(L, ell, clpp)
    return {
        "L": L, "clpp": cl, "clkk": (L * (L + 1)) ** 2 * cl / 4.0,
        "n0_ee": on(L, prof_qe["EE"]), "n0_eb": on(L, prof_qe["EB"]), "n0_mv_pol": n0_mv,
        "n_iter_eb": on(L, it_eb), "n_iter": n_iter, "ratio": n_iter / n0_mv,
        "rho2_qe": cl / (cl + n0_mv), "rho2_iter": cl / (cl + n_iter),
        "bb_lensed": bb_lensed[: int(lmax) + 1], "bb_residual": bb_res[: int(lmax) + 1],
        "iterations": step, "history": np.array(history),
        "noise_p_uk_arcmin": depth_p, "lmin": lmin, "lmax": lmax,
    }
