"""Iterative maximum-a-posteriori (MAP) lensing reconstruction from polarization on the flat sky.

Public API
----------
reconstruct_map
    One call: Q, U maps -> MAP kappa and phi, the delensed E and B, and the convergence reached.
MapEstimator
    Set up once (operators, QE start, curvature), then :meth:`~MapEstimator.estimate` many maps.
PolarizationModel, Lensing
    The data model's operators (lensing by NUFFT and its adjoint, spin-2, beam, noise, prior).
wiener_filter_e, conjugate_gradient
    The Wiener filter of the unlensed E at fixed phi, and the solver behind it.
LensingPosterior
    The log-posterior of phi (E profiled out) and its exact gradient.

Modules: :mod:`~deepcmb.iterative.operators`, :mod:`~deepcmb.iterative.wiener`,
:mod:`~deepcmb.iterative.posterior`, :mod:`~deepcmb.iterative.estimator` and the stage
:mod:`~deepcmb.iterative.stage` (``deepcmb reconstruct --method map``). Conventions as in
:mod:`deepcmb.geometry`: maps in µK, phi in rad², kappa = -laplacian(phi) / 2, spectra in sr.
"""

from .estimator import MapEstimator, MapResult, reconstruct_map
from .operators import Lensing, PolarizationModel
from .posterior import LensingPosterior
from .wiener import conjugate_gradient, wiener_filter_e

__all__ = ["reconstruct_map", "MapEstimator", "MapResult", "PolarizationModel", "Lensing", "LensingPosterior",
           "wiener_filter_e", "conjugate_gradient"]
