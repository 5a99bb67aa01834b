"""How unlike the calibration maps an input is: a score from the input's own E and B band powers, against
the calibration maps of each of their noise levels.

For each input map the E and B modes of its observed Q, U (µK, flat-sky, periodic transform) are averaged
in ``n_bins`` logarithmic bins of :math:`\\ell` between twice the fundamental multipole and the Nyquist
multipole, giving the log band powers :math:`p_j` (``2 n_bins`` of them, :func:`log_band_powers`;
:math:`\\ln` of µK² sr). The calibration maps (the maps the uncertainty was calibrated on: for a network,
maps of its training distribution) are split by their noise level ``k`` (the levels of the calibration
simulation file, ``/meta/noise_index``). With the mean :math:`\\mu_{kj}` and standard deviation
:math:`s_{kj}` of :math:`p_j` over the calibration maps of level ``k``, the score of a map against that
level is

.. math:: S_k = \\frac{1}{2 n_{\\rm bins}} \\sum_j \\left(\\frac{p_j - \\mu_{kj}}{s_{kj}}\\right)^2 ,

about 1 for a map like them, and its threshold :math:`t_k` is the :data:`QUANTILE` quantile of
:math:`S_k` over those same maps (a fraction ``1 - q`` of them scores above it). The recorded score
(``ood_score``) is

.. math:: {\\rm ood\\_score} = \\min_k \\frac{S_k}{t_k} ,

flagged above :data:`THRESHOLD` = 1: a map is flagged when it is unlike the calibration maps of *every*
level. The calibration maps of each level score above 1 at a rate of at most ``1 - q``, and fresh maps of
their distribution at about that rate (a few per cent with only about 100 calibration maps per level,
whose 0.99 quantile is a noisy estimate). Typical maps of a calibrated level score well below 1 (about
the median of :math:`S_k` over :math:`t_k`: 0.34 and 0.46 for the shipped bench network's calibration
maps at 1 and 5 µK-arcmin). One reference pooled over several levels (the calibration files of format
version 1, read as one level) spans the gap between them: maps at an intermediate noise level, on which
the per-level posteriors do not hold, would lie inside its spread; the per-level reference flags them.

The score reacts to what changes the observed spectra: another noise level or beam, foregrounds, a mask
or the edges of a non-periodic patch, a strongly different cosmology. It is a function of the input maps
alone (not of the noise level a file states for them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..binning import binned_fourier_power
from ..geometry import FlatSkyGeometry

QUANTILE = 0.99
"""Quantile :math:`q` of each level's calibration maps' scores :math:`S_k` that sets its threshold
:math:`t_k` (:attr:`Reference.thresholds`)."""

THRESHOLD = 1.0
"""The ``ood_score`` above which a map is flagged (the root attribute ``ood_threshold``): :math:`S_k > t_k`
for every level."""


def ood_edges(geom: FlatSkyGeometry, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` logarithmic bin edges from ``2 ell_fundamental`` to ``ell_nyquist``."""
    return np.geomspace(2.0 * geom.ell_fundamental, geom.ell_nyquist, n_bins + 1)


def log_band_powers(geom: FlatSkyGeometry, q: np.ndarray, u: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """:math:`\\ln C^{EE}_b, \\ln C^{BB}_b` of maps ``q, u`` (µK, ``(n, ny, nx)``): ``(n, 2 * nbin)``."""
    e, b = geom.qu2eb(q, u)
    ee = binned_fourier_power(geom, e, e, edges)
    bb = binned_fourier_power(geom, b, b, edges)
    return np.log(np.concatenate([ee, bb], axis=-1))


def _scores(p: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """:math:`S_k` of log band powers ``p`` ``(n, 2 nbin)`` against ``mean``, ``std`` ``(n_levels, 2 nbin)``:
    ``(n, n_levels)``."""
    z = (p[:, None, :] - mean[None]) / std[None]
    return np.mean(z**2, axis=-1)


@dataclass(frozen=True)
class Reference:
    """The band-power distribution of the calibration maps, per noise level.

    Attributes
    ----------
    edges : ndarray, shape (nbin + 1,)
        Multipole bin edges (:func:`ood_edges`).
    mean, std : ndarray, shape (n_levels, 2 * nbin)
        Of the log band powers (:func:`log_band_powers`) over the calibration maps of each level.
    thresholds : ndarray, shape (n_levels,)
        :math:`t_k`: the :data:`QUANTILE` quantile of the scores :math:`S_k` of the calibration maps of
        level ``k``.
    noise_p : ndarray, shape (n_levels,)
        Polarization noise of each level, µK-arcmin; NaN for a reference pooled over several levels
        (calibration files of format version 1).
    n_maps : ndarray of int, shape (n_levels,)
        Calibration maps per level.
    """

    edges: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    thresholds: np.ndarray
    noise_p: np.ndarray
    n_maps: np.ndarray

    def level_scores(self, geom: FlatSkyGeometry, q: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The score :math:`S_k` of each map ``q, u`` (µK, ``(n, ny, nx)``) against each level: ``(n, n_levels)``."""
        return _scores(log_band_powers(geom, q, u, self.edges), self.mean, self.std)

    def score(self, geom: FlatSkyGeometry, q: np.ndarray, u: np.ndarray) -> np.ndarray:
        """The score :math:`\\min_k S_k / t_k` of each map ``q, u`` (µK, ``(n, ny, nx)``): ``(n,)``; a map
        scoring above :data:`THRESHOLD` is unlike the calibration maps of every level."""
        return np.min(self.level_scores(geom, q, u) / self.thresholds, axis=-1)


def reference(geom: FlatSkyGeometry, q: np.ndarray, u: np.ndarray, n_bins: int, levels: np.ndarray | None = None,
              noise_p: np.ndarray | None = None) -> Reference:
    """The :class:`Reference` of calibration maps ``q, u``.

    Parameters
    ----------
    geom : FlatSkyGeometry
    q, u : ndarray, shape (n, ny, nx)
        The calibration maps' observed Stokes maps, µK.
    n_bins : int
        Logarithmic multipole bins (:func:`ood_edges`).
    levels : ndarray of int, shape (n,), optional
        Noise level of each map (index into ``noise_p``); levels without maps are dropped. Without it the
        maps make one level (a pooled reference).
    noise_p : ndarray, shape (n_levels,), optional
        Polarization noise of each level, µK-arcmin (NaN without it).

    Returns
    -------
    Reference

    Raises
    ------
    ValueError
        For a level with fewer than 2 maps.
    """
    edges = ood_edges(geom, n_bins)
    p = log_band_powers(geom, q, u, edges)
    levels = np.zeros(len(p), int) if levels is None else np.asarray(levels)
    n_levels = int(levels.max()) + 1 if levels.size else 1
    noise_p = np.full(n_levels, np.nan) if noise_p is None else np.asarray(noise_p, float)
    present = [k for k in range(len(noise_p)) if np.any(levels == k)]
    counts = np.array([np.sum(levels == k) for k in present], np.int64)
    if counts.size == 0 or counts.min() < 2:
        raise ValueError(f"the input score needs at least 2 calibration maps per noise level ({counts.tolist()})")
    mean = np.array([p[levels == k].mean(axis=0) for k in present])
    std = np.array([p[levels == k].std(axis=0, ddof=1) for k in present])
    own = _scores(p, mean, std)
    thresholds = np.array([np.quantile(own[levels == k, i], QUANTILE) for i, k in enumerate(present)])
    return Reference(edges=edges, mean=mean, std=std, thresholds=thresholds, noise_p=noise_p[present], n_maps=counts)
