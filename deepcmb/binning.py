"""Binned flat-sky power spectra of maps, and theory binned the same way.

Estimates average :math:`\\mathrm{Re}[a(\\boldsymbol\\ell) b^*(\\boldsymbol\\ell)] / A` over the Fourier
modes in each annulus; :func:`bin_theory` averages a theory curve over exactly the same modes, so the
two compare without any binning bias on a finite grid.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from .errors import InputError
from .geometry import interp_spectrum

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

    from .geometry import FlatSkyGeometry


def linear_bins(lmin: float, lmax: float, width: float) -> np.ndarray:
    """Bin edges ``[lmin, lmin + width, ...]``, the last one at most ``lmax`` (floats)."""
    return np.arange(lmin, lmax + 1e-9 * width, width, dtype=float)


def _bin_index(geom, edges):
    ell = geom.ell().ravel()
    idx = np.digitize(ell, edges) - 1
    idx[(idx < 0) | (idx >= len(edges) - 1)] = -1
    return idx


def mode_weights(geom: FlatSkyGeometry) -> np.ndarray:
    """Modes each rfft cell stands for, flattened ``(ny * (nx // 2 + 1),)``: columns 1 .. nx/2-1 stand
    for two (l and -l), the others for one."""
    nx = geom.shape[1]
    w = np.full(geom.fourier_shape(), 2.0)
    w[:, 0] = 1.0
    if nx % 2 == 0:
        w[:, -1] = 1.0
    return w.ravel()


def _binned_mean(geom, values, edges):
    """Mode-weighted mean of rfft-grid ``values[..., ny, nxr]`` in bins; returns ``(..., nbin)``."""
    idx = _bin_index(geom, edges)
    keep = np.flatnonzero(idx >= 0)
    # sparse, so that a mode only ever meets its own bin (an inf elsewhere cannot turn into 0 * inf)
    weights = sparse.csr_matrix((mode_weights(geom)[keep], (np.arange(keep.size), idx[keep])),
                                shape=(keep.size, len(edges) - 1))
    counts = np.asarray(weights.sum(axis=0)).ravel()
    flat = values.reshape((-1, values.shape[-2] * values.shape[-1]))[:, keep]
    sums = (weights.T @ flat.T).T.reshape(values.shape[:-2] + (len(edges) - 1,))
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts, counts


def bin_centres(geom: FlatSkyGeometry, edges: np.ndarray) -> np.ndarray:
    """Mode-weighted mean ``|l|`` in each bin."""
    return _binned_mean(geom, geom.ell(), edges)[0]


def mode_counts(geom: FlatSkyGeometry, edges: np.ndarray) -> np.ndarray:
    """Number of Fourier modes (counting l and -l separately) in each bin."""
    return _binned_mean(geom, geom.ell(), edges)[1]


def binned_cross_spectrum(geom: FlatSkyGeometry, a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Binned cross-spectrum of real maps ``a`` and ``b``.

    Parameters
    ----------
    geom : FlatSkyGeometry
    a, b : ndarray, shape (..., ny, nx)
        Maps (leading dimensions are kept).
    edges : ndarray, shape (nbin + 1,)
        Multipole bin edges; a mode belongs to bin ``k`` if ``edges[k] <= |l| < edges[k+1]``.

    Returns
    -------
    ndarray, shape (..., nbin)
        Binned :math:`C_\\ell^{ab}` in the maps' units squared times steradian.
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape[-2:] != geom.shape or b.shape[-2:] != geom.shape:
        raise InputError(f"maps of shape {a.shape} / {b.shape} do not match the geometry {geom.shape}")
    fa, fb = geom.map2fourier(a), geom.map2fourier(b)
    return _binned_mean(geom, (fa * np.conj(fb)).real / geom.area, edges)[0]


def binned_auto_spectrum(geom: FlatSkyGeometry, a: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Binned auto-spectrum of real map(s) ``a``; see :func:`binned_cross_spectrum`."""
    return binned_cross_spectrum(geom, a, a, edges)


def binned_fourier_power(geom: FlatSkyGeometry, fa: np.ndarray, fb: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Binned cross-power of two sets of rfft-grid Fourier modes (e.g. E and B modes)."""
    return _binned_mean(geom, (fa * np.conj(fb)).real / geom.area, edges)[0]


def bin_theory(geom: FlatSkyGeometry, cl: ArrayLike, edges: np.ndarray) -> np.ndarray:
    """Average a theory spectrum over the Fourier modes of each bin (the expectation of the estimate).

    Parameters
    ----------
    geom : FlatSkyGeometry
    cl : array_like
        Either tabulated at integer multipoles ``0..lmax`` (1-d) or already evaluated on the rfft
        grid (2-d, shape ``geom.fourier_shape()``).
    edges : ndarray
        Bin edges.
    """
    cl = np.asarray(cl, dtype=float)
    if cl.ndim == 1:
        cl = interp_spectrum(cl, geom.ell())
    return _binned_mean(geom, cl, edges)[0]
