"""The mean field of the MAP gradient on masked maps or maps with a noise map, from simulations of the data model.

The marginal log-posterior of :math:`\\phi` has the gradient of :mod:`deepcmb.iterative.posterior` minus
the mean field

.. math:: g^{\\rm MF}(\\phi) = \\big\\langle g_d(\\phi) \\big\\rangle_{d \\,|\\, \\phi}, \\qquad
          g_d = -\\nabla\\cdot\\mathbf{V} / \\Delta^2,

the average of the data part of the gradient over data drawn from the model at :math:`\\phi`. On a
periodic patch with white noise it vanishes (statistical isotropy); a mask, the border of a non-periodic
patch or a noise map make it large at low :math:`L`, where the anisotropic weights look like lensing
(Hanson et al. 2011 for the quadratic estimator, of which :math:`g_d(0)` is the unnormalised form).
:func:`gradient_mean_field` estimates it at :math:`\\phi = 0` as the mean of :math:`g_d(0)` over
:math:`N_{\\rm MF}` simulations :math:`d_s = A_0 E_s + n_s` of the model
(:meth:`~deepcmb.iterative.operators.PolarizationModel.simulate`: unlensed E from its prior, the noise
of the data's inverse-variance map ``ivar_p``, weighted as the model weights the data, by the mask times
``ivar_p``); the estimator then holds it fixed. Unlensed skies without B modes are what the data look
like to the model near the MAP potential, where the lensing is accounted for. Its Monte Carlo error adds
:math:`1/N_{\\rm MF}` of the gradient's own scatter.

References
----------
Hanson, Challinor, Efstathiou & Bielewicz (2011), PRD 83, 043005; Carron & Lewis (2017), PRD 96, 063510.
"""

from __future__ import annotations

import numpy as np

from ..sample import sample_rng
from .operators import PolarizationModel
from .posterior import LensingPosterior


def gradient_mean_field(model: PolarizationModel, clpp_grid: np.ndarray, n_sims: int, seed: int,
                        first_index: int = 0, cg_tol: float = 1e-5, cg_max_iterations: int = 1000,
                        noise_ivar: np.ndarray | None = None) -> np.ndarray:
    """Mean field of the gradient at :math:`\\phi = 0` for the model's noise (module docstring).

    Parameters
    ----------
    model : PolarizationModel
        Data model with its noise set (:meth:`~PolarizationModel.set_noise`); its potential is reset to 0.
    clpp_grid : ndarray, shape ``geom.fourier_shape()``
        :math:`C^{\\phi\\phi}` on the rfft grid (sr): the modes estimated (where it is positive).
    n_sims : int
        Simulations averaged, >= 1.
    seed, first_index : int
        Simulation ``s`` draws from :func:`deepcmb.sample.sample_rng` ``(seed, first_index + s,
        'map_mean_field')``.
    cg_tol, cg_max_iterations
        Wiener filter of each simulation (:class:`~deepcmb.iterative.posterior.LensingPosterior`).
    noise_ivar : ndarray, shape ``geom.shape``, optional
        Inverse variance of the data's noise where it differs from the model's weights
        (:meth:`~deepcmb.iterative.operators.PolarizationModel.simulate`).

    Returns
    -------
    ndarray, complex, shape ``geom.fourier_shape()``
        :math:`g^{\\rm MF}(0)`, rfft modes of :math:`\\delta\\mathcal{J}/\\delta\\phi` (sr⁻¹ rad⁻²), zero
        where ``clpp_grid`` is.
    """
    if n_sims < 1:
        raise ValueError(f"gradient_mean_field: n_sims must be >= 1, got {n_sims}")
    zero = np.zeros(model.geom.fourier_shape(), dtype=complex)
    total = zero.copy()
    for s in range(n_sims):
        model.set_phi(zero)
        pol = model.simulate(sample_rng(seed, first_index + s, "map_mean_field"), noise_ivar)
        total += LensingPosterior(model, pol, clpp_grid, cg_tol, cg_max_iterations).evaluate(zero).gradient
    return total / n_sims
