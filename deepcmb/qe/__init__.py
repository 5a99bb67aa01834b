"""Quadratic-estimator (QE) lensing reconstruction on the flat sky: the baseline of the network.

Public API
----------
reconstruct_qe
    One call: maps -> unbiased (or Wiener-filtered) kappa and phi maps, with the binned analytic N0.
QuadraticEstimator
    Set up once (filters, normalisation, N0 covariance, MV weights), then estimate many maps.
ESTIMATORS, COMBINATIONS
    The declared estimators (TT, TE, EE, EB, TB) and minimum-variance combinations (MV, MV_POL).
BAND
    The default multipole band of the filters and of the output.
cosine_window, default_taper, window_moment
    Apodisation of non-periodic patches (and its default width) and the moments correcting spectra
    for it.
iterative_noise
    Theory: lensing noise reached by an iterative (maximum-likelihood-like) polarization estimator.

Masked maps with a noise map: :mod:`deepcmb.qe.cinv` (the C^-1 filter) and :mod:`deepcmb.qe.masked` (the
estimator with a simulated mean field and a Monte Carlo response), used by the stage for such files.

Every estimator is declared once (:mod:`deepcmb.qe.estimators`); its map estimate, normalisation and
analytic N0 all follow from that declaration by FFT convolutions (:mod:`deepcmb.qe.engine`), and
:mod:`deepcmb.qe.direct` evaluates the same declaration without FFTs as a check.

Conventions: maps in µK, Fourier modes as in :mod:`deepcmb.geometry`, kappa = L^2 phi / 2 (flat
sky), spectra and N0 in sr (kappa dimensionless).
"""

from .apodization import cosine_window, default_taper, window_moment
from .estimators import COMBINATIONS, ESTIMATORS
from .iterative import iterative_noise
from .quadratic import BAND, QuadraticEstimator, reconstruct_qe

__all__ = [
    "reconstruct_qe", "QuadraticEstimator", "BAND", "ESTIMATORS", "COMBINATIONS", "cosine_window",
    "default_taper", "window_moment", "iterative_noise",
]
