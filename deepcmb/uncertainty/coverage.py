"""Coverage of the per-map uncertainties: how often the truth lies within the stated intervals.

Pixel coverage: the fraction of pixels where the true convergence low-passed to :math:`|L| \\le L_{\\rm uq}`
(:func:`lowpass`) lies within ``k`` standard deviations of the posterior mean,
:math:`|\\kappa^{\\rm lp}(x) - \\bar\\kappa(x)| \\le k\\, \\sigma(x)`; for a calibrated Gaussian
posterior it is 0.683 at ``k = 1`` and 0.954 at ``k = 2`` (:data:`NOMINAL`).

Mode coverage, per band of :math:`L`: the same fraction over the real and imaginary parts of the
Fourier modes in the band (each mode once: the rfft half-plane without the columns ``lx = 0`` and,
for even ``nx``, the Nyquist column, which hold modes together with their conjugates), each part
compared with its posterior standard deviation :math:`\\sqrt{R_b / 2}`.

Pixels of one map are correlated, so the spread of the pixel coverage between maps, not the pixel
count, sets its error: :func:`coverage_error` is the standard error over maps.
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from ..geometry import FlatSkyGeometry

SIGMAS = (1, 2)
"""Interval half-widths, in standard deviations, whose coverage is measured."""

NOMINAL = {k: float(erf(k / np.sqrt(2.0))) for k in SIGMAS}
"""Coverage of ``±k sigma`` for a Gaussian: 0.6827 and 0.9545."""


def lowpass(geom: FlatSkyGeometry, maps: np.ndarray, lmax: float) -> np.ndarray:
    """Maps ``(..., ny, nx)`` low-passed with the sharp cut ``|L| <= lmax`` on their Fourier grid."""
    return geom.fourier2map(np.where(geom.ell() <= lmax, geom.map2fourier(maps), 0.0))


def pixel_coverage(truth_lp: np.ndarray, mean: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Per map, the fraction of pixels within ``k`` sigma for each ``k`` of :data:`SIGMAS`: ``(n, len(SIGMAS))``."""
    z = np.abs(truth_lp - mean) / sigma
    return np.stack([np.mean(z <= k, axis=(-2, -1)) for k in SIGMAS], axis=-1)


def independent_modes(geom: FlatSkyGeometry) -> np.ndarray:
    """The rfft cells that are not their own conjugate and stand for one mode pair once, ``(ny, nxr)`` bool."""
    keep = np.ones(geom.fourier_shape(), bool)
    keep[:, 0] = False
    if geom.shape[1] % 2 == 0:
        keep[:, -1] = False
    return keep


def mode_coverage(geom: FlatSkyGeometry, truth: np.ndarray, mean: np.ndarray, variance: np.ndarray,
                  edges: np.ndarray) -> np.ndarray:
    """Per map and band, the fraction of mode parts within ``k`` sigma of the posterior mean.

    Parameters
    ----------
    geom : FlatSkyGeometry
    truth, mean : ndarray, shape (n, ny, nx)
        True convergence and posterior mean.
    variance : ndarray, shape (ny, nx // 2 + 1)
        Posterior variance :math:`R` of each mode (sr²); modes with zero variance are skipped.
    edges : ndarray, shape (nb + 1,)
        Band edges in ``L``.

    Returns
    -------
    ndarray, shape (n, nb, len(SIGMAS))
        NaN for a band without modes (every map has the same modes in a band, so the mean over maps is
        the fraction over all their modes).
    """
    diff = geom.map2fourier(truth - mean)
    sd = np.sqrt(variance / 2.0)
    band = np.digitize(geom.ell(), edges) - 1
    nb = len(edges) - 1
    out = np.full((diff.shape[0], nb, len(SIGMAS)), np.nan)
    use = independent_modes(geom) & (variance > 0)
    for b in range(nb):
        cells = use & (band == b)
        if not cells.any():
            continue
        parts = np.concatenate([diff.real[:, cells], diff.imag[:, cells]], axis=-1)
        z = np.abs(parts) / np.tile(sd[cells], 2)
        out[:, b] = np.stack([np.mean(z <= k, axis=-1) for k in SIGMAS], axis=-1)
    return out


def coverage_error(per_map: np.ndarray) -> np.ndarray:
    """Standard error of the mean coverage from its per-map values ``(n, ...)``: ``std / sqrt(n)`` (NaN for
    one map)."""
    n = per_map.shape[0]
    if n < 2:
        return np.full(per_map.shape[1:], np.nan)
    return per_map.std(axis=0, ddof=1) / np.sqrt(n)
