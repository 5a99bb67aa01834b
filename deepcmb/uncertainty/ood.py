"""How unlike the calibration maps an input is: a score from the input's own E and B band powers.

For each input map the E and B modes of its observed Q, U (flat-sky, periodic transform) are averaged in
``n_bins`` logarithmic bins of :math:`\\ell` between twice the fundamental multipole and the Nyquist
multipole, giving the log band powers :math:`p_j` (``2 n_bins`` of them). With the mean :math:`\\mu_j` and
standard deviation :math:`s_j` of :math:`p_j` over the calibration maps (the maps the uncertainty
was calibrated on: for a network, maps of its training distribution), the score is

.. math:: S = \\frac{1}{2 n_{\\rm bins}} \\sum_j \\left(\\frac{p_j - \\mu_j}{s_j}\\right)^2 ,

about 1 for a map like the calibration maps. It reacts to what changes the observed spectra: another
noise level or beam, foregrounds, a mask or the edges of a non-periodic patch, a strongly different
cosmology. The calibration maps' own scores give the threshold: the score above which a fraction
``1 - q`` of them lies (:data:`QUANTILE`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..binning import binned_fourier_power
from ..geometry import FlatSkyGeometry

QUANTILE = 0.99
"""Quantile of the calibration maps' scores that sets :attr:`Reference.threshold`."""


def ood_edges(geom: FlatSkyGeometry, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` logarithmic bin edges from ``2 ell_fundamental`` to ``ell_nyquist``."""
    return np.geomspace(2.0 * geom.ell_fundamental, geom.ell_nyquist, n_bins + 1)


def log_band_powers(geom: FlatSkyGeometry, q: np.ndarray, u: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """:math:`\\ln C^{EE}_b, \\ln C^{BB}_b` of maps ``q, u`` (µK, ``(n, ny, nx)``): ``(n, 2 * nbin)``."""
    e, b = geom.qu2eb(q, u)
    ee = binned_fourier_power(geom, e, e, edges)
    bb = binned_fourier_power(geom, b, b, edges)
    return np.log(np.concatenate([ee, bb], axis=-1))


@dataclass(frozen=True)
class Reference:
    """The band-power distribution of the calibration maps.

    Attributes
    ----------
    edges : ndarray, shape (nbin + 1,)
    mean, std : ndarray, shape (2 * nbin,)
        Of the log band powers (:func:`log_band_powers`) over the calibration maps.
    threshold : float
        The :data:`QUANTILE` quantile of the calibration maps' scores.
    """

    edges: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    threshold: float

    def score(self, geom: FlatSkyGeometry, q: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The score :math:`S` of each map ``(n,)``."""
        z = (log_band_powers(geom, q, u, self.edges) - self.mean) / self.std
        return np.mean(z**2, axis=-1)


def reference(geom: FlatSkyGeometry, q: np.ndarray, u: np.ndarray, n_bins: int) -> Reference:
    """The :class:`Reference` of calibration maps ``q, u`` (µK, ``(n, ny, nx)``, n >= 2)."""
    edges = ood_edges(geom, n_bins)
    p = log_band_powers(geom, q, u, edges)
    mean, std = p.mean(axis=0), p.std(axis=0, ddof=1)
    scores = np.mean(((p - mean) / std) ** 2, axis=-1)
    return Reference(edges=edges, mean=mean, std=std, threshold=float(np.quantile(scores, QUANTILE)))
